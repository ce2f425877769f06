"""A living index: embedding segments appended beside the base matrix, and removed blocks (tombstones).

# N blocks, D dim, K hits, R removed blocks

`realm index add` never rewrites `embeddings.npy`: the new blocks' rows go to a new segment directory
`segments/<first block id, 12 digits>/embeddings.npy` (built there by the resumable builder), and the
index manifest lists every segment under "segments" ([{"dir", "first", "count", "sha256"}], the base
matrix implied first). `realm index remove` writes the removed block ids to a new file
`removed-<count>.npy` (sorted int64) and names it in the manifest under "removed". In both cases the data
files are complete on disk before the manifest (renamed atomically) names them: the manifest is the one
commit point, so a reader opening the directory at any moment sees the old state or the new one, never
a half. Files the manifest no longer names are swept by `realm index compact`.

Block ids never change here: a removed block keeps its id and its row (its row is simply never returned);
`compact_index` merges the segments into one matrix and keeps every row. Reclaiming the removed blocks'
space renumbers the kept ones, with an explicit id map: `realm.index.reclaim`.

`FilteredIndex(index, removed)` applies the tombstones to any index: it asks the inner index for
k + R hits (R = removed blocks, at most N), drops the removed ones and keeps the best k, so an exact
inner index still returns the exact top-k of the remaining blocks. `open_index` wraps every index whose
manifest has removed blocks; the BM25 index applies the store's own removed set (`realm.index.sparse`);
`realm.qa.search_blocks` re-checks whatever index it is given that carries `removed_ids`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from realm.atomic import atomic_save_npy
from realm.index.base import (
    MISSING_ID,
    Index,
    SearchResult,
    check_ids,
    check_k,
    check_queries,
    empty_result,
    order_hits,
    pad_hits,
    select_topk,
)
from realm.index.embeddings import EMBEDDINGS_NAME, IndexManifest, base_file, read_manifest

SEGMENTS_DIR = "segments"


def segment_dir_name(first: int) -> str:
    return f"{first:012d}"


# ---------------------------------------------------------------------------------------------------------
# Reading the segments and the tombstones named by a manifest.


def segment_entries(manifest: IndexManifest) -> list[dict[str, Any]]:
    """The appended segments ([{"dir", "first", "count", "sha256"}], in id order); [] for a plain index."""
    return list(manifest.extra.get("segments", []))


def base_count(manifest: IndexManifest) -> int:
    """Rows of `embeddings.npy` (the manifest's count minus the appended segments' rows)."""
    return manifest.count - sum(int(s["count"]) for s in segment_entries(manifest))


def open_segments(directory: str | os.PathLike[str], mmap: bool = True) -> tuple[list[tuple[int, np.ndarray]], IndexManifest]:
    """Every matrix of an index directory with the id of its first row: [(0, base), (first, segment), ...].

    Each one is memory-mapped (O(1)) and checked against the manifest's row count and dtype.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    parts = []
    expected = [(0, directory / base_file(manifest), base_count(manifest))]
    expected += [
        (int(s["first"]), directory / SEGMENTS_DIR / s["dir"] / EMBEDDINGS_NAME, int(s["count"]))
        for s in segment_entries(manifest)
    ]
    for first, path, count in expected:
        if not path.is_file():
            raise FileNotFoundError(f"{path}, listed in {directory}/manifest.json, is missing: the index is damaged; rebuild it")
        matrix = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if matrix.ndim != 2 or matrix.shape != (count, manifest.dim) or matrix.dtype.name != manifest.dtype:
            raise ValueError(
                f"{path} is {matrix.dtype.name} {list(matrix.shape)} but {directory}/manifest.json says "
                f"{manifest.dtype} [{count}, {manifest.dim}]; rebuild the index"
            )
        parts.append((first, matrix))
    return parts, manifest


def removed_ids(directory: str | os.PathLike[str], manifest: IndexManifest | None = None) -> np.ndarray:
    """The sorted int64 ids of the removed blocks named by the manifest (empty if none)."""
    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    entry = manifest.extra.get("removed")
    if not entry:
        return np.zeros(0, dtype=np.int64)
    ids = np.load(directory / entry["file"], allow_pickle=False)
    if ids.dtype != np.int64 or ids.ndim != 1 or len(ids) != int(entry["count"]):
        raise ValueError(f"{directory / entry['file']} does not hold the {entry['count']} removed ids the manifest says")
    return ids


def write_removed(directory: Path, ids: np.ndarray) -> dict[str, Any]:
    """Write the removed ids to a new file (never over one a reader may have open); the manifest entry."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    name = f"removed-{len(ids):012d}-{hashlib.sha256(ids.tobytes()).hexdigest()[:12]}.npy"
    atomic_save_npy(directory / name, ids)
    return {"file": name, "count": int(len(ids))}


class SegmentRows:
    """Rows of several matrices laid end to end, read like one [N, D] matrix (slices and id lists)."""

    def __init__(self, parts: Sequence[tuple[int, np.ndarray]]) -> None:
        self.parts = list(parts)
        self.starts = np.asarray([first for first, _ in self.parts], dtype=np.int64)
        self.shape = (int(sum(len(m) for _, m in self.parts)), int(self.parts[0][1].shape[1]))
        self.ndim = 2
        self.dtype = self.parts[0][1].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` (any shape of int) as float32 [..., D]."""
        flat = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.empty((len(flat), self.shape[1]), dtype=np.float32)
        which = np.searchsorted(self.starts, flat, side="right") - 1
        for p in np.unique(which):
            sel = which == p
            first, matrix = self.parts[p]
            out[sel] = matrix[flat[sel] - first]
        return out.reshape(*np.shape(ids), self.shape[1])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            return self.take(np.arange(*key.indices(self.shape[0])))
        return self.take(np.asarray(key))


# ---------------------------------------------------------------------------------------------------------
# Searching segments, and dropping removed blocks.


class SegmentedIndex(Index):
    """Exact search over the base matrix and its appended segments: each part searched, hits merged."""

    def __init__(self, parts: Sequence[Index]) -> None:
        if not parts:
            raise ValueError("a segmented index needs at least one part")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    @property
    def dim(self) -> int:
        return self.parts[0].dim

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __repr__(self) -> str:
        return f"SegmentedIndex({len(self):,} x {self.dim}, {len(self.parts)} segments)"

    def search(self, queries: Tensor, k: int, texts: Sequence[str] | None = None) -> SearchResult:
        queries = check_queries(queries, self.dim)
        k = check_k(k, len(self))
        if queries.shape[0] == 0:
            return empty_result(0, k, queries.device)
        # each part's ids are global already (id_offset)
        return select_topk([p.search(queries, min(k, len(p))) for p in self.parts if len(p)], k)

    def reconstruct(self, ids: Tensor) -> Tensor:
        ids = check_ids(torch.as_tensor(ids), len(self))
        flat = ids.reshape(-1).cpu()
        out = torch.empty(len(flat), self.dim)
        which = torch.as_tensor(np.searchsorted(self.offsets, flat.numpy(), side="right") - 1)
        for p in which.unique().tolist():
            sel = which == p
            out[sel] = self.parts[p].reconstruct(flat[sel]).cpu()
        return out.reshape(*ids.shape, self.dim).to(ids.device)

    def save(self, directory: str | os.PathLike[str]) -> None:
        raise NotImplementedError("a segmented index lives in its directory; `realm index compact` merges it")


def drop_removed(result: SearchResult, removed: Tensor, k: int) -> SearchResult:
    """Hits [B, F] without the removed ids (sorted int64 tensor), best k kept, padded with (-inf, -1)."""
    if removed.numel() == 0:
        return SearchResult(result.scores[:, :k], result.ids[:, :k])
    ids = result.ids
    hit = torch.isin(ids.cpu(), removed).to(ids.device)
    scores = result.scores.masked_fill(hit, float("-inf"))
    ids = ids.masked_fill(hit, MISSING_ID)
    scores, ids = order_hits(scores, ids)
    missing = ids == MISSING_ID  # -1 sorts before real ids among -inf scores: put every miss last
    order = torch.sort(missing.to(torch.int8), dim=1, stable=True).indices
    return pad_hits(SearchResult(scores.gather(1, order)[:, :k], ids.gather(1, order)[:, :k]), k)


class FilteredIndex(Index):
    """Any index minus removed blocks: over-fetches k + R and drops them (see the module doc).

    Args:
        index: the index over every row (removed ones included).
        removed: ids of removed blocks (any order).
    """

    def __init__(self, index: Index, removed: np.ndarray | Sequence[int]) -> None:
        self.index = index
        self.removed_ids = torch.as_tensor(np.unique(np.asarray(removed, dtype=np.int64)))
        self.wants_texts = index.wants_texts  # type: ignore[misc]

    @property
    def dim(self) -> int:
        return self.index.dim

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"FilteredIndex({self.index!r}, {len(self.removed_ids):,} removed)"

    def __getattr__(self, name: str) -> Any:  # nprobe, params, factory... of the inner index
        if name == "index":
            raise AttributeError(name)
        return getattr(self.index, name)

    def search(self, queries: Tensor, k: int, texts: Sequence[str] | None = None) -> SearchResult:
        k = check_k(k, len(self))
        fetch = min(len(self.index), k + len(self.removed_ids))
        kwargs = {"texts": texts} if self.index.wants_texts else {}
        return drop_removed(self.index.search(queries, fetch, **kwargs), self.removed_ids, k)

    def reconstruct(self, ids: Tensor) -> Tensor:
        return self.index.reconstruct(ids)

    def save(self, directory: str | os.PathLike[str]) -> None:
        raise NotImplementedError("save the inner index; removals live in the index directory's manifest")
