"""Exact maximum inner product search by chunked matrix products and a streaming top-k merge.

# B queries, b queries in one block, N stored vectors, C rows in one chunk, D dim, K = min(k, N)

For each block of at most `query_batch_size` queries and each chunk of at most `chunk_size` rows:
scores = queries @ chunk.T in float32 (float16/bfloat16 storage is converted chunk by chunk), the top-k
of the chunk, merged into the running top-k. Memory is O(query_batch_size x chunk_size), never O(N),
so a 13M x 128 float16 memmap (3.4 GB) is searched without being loaded: only the pages it reads are
brought in, by the OS page cache.

Kernels (measured with benchmarks/bench_index.py on a 2-core AMD EPYC, 1M x 128 float32, one query):
- CPU, up to EINSUM_MAX_QUERIES queries: `np.einsum("cd,bd->bc")` per chunk (numpy's own SIMD loops, no
  BLAS), chunks shared out dynamically among `num_threads` threads (einsum and torch's top-k release the
  GIL). One einsum thread computes ~18 GB/s, below the ~34 GB/s the memory
  delivers; two reach ~1.3x the bandwidth bound. `torch.mv`/`torch.mm` (MKL, on AMD) are 3x slower on
  this shape; numpy's OpenBLAS `np.dot` is fast in cache but its threads spin-wait against torch's
  OpenMP threads (10x slowdowns when mixed with torch ops), so it is not used.
- CPU with more queries (compute-bound), and any other device: `torch.mm` per chunk.
- float16/bfloat16 storage: converted to float32 (torch, 8192 rows at a time, in cache) then the same
  kernels: conversion costs more than the halved reads save (~1.7x the float32 time on CPU).
Ties: among equal scores the lower id comes first (see `realm.index.base`).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from realm.index.base import (
    Index,
    SearchResult,
    check_ids,
    check_k,
    check_queries,
    chunk_topk,
    empty_result,
    select_topk,
)
from realm.index.embeddings import open_embeddings, write_embeddings

DEFAULT_CHUNK_SIZE = 65536
DEFAULT_QUERY_BATCH_SIZE = 256
# Query blocks up to this size use the numpy einsum kernel on CPU; larger ones torch.mm (see module doc).
EINSUM_MAX_QUERIES = 4
# Rows converted from float16/bfloat16 at a time by the einsum kernel (4 MB of float32: stays in cache).
CONVERT_ROWS = 8192
# Chunk top-k lists are merged in groups (one sort per group instead of one per chunk).
MERGE_EVERY = 16
STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

Matrix = np.ndarray | Tensor


def as_tensor_view(matrix: Matrix) -> Tensor:
    """A torch view of a [N, D] array or memmap without copying (and without reading its pages)."""
    if isinstance(matrix, Tensor):
        return matrix.detach()
    with warnings.catch_warnings():  # a read-only memmap: torch warns that writes would be undefined
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(matrix)


def read_rows(matrix: Matrix, ids: Tensor) -> Tensor:
    """Rows `ids` [...] of a [N, D] array, memmap or tensor as float32 [..., D] (on the matrix's device for
    a tensor, else CPU). A memmap reads only the pages of those rows. ids must be valid."""
    flat = ids.reshape(-1)
    if isinstance(matrix, np.ndarray):
        rows = torch.from_numpy(np.asarray(matrix[flat.cpu().numpy()], dtype=np.float32))
    elif not isinstance(matrix, Tensor):  # realm.index.live.SegmentRows: rows across appended segments
        rows = torch.from_numpy(matrix.take(flat.cpu().numpy()))
    else:
        rows = matrix.detach().index_select(0, flat.to(matrix.device)).float()
    return rows.reshape(*ids.shape, matrix.shape[1])


class ExactIndex(Index):
    """Exact (brute-force) MIPS over a [N, D] matrix held in memory, on a device, or memory-mapped.

    Args:
        matrix: [N, D] float32/float16 numpy array or memmap, or a float32/float16/bfloat16 tensor on any
            device (e.g. the port's `block_emb` buffer). Not copied.
        chunk_size: C, rows scored at a time.
        query_batch_size: queries scored at a time (larger batches are split).
        device: where scores are computed; default the matrix's device (CPU for numpy). Chunks of a CPU
            matrix are copied there one at a time.
        id_offset: the id of row 0 (used by `ShardedIndex` for a shard of a larger matrix).
        num_threads: threads that score chunks in parallel with the CPU einsum kernel (the calling thread
            and num_threads - 1 pool threads); default `torch.get_num_threads()` at search time.
            (`torch.mm` uses torch's own threads.)
    """

    def __init__(
        self,
        matrix: Matrix,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        query_batch_size: int = DEFAULT_QUERY_BATCH_SIZE,
        device: str | torch.device | None = None,
        id_offset: int = 0,
        num_threads: int | None = None,
    ) -> None:
        if matrix.ndim != 2 or matrix.shape[1] < 1:
            raise ValueError(f"the matrix must be [N, D] with D >= 1, got shape {list(matrix.shape)}")
        if chunk_size < 1 or query_batch_size < 1:
            raise ValueError(
                f"chunk_size and query_batch_size must be >= 1, got {chunk_size}, {query_batch_size}"
            )
        self.matrix = matrix
        self.rows = as_tensor_view(matrix)  # [N, D] torch view, same memory
        if self.rows.dtype not in STORAGE_DTYPES:
            raise TypeError(f"embeddings must be float32, float16 or bfloat16, got {self.rows.dtype}")
        self.device = torch.device(device) if device is not None else self.rows.device
        self.chunk_size = int(chunk_size)
        self.query_batch_size = int(query_batch_size)
        self.id_offset = int(id_offset)
        self.num_threads = num_threads
        self._local = threading.local()  # per-thread float32 conversion buffer [C, D]
        self._executor: ThreadPoolExecutor | None = None
        self._executor_key: tuple[int, int] | None = None

    @property
    def dim(self) -> int:
        return int(self.rows.shape[1])

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def __repr__(self) -> str:
        kind = "memmap" if isinstance(self.matrix, np.memmap) else type(self.matrix).__name__
        return (
            f"ExactIndex({len(self):,} x {self.dim} {str(self.rows.dtype).removeprefix('torch.')} {kind}, "
            f"device={self.device}, chunk_size={self.chunk_size})"
        )

    # -----------------------------------------------------------------------------------------------------
    # Search.

    def search(self, queries: Tensor, k: int, texts: Sequence[str] | None = None) -> SearchResult:
        """Exact top-k by inner product; see `Index.search`. Ties: lower id first."""
        queries = check_queries(queries, self.dim)
        k = check_k(k, len(self))
        if queries.shape[0] == 0:
            return empty_result(0, k, queries.device)
        parts = [
            self._search_block(block.to(self.device), k)
            for block in queries.split(self.query_batch_size)  # [b, D] each
        ]
        scores = torch.cat([p.scores for p in parts]).to(queries.device)
        ids = torch.cat([p.ids for p in parts]).to(queries.device)
        return SearchResult(scores, ids)

    def _search_block(self, queries: Tensor, k: int) -> SearchResult:
        """One block of queries [b, D] on self.device -> [b, K].

        With the CPU einsum kernel, the calling thread and `num_threads - 1` pool threads take chunks
        from a shared counter until none is left (a thread slowed down, e.g. by torch's OpenMP threads
        still spin-waiting after a model forward, simply takes fewer chunks); their hits are merged."""
        starts = range(0, len(self), self.chunk_size)
        threads = min(self._threads(), len(starts))
        if not self._use_einsum(queries) or threads <= 1:
            return self._scan(queries, k, iter(starts))
        shared = iter(starts)  # next() on a range iterator is atomic under the GIL
        pool = self._pool(threads - 1)
        helpers = [pool.submit(self._scan, queries, k, shared) for _ in range(threads - 1)]
        parts = [self._scan(queries, k, shared)] + [h.result() for h in helpers]
        return select_topk(parts, k)

    def _scan(self, queries: Tensor, k: int, starts: Iterator[int]) -> SearchResult:
        """Score the chunks starting at `starts` for queries [b, D]: their best [b, <= k]."""
        hits: list[SearchResult] = [empty_result(queries.shape[0], 0, self.device)]
        for start in starts:
            stop = min(start + self.chunk_size, len(self))
            scores = self._score(queries, start, stop)  # [b, C]
            hits.append(chunk_topk(scores, k, offset=self.id_offset + start))  # [b, min(k, C)]
            if len(hits) == MERGE_EVERY:  # one sort per MERGE_EVERY chunks, not one per chunk
                hits = [select_topk(hits, k)]
        return select_topk(hits, k)

    def _use_einsum(self, queries: Tensor) -> bool:
        return self.device.type == "cpu" and queries.shape[0] <= EINSUM_MAX_QUERIES

    def _score(self, queries: Tensor, start: int, stop: int) -> Tensor:
        """Scores of queries [b, D] against rows start..stop: [b, C] float32 on self.device."""
        if not self._use_einsum(queries):
            return torch.mm(queries, self._float_rows(start, stop).T)
        q = queries.numpy()
        if self.rows.dtype == torch.float32:
            return torch.from_numpy(np.einsum("cd,bd->bc", self._float_rows(start, stop).numpy(), q))
        scores = np.empty((queries.shape[0], stop - start), dtype=np.float32)  # [b, C]
        for lo in range(start, stop, CONVERT_ROWS):  # convert a cache-sized block, score it, next
            hi = min(lo + CONVERT_ROWS, stop)
            np.einsum(
                "cd,bd->bc", self._float_rows(lo, hi).numpy(), q, out=scores[:, lo - start : hi - start]
            )
        return torch.from_numpy(scores)

    def _float_rows(self, start: int, stop: int) -> Tensor:
        """Rows start..stop as float32 on self.device: a view if possible, else converted into a buffer
        (one per thread, reused across calls and searches)."""
        rows = self.rows[start:stop]  # [C, D], storage dtype and device
        if rows.device != self.device:
            rows = rows.to(self.device)
        if rows.dtype == torch.float32:
            return rows
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.device != self.device or buffer.shape[0] < rows.shape[0]:
            buffer = self._local.buffer = torch.empty(rows.shape[0], self.dim, device=self.device)
        return buffer[: rows.shape[0]].copy_(rows)

    def _threads(self) -> int:
        return max(1, self.num_threads if self.num_threads is not None else torch.get_num_threads())

    def _pool(self, threads: int) -> ThreadPoolExecutor:
        """A thread pool of this process (recreated after a fork, whose child has no threads)."""
        if self._executor is None or self._executor_key != (os.getpid(), threads):
            self._executor = ThreadPoolExecutor(threads, thread_name_prefix="realm-exact")
            self._executor_key = (os.getpid(), threads)
        return self._executor

    # -----------------------------------------------------------------------------------------------------
    # Stored vectors, save / load.

    def reconstruct(self, ids: Tensor) -> Tensor:
        """The stored vectors of `ids` [...] (global ids, id_offset included) as float32 [..., D] on the
        ids' device; a memmap reads only those rows."""
        ids = torch.as_tensor(ids)
        local = check_ids(ids, len(self) + self.id_offset) - self.id_offset
        if local.numel() and int(local.min()) < 0:
            raise IndexError(f"ids must be in [{self.id_offset}, {self.id_offset + len(self)})")
        return read_rows(self.matrix, local).to(ids.device)

    def save(self, directory: str | os.PathLike[str], extra: dict | None = None) -> None:
        """Write `embeddings.npy` (in the storage dtype; bfloat16 is stored as float32) + `manifest.json`.

        Args:
            directory: the index directory.
            extra: provenance fields for the manifest.
        """
        write_embeddings(directory, self.matrix, extra=extra, index={"type": "exact"})

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        mmap: bool = True,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> ExactIndex:
        """Open an index directory: `embeddings.npy` memory-mapped (O(1) time and memory) by default.

        Args:
            directory: written by `save` or `realm.index.embeddings.write_embeddings`.
            mmap: False reads the matrix into memory.
            device: where to compute; with a non-CPU device and `mmap=False` the matrix is moved there.
            kwargs: `chunk_size`, `query_batch_size`.
        """
        matrix, _ = open_embeddings(Path(directory), mmap=mmap)
        if not mmap and device is not None and torch.device(device).type != "cpu":
            return cls(torch.from_numpy(matrix).to(device), device=device, **kwargs)
        return cls(matrix, device=device, **kwargs)
