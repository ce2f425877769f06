"""The index interface and the top-k bookkeeping every index shares.

# B queries, N stored vectors, D dim, K hits per query (K = min(k, N))

Contract of `Index.search(queries [B, D], k, texts=None) -> SearchResult(scores [B, K], ids [B, K])`:

- scores are inner products in float32, best first; ids are int64 row numbers of the embeddings matrix;
- K = min(k, N): asking for more hits than there are vectors returns all of them (k must be >= 1);
- B = 0 gives empty [0, K] tensors;
- results are on the queries' device, whatever device the index computes on;
- exact indexes break ties deterministically: among equal scores the lower id comes first. Scores are
  computed in float32, so two mathematically equal products can still differ in the last bit when the
  kernel rounds them differently (e.g. a row in a vectorised block and a row in the tail); integer-valued
  embeddings, whose products are exact, tie exactly;
- approximate indexes (IVF with a small `nprobe`) may find fewer than K vectors for a query: the missing
  slots hold id -1 and score -inf, after every real hit;
- `texts` are the queries' strings (one per row). An index that also scores text (a sparse BM25 or a hybrid
  dense + sparse index) sets the class attribute `wants_texts = True`, reads them, and raises a ValueError
  naming the fix when it gets None (a caller without strings, e.g. `RealmForOpenQA` on token ids). Every
  caller searches through `realm.qa.search_blocks` (the one call site of `Index.search` in the package),
  which hands the questions' strings to an index that wants them whenever the caller has them (`Pipeline`,
  hence `realm ask`, `realm serve`, `realm evaluate`; fine-tuning's `OpenQAFinetuner`), so such an index
  plugs in with no other change (`realm.index.hybrid.with_sparse` builds one, checking the BM25 index's store).
  Dense indexes (`wants_texts = False`) are never passed `texts`.

The embeddings must be finite: NaN scores have no defined order.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor

MISSING_ID = -1
REBUILD_COMMAND = "realm index build --store <store> --embedder <embedder> --out <index>"


class SearchResult(NamedTuple):
    """Top-k hits of a batch of queries (a tuple: `scores, ids = index.search(q, k)` works)."""

    scores: Tensor  # [B, K] float32, best first
    ids: Tensor  # [B, K] int64


class Index(ABC):
    """Maximum inner product search over N stored D-dimensional vectors."""

    # True for an index that scores the queries' text too: `realm.qa.search_blocks` then passes `texts`.
    wants_texts: ClassVar[bool] = False

    @property
    @abstractmethod
    def dim(self) -> int:
        """D, the size of each vector."""

    @abstractmethod
    def __len__(self) -> int:
        """N, the number of stored vectors (ids are 0..N-1)."""

    @abstractmethod
    def search(self, queries: Tensor, k: int, texts: Sequence[str] | None = None) -> SearchResult:
        """The k best vectors of each query by inner product.

        Args:
            queries: [B, D] floating tensor on any device.
            k: hits wanted per query (>= 1); clamped to N.
            texts: the B queries' strings, passed only to an index with `wants_texts` (see the module doc).
        Returns:
            SearchResult(scores [B, min(k, N)] float32, ids [B, min(k, N)] int64) on the queries' device.
        """

    @abstractmethod
    def reconstruct(self, ids: Tensor) -> Tensor:
        """The stored vectors of `ids` [...] as float32 [..., D], on the ids' device."""

    @abstractmethod
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the index to `directory` (see `realm.index.embeddings` for the layout)."""


# ---------------------------------------------------------------------------------------------------------
# Argument checks shared by the implementations.


def check_index_size(index_count: int, store_count: int, *, name: str = "the index", rebuild: str = REBUILD_COMMAND) -> None:
    """The one size check of an index against the blocks it is searched for: one vector per block.

    Args:
        index_count: vectors in the index; store_count: blocks in the store (or retriever) it serves.
        name: how to call the index in the message (e.g. its directory).
        rebuild: the command that rebuilds it, with what is known of its arguments filled in.
    """
    if index_count != store_count:
        raise ValueError(
            f"{name} has {index_count:,} blocks but the store has {store_count:,}; rebuild it with: {rebuild} "
            "(an index built from another corpus does not fit)"
        )


def check_queries(queries: Tensor, dim: int) -> Tensor:
    """Validate a [B, D] query batch; return it as float32 (same device)."""
    if not isinstance(queries, Tensor):
        raise TypeError(f"queries must be a torch.Tensor [B, {dim}], got {type(queries).__name__}")
    if queries.dim() != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries must have shape [B, {dim}], got {list(queries.shape)}")
    if not queries.is_floating_point():
        raise TypeError(f"queries must be a floating tensor, got {queries.dtype}")
    return queries.detach().float()


def check_k(k: int, count: int) -> int:
    """The number of columns a search returns: min(k, N). k must be a positive int."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return min(int(k), count)


def check_ids(ids: Tensor, count: int) -> Tensor:
    """Validate ids for `reconstruct`: an integer tensor with values in [0, N)."""
    if not isinstance(ids, Tensor):
        ids = torch.as_tensor(ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"ids must be an integer tensor, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= count):
        raise IndexError(f"ids must be in [0, {count}); got {int(ids.min())}..{int(ids.max())}")
    return ids.long()


def empty_result(batch: int, k: int, device: torch.device) -> SearchResult:
    """Scores of -inf and ids of -1: the identity of `merge_topk`, and padding for missing hits."""
    return SearchResult(
        torch.full((batch, k), float("-inf"), dtype=torch.float32, device=device),
        torch.full((batch, k), MISSING_ID, dtype=torch.int64, device=device),
    )


# ---------------------------------------------------------------------------------------------------------
# Top-k with deterministic ties.


def order_hits(scores: Tensor, ids: Tensor) -> SearchResult:
    """Sort each row by score descending, then id ascending.

    Args:
        scores: [B, K] float32. ids: [B, K] int64 (any order).
    """
    ids, perm = ids.sort(dim=1)  # [B, K] ids ascending
    scores = scores.gather(1, perm)
    scores, perm = scores.sort(dim=1, descending=True, stable=True)  # equal scores keep ids ascending
    return SearchResult(scores, ids.gather(1, perm))


def chunk_topk(scores: Tensor, k: int, offset: int = 0) -> SearchResult:
    """The top-k of a score block, ties broken towards lower ids, in no particular order.

    `torch.topk` keeps an arbitrary subset of the values tied with the k-th one. Taking k + 1 values shows
    where that matters (the k-th and the (k+1)-th are equal); those rows are redone so that the lowest
    ids among the tied values are kept.

    Args:
        scores: [B, C] float32 scores of C consecutive rows, the first of which has id `offset`.
        k: hits to keep per query (clamped to C).
    Returns:
        SearchResult(scores [B, min(k, C)], ids [B, min(k, C)]), unordered: pass it to `select_topk`.
    """
    batch, count = scores.shape
    if k >= count:  # every row is a hit
        return SearchResult(
            scores, torch.arange(offset, offset + count, device=scores.device).expand(batch, count)
        )
    values, cols = scores.topk(k + 1, dim=1)  # [B, k + 1], best first
    crossed = values[:, k - 1] == values[:, k]  # [B] a tie straddles the cut
    values, cols = values[:, :k], cols[:, :k]
    if bool(crossed.any()):
        rows = scores[crossed]  # [b, C]
        kth = values[crossed][:, k - 1 :]  # [b, 1]
        above = rows > kth
        equal = rows == kth
        need = k - above.sum(1, keepdim=True)  # [b, 1] tied values to keep, lowest ids first
        take = above | (equal & (equal.cumsum(1) <= need))  # exactly k True per row
        fixed = take.nonzero()[:, 1].view(-1, k)  # [b, k] column numbers, ascending
        cols[crossed] = fixed
        values[crossed] = rows.gather(1, fixed)
    return SearchResult(values, cols + offset)


def select_topk(parts: list[SearchResult], k: int) -> SearchResult:
    """The best k of the union of hit lists of the same queries, sorted by (score desc, id asc).

    Exact as long as each part holds the top-k (with the same tie rule) of the rows it covers. Padding
    (-inf, -1) sorts last.

    Args:
        parts: SearchResult([B, K_i], [B, K_i]) each, in any order.
    Returns:
        SearchResult([B, min(k, sum K_i)], ...).
    """
    scores = torch.cat([p.scores for p in parts], dim=1) if len(parts) > 1 else parts[0].scores
    ids = torch.cat([p.ids for p in parts], dim=1) if len(parts) > 1 else parts[0].ids
    scores, ids = order_hits(scores, ids)
    return SearchResult(scores[:, :k], ids[:, :k])


def pad_hits(result: SearchResult, k: int) -> SearchResult:
    """Pad [B, K'] hits with (-inf, -1) columns to [B, k] (K' <= k)."""
    missing = k - result.scores.shape[1]
    if missing <= 0:
        return result
    pad = empty_result(result.scores.shape[0], missing, result.scores.device)
    return SearchResult(torch.cat([result.scores, pad.scores], 1), torch.cat([result.ids, pad.ids], 1))
