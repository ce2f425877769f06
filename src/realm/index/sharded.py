"""Exact search over an embeddings matrix split by rows across `torch.distributed` ranks.

# W ranks, B this rank's queries, G all ranks' queries (sum of B), N vectors, D dim, K = min(k, N)

Rank r of W searches rows [N r / W, N (r + 1) / W) (contiguous, sizes differ by at most one). The files
do not depend on W: the shard is a row range of the one `embeddings.npy`, which every rank memory-maps
(mapping costs nothing until rows are read, and each rank reads only its range) -- or an in-memory copy
of the range, on the rank's device, with `in_memory=True`.

`search` is collective (every rank of the group calls it, with its own queries; batch sizes and k may
differ per rank): the batch sizes are all-gathered, then the queries (padded to the largest batch); each
rank searches its shard for all G queries; the partial [G, K] hits are all-gathered and each rank merges
the W partials of its own queries. The result equals `ExactIndex` on the whole matrix, ties included
(lower id first), up to the last bit of float32 scores (see `realm.index.base`).

`reconstruct` reads the rows from the matrix on the calling rank (not collective) when every rank sees
the whole matrix (the default: the memmap). An index made with `from_shard` holds only its rows, so
there `reconstruct` is collective: the requested ids are all-gathered, each rank fills the rows it
owns, and an all-reduce assembles them.

Works with gloo (CPU tensors) and nccl (tensors on `torch.cuda.current_device()`): communication
happens on the backend's device; results are on the queries' device.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from realm.index.base import (
    Index,
    SearchResult,
    check_ids,
    check_k,
    check_queries,
    empty_result,
    pad_hits,
    select_topk,
)
from realm.index.embeddings import (
    IndexManifest,
    create_embeddings,
    finish_embeddings,
    open_embeddings,
)
from realm.index.exact import ExactIndex, Matrix, as_tensor_view, read_rows


def shard_bounds(count: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows [start, stop) of `rank`: contiguous ranges whose sizes differ by at most one."""
    return count * rank // world_size, count * (rank + 1) // world_size


def comm_device(group: Any = None) -> torch.device:
    """The device collectives of `group` use: the current CUDA device for nccl, else CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather(tensor: Tensor, group: Any = None) -> list[Tensor]:
    """All ranks' `tensor` (same shape on every rank), in rank order."""
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, tensor.contiguous(), group=group)
    return out


class ShardedIndex(Index):
    """Exact MIPS with the rows split across the ranks of a process group (see the module doc).

    Construction is collective (the ranks check that they hold the same N and D).

    Args:
        matrix: the whole [N, D] matrix, the same on every rank (typically the memmap of
            `embeddings.npy`); this rank searches only its row range.
        group: the process group (default: the world).
        device: where this rank computes scores (default: the shard's device).
        in_memory: copy this rank's rows into memory (on `device`) instead of reading the memmap.
        kwargs: `chunk_size`, `query_batch_size`, `num_threads` for the rank's `ExactIndex`.
    """

    def __init__(
        self,
        matrix: Matrix,
        group: Any = None,
        device: str | torch.device | None = None,
        in_memory: bool = False,
        **kwargs: Any,
    ) -> None:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        start, stop = shard_bounds(int(matrix.shape[0]), world, rank)
        shard = as_tensor_view(matrix)[start:stop]
        if in_memory:
            shard = shard.to(device if device is not None else "cpu", copy=True)
        self._setup(shard, start, int(matrix.shape[0]), group, device, kwargs)
        self.matrix: Matrix | None = matrix

    @classmethod
    def from_shard(
        cls,
        shard: Matrix,
        start: int,
        count: int,
        group: Any = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> ShardedIndex:
        """An index whose rank holds only rows [start, start + len(shard)) of N = `count` (collective).

        The shards must be this group's `shard_bounds(count, W, rank)`. `reconstruct` is then collective.
        """
        self = cls.__new__(cls)
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        error = None
        if (start, start + int(shard.shape[0])) != shard_bounds(count, world, rank):
            error = (
                f"rank {rank} of {world} must hold rows {shard_bounds(count, world, rank)} of {count}, "
                f"got [{start}, {start + int(shard.shape[0])})"
            )
        self._setup(shard, start, count, group, device, kwargs, error)
        self.matrix = None
        return self

    def _setup(
        self,
        shard: Matrix,
        start: int,
        count: int,
        group: Any,
        device: Any,
        kwargs: dict,
        error: str | None = None,
    ) -> None:
        """Common construction; checks with the other ranks (collectively, so that all raise together)
        that they hold the same N and D."""
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.comm_device = comm_device(group)
        self.start, self.stop, self.count = start, start + int(shard.shape[0]), count
        self.local = ExactIndex(shard, device=device, id_offset=start, **kwargs)
        mine = torch.tensor([count, self.local.dim, error is not None], device=self.comm_device)
        everyone = all_gather(mine, group)
        if error is not None:
            raise ValueError(error)
        if any(bool(other[2]) for other in everyone):
            raise RuntimeError("another rank failed to set up its ShardedIndex shard")
        if any(not torch.equal(other[:2], mine[:2]) for other in everyone):
            raise ValueError(
                "the ranks hold matrices of different shapes; every rank must open the same index"
            )

    @property
    def dim(self) -> int:
        return self.local.dim

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return (
            f"ShardedIndex(rank {self.rank}/{self.world_size}: rows [{self.start:,}, {self.stop:,}) of "
            f"{self.count:,} x {self.dim}, {self.comm_device})"
        )

    # -----------------------------------------------------------------------------------------------------
    # Search (collective).

    def search(self, queries: Tensor, k: int, texts: Sequence[str] | None = None) -> SearchResult:
        """Collective exact top-k; see the module doc and `Index.search`."""
        error: Exception | None = None
        try:
            queries = check_queries(queries, self.dim)
            k = check_k(k, self.count)
            header = torch.tensor([queries.shape[0], k], device=self.comm_device)
        except (TypeError, ValueError) as err:  # tell the other ranks instead of leaving them waiting
            error, header = err, torch.tensor([-1, -1], device=self.comm_device)
        headers = torch.stack(all_gather(header, self.group)).tolist()  # [W, 2]: batch size and k per rank
        if error is not None:
            raise error
        if min(b for b, _ in headers) < 0:
            raise RuntimeError("another rank passed invalid arguments to ShardedIndex.search")
        sizes = [b for b, _ in headers]
        k_max = max(kk for _, kk in headers)
        if max(sizes) == 0:
            return empty_result(0, k, queries.device)

        padded = torch.zeros(max(sizes), self.dim, device=self.comm_device)  # [max B, D]
        padded[: sizes[self.rank]] = queries.to(self.comm_device)
        everyone = torch.cat(
            [q[:b] for q, b in zip(all_gather(padded, self.group), sizes, strict=True)]
        )  # [G, D]
        partial = pad_hits(self.local.search(everyone, k_max), k_max)  # [G, k_max] this shard's best
        scores = all_gather(partial.scores.to(self.comm_device), self.group)  # W x [G, k_max]
        ids = all_gather(partial.ids.to(self.comm_device), self.group)
        first = sum(sizes[: self.rank])
        mine = slice(first, first + sizes[self.rank])
        best = select_topk(
            [SearchResult(s[mine], i[mine]) for s, i in zip(scores, ids, strict=True)], k
        )  # [B, K]
        return SearchResult(best.scores.to(queries.device), best.ids.to(queries.device))

    # -----------------------------------------------------------------------------------------------------
    # Stored vectors, save / load.

    def reconstruct(self, ids: Tensor) -> Tensor:
        """The stored vectors of `ids` [...] as float32 [..., D] on the ids' device. Local when the whole
        matrix is at hand; collective for an index made with `from_shard`."""
        ids = torch.as_tensor(ids)
        if self.matrix is not None:
            return read_rows(self.matrix, check_ids(ids, self.count)).to(ids.device)
        flat = ids.reshape(-1).to(self.comm_device, torch.int64)
        sizes = [
            int(n) for n in all_gather(torch.tensor([flat.numel()], device=self.comm_device), self.group)
        ]
        padded = torch.full((max(sizes),), -1, dtype=torch.int64, device=self.comm_device)
        padded[: flat.numel()] = flat
        everyone = torch.stack(all_gather(padded, self.group))  # [W, max n]
        valid = (
            torch.arange(max(sizes), device=self.comm_device)
            < torch.tensor(sizes, device=self.comm_device)[:, None]
        )
        check_ids(everyone[valid], self.count)  # every rank sees every id, so all raise together
        rows = torch.zeros(*everyone.shape, self.dim, device=self.comm_device)  # [W, max n, D]
        own = valid & (everyone >= self.start) & (everyone < self.stop)
        rows[own] = self.local.reconstruct(everyone[own]).to(self.comm_device)
        dist.all_reduce(rows, group=self.group)  # each row is filled by exactly one rank
        return rows[self.rank, : flat.numel()].reshape(*ids.shape, self.dim).to(ids.device)

    def save(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> None:
        """Collective: write the whole matrix as one world-size-independent `embeddings.npy` + manifest,
        each rank writing its own rows (the directory must be on a filesystem all ranks share).

        Args:
            directory: the index directory.
            extra: provenance fields for the manifest (rank 0's are used).
        """
        directory = Path(directory)
        dtype = "float16" if self.local.rows.dtype == torch.float16 else "float32"
        if self.rank == 0:
            create_embeddings(directory, self.count, self.dim, dtype)
        dist.barrier(group=self.group)
        out = create_embeddings(directory, self.count, self.dim, dtype, resume=True)
        rows = self.local.rows  # [stop - start, D]
        step = 1 << 18
        for begin in range(0, rows.shape[0], step):
            block = rows[begin : begin + step].detach().to("cpu", torch.float32).numpy()
            out[self.start + begin : self.start + begin + block.shape[0]] = block
        out.flush()
        del out
        dist.barrier(group=self.group)
        if self.rank == 0:
            finish_embeddings(
                directory, IndexManifest(self.count, self.dim, dtype, {"type": "exact"}, dict(extra or {}))
            )
        dist.barrier(group=self.group)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        group: Any = None,
        device: str | torch.device | None = None,
        in_memory: bool = False,
        **kwargs: Any,
    ) -> ShardedIndex:
        """Collective: every rank memory-maps `directory/embeddings.npy` and searches its row range.
        Blocks removed with `realm index remove` are filtered (a `FilteredIndex` around it, the same on
        every rank, so the collective calls stay matched).

        Args:
            directory: an index directory (any world size wrote it, or `ExactIndex.save`, or a builder).
            group, device, in_memory, kwargs: as for the constructor.
        """
        from realm.index.live import FilteredIndex, removed_ids

        matrix, manifest = open_embeddings(directory)  # appended segments: refused, with the compact command
        sharded = cls(matrix, group, device, in_memory, **kwargs)
        removed = removed_ids(directory, manifest)
        return FilteredIndex(sharded, removed) if len(removed) else sharded  # type: ignore[return-value]
