"""Hybrid retrieval: the dense index and BM25 fused by reciprocal rank, scored by the dense model.

# B queries, D dim, N blocks, M candidates per list (depth), K = min(k, N)

    dense = open_index("index/")                           # ExactIndex / FaissIndex of the embedder
    sparse = SparseIndex.open("bm25/", store)              # realm index build-sparse
    hybrid = HybridIndex(dense, sparse)        # depth 100, fusion="weighted", weight 0.5; or fusion="rrf", k0=60
    scores, ids = hybrid.search(query_emb, k=5, texts=questions)

Fusion (Cormack, Clarke & Buettcher 2009, "Reciprocal rank fusion outperforms Condorcet and individual
rank learning methods"): each list contributes 1 / (k0 + rank) for every block it ranks (rank 1 = best),
a block's fused score is the sum of its contributions, and the fused ranking sorts by it (ties: lower
block id first).

Or, `fusion="weighted"`, by score: DPR (Karpukhin et al. 2020, section 5.1) reranks the union of both
top lists by BM25 + lambda * sim; here, so that one weight fits embedders whose inner products have any
scale, each of the dense and BM25 scores is first min-max normalised to [0, 1] over the query's candidates,
and the blocks are ranked by dense + weight * BM25. This is the default: on the demo's corpus and
human-style questions, with depth 100 and weight 0.5, it matched or beat RRF at every k but one (by one
question) and was well ahead at k = 1, both with the embedder the demo starts from and with the one its
retriever stage trains (whose own recall is much lower; a weaker dense model wants more BM25 weight: 0.3
was best with the first, 0.5-1 with the second). Measured with benchmarks/retrieval_quality.py.

The hybrid chooses which blocks are read; how they are weighed stays the model's: the scores it returns
are the dense inner products of the fused blocks (recomputed from `dense.reconstruct`), so retrieval
probabilities and the reader's marginal over blocks are softmaxes of the embedder's own logits, as for a
dense index. Those scores follow the fused order, so unlike a dense index's they need not decrease.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from realm.index.base import (
    MISSING_ID,
    Index,
    SearchResult,
    check_ids,
    check_k,
    check_queries,
    empty_result,
    order_hits,
)
from realm.index.sparse import SparseIndex

DEFAULT_K0 = 60.0
DEFAULT_DEPTH = 100
DEFAULT_WEIGHT = 0.5
FUSIONS = ("rrf", "weighted")


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


def min_max(scores: Tensor, valid: Tensor) -> Tensor:
    """Each row's valid scores mapped linearly onto [0, 1] (min -> 0, max -> 1); a constant row -> 0.

    Args:
        scores: [B, C] float. valid: [B, C] bool (False entries are ignored and come back as 0).
    """
    low = scores.masked_fill(~valid, float("inf")).min(dim=1, keepdim=True).values  # [B, 1]
    high = scores.masked_fill(~valid, float("-inf")).max(dim=1, keepdim=True).values
    span = (high - low).clamp(min=0)
    scaled = torch.where(span > 0, (scores - low) / span.clamp(min=torch.finfo(scores.dtype).tiny), 0.0)
    return scaled.masked_fill(~valid, 0.0)


def weighted_score_fusion(
    ids: Tensor, dense_scores: Tensor, sparse_scores: Tensor, k: int, weight: float = DEFAULT_WEIGHT
) -> SearchResult:
    """Rank candidates by min_max(dense) + weight * min_max(sparse), each normalised over the row's candidates.

    Args:
        ids: [B, C] int64 candidate block ids of each query (each id once per row; -1 pads a row).
        dense_scores: [B, C] the dense inner products of those candidates.
        sparse_scores: [B, C] their BM25 scores (0 for a candidate sharing no token with the question).
        k: fused hits to keep per query (>= 1).
        weight: BM25's weight against the dense score's 1.
    Returns:
        SearchResult(scores [B, min(k, C)] float64 fused scores, ids [B, min(k, C)]) best first, ties to the
        lower id; padding (-inf, -1) last.
    """
    check_k(k, k)
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    valid = ids != MISSING_ID
    fused = min_max(dense_scores.double(), valid) + weight * min_max(sparse_scores.double(), valid)  # [B, C]
    scores, ordered = order_hits(fused.masked_fill(~valid, float("-inf")), ids)
    return SearchResult(scores[:, :k], ordered[:, :k])


def candidate_union(lists: Sequence[Tensor]) -> Tensor:
    """Each row's distinct ids over the lists, ascending, padded with -1: [B, C] with C the largest count."""
    rows = [torch.unique(torch.cat([r[b] for r in lists])) for b in range(lists[0].shape[0])]
    rows = [row[row != MISSING_ID] for row in rows]
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), MISSING_ID, dtype=torch.int64)
    for b, row in enumerate(rows):
        out[b, : len(row)] = row
    return out


class HybridIndex(Index):
    """A dense `Index` and a `SparseIndex` of the same blocks, fused by reciprocal rank or by weighted score.

    Args:
        dense: the embedder's index (its vectors give the returned scores).
        sparse: BM25 over the same block store (same N, same order).
        depth: M, hits taken from each index before fusing (raised to k when k is larger).
        k0: the reciprocal-rank constant (fusion "rrf").
        fusion: "weighted" (`weighted_score_fusion`) or "rrf" (`reciprocal_rank_fusion`).
        weight: BM25's weight (fusion "weighted").
    """

    wants_texts = True  # BM25 reads the questions' strings (see realm.index.base)

    def __init__(
        self,
        dense: Index,
        sparse: SparseIndex,
        depth: int = DEFAULT_DEPTH,
        k0: float = DEFAULT_K0,
        fusion: str = "weighted",
        weight: float = DEFAULT_WEIGHT,
    ) -> None:
        if len(dense) != len(sparse):
            raise ValueError(
                f"the dense index has {len(dense):,} blocks but the sparse index {len(sparse):,}; build both "
                "from the same block store (realm index build / realm index build-sparse)"
            )
        check_k(depth, depth)
        if k0 < 0 or weight < 0:
            raise ValueError(f"k0 and weight must be >= 0, got k0={k0}, weight={weight}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.dense = dense
        self.sparse = sparse
        self.depth = int(depth)
        self.k0 = float(k0)
        self.fusion = fusion
        self.weight = float(weight)

    @property
    def dim(self) -> int:
        return self.dense.dim

    def __len__(self) -> int:
        return len(self.dense)

    def __repr__(self) -> str:
        fusion = f"k0={self.k0}" if self.fusion == "rrf" else f"weight={self.weight}"
        return f"HybridIndex({self.dense!r}, {self.sparse!r}, depth={self.depth}, {self.fusion}, {fusion})"

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
        texts = list(texts)
        dense_ids = self.dense.search(queries, depth).ids.cpu()  # [B, M]
        sparse_ids = self.sparse.search_text(texts, depth).ids  # [B, M]
        if self.fusion == "rrf":
            ids = reciprocal_rank_fusion([dense_ids, sparse_ids], k, self.k0).ids  # [B, K]
        else:
            union = candidate_union([dense_ids, sparse_ids])  # [B, C], C <= 2M
            bm25 = self.sparse.score_ids(texts, union)  # [B, C]
            ids = weighted_score_fusion(union, self._dense_scores(queries, union), bm25, k, self.weight).ids
        ids = ids[:, :k]
        return SearchResult(self._dense_scores(queries, ids).to(queries.device), ids.to(queries.device))

    def _dense_scores(self, queries: Tensor, ids: Tensor) -> Tensor:
        """Inner products [B, C] of queries [B, D] with the stored vectors of ids [B, C]; -inf where id is -1."""
        vectors = self.dense.reconstruct(ids.clamp(min=0))  # [B, C, D]
        scores = torch.einsum("bcd,bd->bc", vectors, queries.cpu())
        return scores.masked_fill(ids == MISSING_ID, float("-inf"))

    def reconstruct(self, ids: Tensor) -> Tensor:
        """The dense vectors of `ids` [...] as float32 [..., D]."""
        return self.dense.reconstruct(check_ids(ids, len(self)))

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Refused: a hybrid index is its two parts, each saved and opened on its own."""
        raise NotImplementedError(
            "a HybridIndex is not saved as one directory: save its parts (dense.save(dir), sparse.save(dir2)) "
            "and open them with open_index(dir) and SparseIndex.open(dir2, store)"
        )


def with_sparse(
    dense: Index,
    sparse: str | os.PathLike[str] | SparseIndex | None,
    store: Any,
    *,
    fusion: str = "weighted",
    depth: int = DEFAULT_DEPTH,
    weight: float = DEFAULT_WEIGHT,
    k0: float = DEFAULT_K0,
) -> Index:
    """The index to retrieve with: `dense` alone (sparse None), or dense + BM25 fused (`HybridIndex`).

    The one place a sparse index meets the store it must have been built from: a directory is opened with
    `SparseIndex.open(sparse, store)`, an opened `SparseIndex` is checked by fingerprint; either is refused
    when built from another store, with the command that rebuilds it.

    Args:
        dense: the embedder's index of `store`.
        sparse: a sparse index directory (`realm index build-sparse`), an opened `SparseIndex`, or None.
        store: the `BlockStore` both indexes serve.
        fusion, depth, weight, k0: as `HybridIndex`.
    """
    if sparse is None:
        return dense
    if isinstance(sparse, SparseIndex):
        check_sparse_store(sparse, store)
    else:
        sparse = SparseIndex.open(sparse, store)
    return HybridIndex(dense, sparse, depth=depth, k0=k0, fusion=fusion, weight=weight)


def check_sparse_store(index: Index | SparseIndex, store: Any) -> None:
    """Refuse a BM25 index (alone, or the sparse half of a `HybridIndex`) built from another store than `store`.

    A dense index alone passes (its own size check is `realm.index.base.check_index_size`); so does a store
    without a fingerprint (an in-memory stand-in).
    """
    sparse = index.sparse if isinstance(index, HybridIndex) else index
    fingerprint = getattr(store, "fingerprint", None)
    if not isinstance(sparse, SparseIndex) or fingerprint is None:
        return
    if sparse.store_fingerprint != fingerprint or len(sparse) != len(store):
        raise ValueError(
            f"the sparse index was built from another block store ({len(sparse):,} blocks, fingerprint "
            f"{sparse.store_fingerprint[:12]}; this store: {len(store):,}, {fingerprint[:12]}); rebuild it "
            f"with: realm index build-sparse --store {getattr(store, 'path', '<store>')} --out <sparse>"
        )


def describe_retrieval(index: Index) -> dict[str, Any]:
    """How an index retrieves, for people and /health: {"mode": "dense"} or the hybrid's fusion settings."""
    if not isinstance(index, HybridIndex):
        return {"mode": "dense"}
    settings: dict[str, Any] = {"mode": "hybrid", "fusion": index.fusion, "depth": index.depth}
    settings.update({"k0": index.k0} if index.fusion == "rrf" else {"weight": index.weight})
    return settings
