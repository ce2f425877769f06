"""Hybrid retrieval: the dense index and BM25 fused by reciprocal rank, scored by the dense model.

# B queries, D dim, N blocks, M candidates per list (depth), K = min(k, N)

    dense = open_index("index/")                           # ExactIndex / FaissIndex of the embedder
    sparse = SparseIndex.open("bm25/", store)              # realm index build-sparse
    hybrid = HybridIndex(dense, sparse, depth=100, k0=60)
    scores, ids = hybrid.search(query_emb, k=5, texts=questions)

Fusion (Cormack, Clarke & Buettcher 2009, "Reciprocal rank fusion outperforms Condorcet and individual
rank learning methods"): each list contributes 1 / (k0 + rank) for every block it ranks (rank 1 = best),
a block's fused score is the sum of its contributions, and the fused ranking sorts by it (ties: lower
block id first). DPR (Karpukhin et al. 2020, section 5.1) shows a dense + BM25 hybrid beating both.

The hybrid chooses which blocks are read; how they are weighed stays the model's: the scores it returns
are the dense inner products of the fused blocks (recomputed from `dense.reconstruct`), so retrieval
probabilities and the reader's marginal over blocks are softmaxes of the embedder's own logits, as for a
dense index. Those scores follow the fused order, so unlike a dense index's they need not decrease.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from realm.index.base import MISSING_ID, Index, SearchResult, check_ids, check_k, check_queries, empty_result
from realm.index.sparse import SparseIndex

DEFAULT_K0 = 60.0
DEFAULT_DEPTH = 100


def reciprocal_rank_fusion(rankings: Sequence[Tensor], k: int, k0: float = DEFAULT_K0) -> SearchResult:
    """Fuse ranked id lists by reciprocal rank: score(d) = sum over lists ranking d of 1 / (k0 + rank).

    Ranks are 1-based positions in each list (a list's first id has rank 1); ids of -1 (missing hits,
    which come after every real hit) are skipped. Each block's contributions are
    summed in float64 in increasing rank order, so blocks whose rank multisets are equal tie exactly; ties
    go to the lower block id.

    Args:
        rankings: L tensors [B, M_l] of int64 block ids, best first (e.g. `Index.search(...).ids`).
        k: fused hits to keep per query (>= 1).
        k0: the constant of Cormack et al. (60): larger k0 flattens the weight of the first ranks.
    Returns:
        SearchResult(scores [B, k] float64 fused scores, ids [B, k] int64) on the CPU, best first; rows with
        fewer than k distinct ids are padded with (-inf, -1).
    """
    if not rankings:
        raise ValueError("reciprocal_rank_fusion needs at least one ranking")
    check_k(k, k)
    if k0 < 0:
        raise ValueError(f"k0 must be >= 0, got {k0}")
    lists = [torch.as_tensor(r).cpu().long() for r in rankings]
    batch = lists[0].shape[0]
    if any(r.dim() != 2 or r.shape[0] != batch for r in lists):
        raise ValueError(f"rankings must all be [B, M_l] with the same B, got {[list(r.shape) for r in lists]}")
    scores = torch.full((batch, k), float("-inf"), dtype=torch.float64)
    ids = torch.full((batch, k), MISSING_ID, dtype=torch.int64)
    for b in range(batch):
        ranks: dict[int, list[int]] = {}
        for ranking in lists:
            for position, block in enumerate(ranking[b].tolist(), start=1):
                if block != MISSING_ID:
                    ranks.setdefault(block, []).append(position)
        fused = sorted(
            ((sum(1.0 / (k0 + r) for r in sorted(rs)), block) for block, rs in ranks.items()),
            key=lambda item: (-item[0], item[1]),
        )[:k]
        for column, (score, block) in enumerate(fused):
            scores[b, column], ids[b, column] = score, block
    return SearchResult(scores, ids)


class HybridIndex(Index):
    """A dense `Index` and a `SparseIndex` of the same blocks, fused by reciprocal rank.

    Args:
        dense: the embedder's index (its vectors give the returned scores).
        sparse: BM25 over the same block store (same N, same order).
        depth: M, hits taken from each index before fusing (raised to k when k is larger).
        k0: the reciprocal-rank constant.
    """

    def __init__(
        self, dense: Index, sparse: SparseIndex, depth: int = DEFAULT_DEPTH, k0: float = DEFAULT_K0
    ) -> None:
        if len(dense) != len(sparse):
            raise ValueError(
                f"the dense index has {len(dense):,} blocks but the sparse index {len(sparse):,}; build both "
                "from the same block store (realm index build / realm index build-sparse)"
            )
        check_k(depth, depth)
        if k0 < 0:
            raise ValueError(f"k0 must be >= 0, got {k0}")
        self.dense = dense
        self.sparse = sparse
        self.depth = int(depth)
        self.k0 = float(k0)

    @property
    def dim(self) -> int:
        return self.dense.dim

    def __len__(self) -> int:
        return len(self.dense)

    def __repr__(self) -> str:
        return f"HybridIndex({self.dense!r}, {self.sparse!r}, depth={self.depth}, k0={self.k0})"

    def search(self, queries: Tensor, k: int, texts: Sequence[str] | None = None) -> SearchResult:
        """The fused top-k blocks of each query, scored by the dense inner product.

        Args:
            queries: [B, D] question embeddings.
            k: hits wanted per query (>= 1); clamped to N.
            texts: the B question texts, for BM25 (required).
        Returns:
            SearchResult(scores [B, K] float32 dense inner products in fused order, ids [B, K] int64) on the
            queries' device.
        """
        queries = check_queries(queries, self.dim)
        k = check_k(k, len(self))
        if texts is None:
            raise ValueError(
                "HybridIndex.search needs the question texts for its BM25 half: search(queries, k, texts=questions)"
            )
        if isinstance(texts, str) or len(texts) != queries.shape[0]:
            raise ValueError(f"texts must be a list of {queries.shape[0]} question strings, one per query")
        if queries.shape[0] == 0:
            return empty_result(0, k, queries.device)
        depth = max(self.depth, k)
        dense_ids = self.dense.search(queries, depth).ids.cpu()  # [B, M]
        sparse_ids = self.sparse.search_text(list(texts), depth).ids  # [B, M]
        ids = reciprocal_rank_fusion([dense_ids, sparse_ids], k, self.k0).ids  # [B, K]
        missing = ids == MISSING_ID  # only when fewer than K blocks were found at all
        vectors = self.dense.reconstruct(ids.clamp(min=0))  # [B, K, D]
        scores = torch.einsum("bkd,bd->bk", vectors, queries.cpu()).masked_fill(missing, float("-inf"))
        return SearchResult(scores.to(queries.device), ids.to(queries.device))

    def reconstruct(self, ids: Tensor) -> Tensor:
        """The dense vectors of `ids` [...] as float32 [..., D]."""
        return self.dense.reconstruct(check_ids(ids, len(self)))

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Refused: a hybrid index is its two parts, each saved and opened on its own."""
        raise NotImplementedError(
            "a HybridIndex is not saved as one directory: save its parts (dense.save(dir), sparse.save(dir2)) "
            "and open them with open_index(dir) and SparseIndex.open(dir2, store)"
        )
