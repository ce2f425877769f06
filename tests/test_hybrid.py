"""Hybrid retrieval: reciprocal-rank fusion against sums written out by hand, weighted fusion against values
written out, and `HybridIndex` (both fusions) against the formulas on a tiny store with an exact index and BM25."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from realm.corpus import BlockStore
from realm.index import ExactIndex, HybridIndex, SparseIndex, reciprocal_rank_fusion, weighted_score_fusion
from tests.test_sparse import DOCUMENTS, QUESTIONS, make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> BlockStore:
    return make_store(tmp_path_factory.mktemp("hybrid") / "store", DOCUMENTS)


# ---------------------------------------------------------------------------------------------------------
# Reciprocal-rank fusion.


def test_rrf_against_sums_written_out() -> None:
    dense = torch.tensor([[3, 1, 2, 7]])  # ranks: 3 -> 1, 1 -> 2, 2 -> 3, 7 -> 4
    sparse = torch.tensor([[1, 4, 3, -1]])  # ranks: 1 -> 1, 4 -> 2, 3 -> 3; -1 is a missing hit
    scores, ids = reciprocal_rank_fusion([dense, sparse], k=6, k0=60)
    expected = {
        1: 1 / (60 + 2) + 1 / (60 + 1),  # 0.032523
        3: 1 / (60 + 1) + 1 / (60 + 3),  # 0.032266
        4: 1 / (60 + 2),  # 0.016129
        7: 1 / (60 + 4),  # 0.015625 (less than 2's 1/63 = 0.015873)
        2: 1 / (60 + 3),
    }
    assert ids.tolist() == [[1, 3, 4, 2, 7, -1]]
    np.testing.assert_allclose(scores[0, :5].numpy(), [expected[i] for i in (1, 3, 4, 2, 7)], rtol=1e-15)
    assert scores[0, 5] == float("-inf") and scores.dtype == torch.float64

    # k0 = 0: rank 1 counts 1, rank 2 a half, ...: 1 -> 1/2 + 1 = 1.5, 3 -> 1 + 1/3, 4 -> 1/2, 2 -> 1/3, 7 -> 1/4
    scores, ids = reciprocal_rank_fusion([dense, sparse], k=3, k0=0)
    assert ids.tolist() == [[1, 3, 4]]
    np.testing.assert_allclose(scores[0].numpy(), [1.5, 1 + 1 / 3, 0.5])


def test_rrf_ties_go_to_the_lower_id_and_rows_are_independent() -> None:
    a = torch.tensor([[9, 5, 6], [0, 1, 2]])
    b = torch.tensor([[5, 9, 6], [2, 0, 1]])
    c = torch.tensor([[6, 9, 5], [1, 2, 0]])
    # Row 0: 9 has ranks {1, 2, 2}, 5 has {2, 1, 3}, 6 has {3, 3, 1}: 9 -> 1/61 + 2/62 is the best; 5 and
    # 6 differ (1/61 + 1/62 + 1/63 > 1/61 + 2/63). Row 1: 0, 1 and 2 each have ranks {1, 2, 3}: a three-way
    # tie, whose sums are equal to the bit (summed in the same order), broken by id.
    scores, ids = reciprocal_rank_fusion([a, b, c], k=3)
    assert ids.tolist() == [[9, 5, 6], [0, 1, 2]]
    assert scores[0, 0] == pytest.approx(1 / 61 + 2 / 62) and scores[0, 1] == pytest.approx(1 / 61 + 1 / 62 + 1 / 63)
    assert scores[1, 0] == scores[1, 1] == scores[1, 2] == pytest.approx(1 / 61 + 1 / 62 + 1 / 63)
    with pytest.raises(ValueError, match="same B"):
        reciprocal_rank_fusion([a, b[:1]], k=3)


# ---------------------------------------------------------------------------------------------------------
# HybridIndex against the formula.


def test_hybrid_index_equals_the_fusion_formula(store) -> None:
    torch.manual_seed(0)
    n, dim, depth, k = len(store), 8, 4, 3
    vectors = torch.randn(n, dim)
    dense = ExactIndex(vectors)
    sparse = SparseIndex.build(store, progress=False)
    hybrid = HybridIndex(dense, sparse, depth=depth, fusion="rrf", k0=60)
    assert len(hybrid) == n and hybrid.dim == dim
    queries = torch.randn(len(QUESTIONS), dim)
    result = hybrid.search(queries, k, texts=QUESTIONS)

    products = queries @ vectors.T  # [B, N]
    bm25 = sparse.scores(QUESTIONS)
    for b in range(len(QUESTIONS)):
        dense_rank = sorted(range(n), key=lambda i: (-products[b, i].item(), i))[:depth]
        sparse_rank = [i for i in sorted(range(n), key=lambda i: (-bm25[b, i].item(), i)) if bm25[b, i] > 0][:depth]
        fused: dict[int, float] = {}
        for ranking in (dense_rank, sparse_rank):
            for rank, block in enumerate(ranking, start=1):
                fused[block] = fused.get(block, 0.0) + 1 / (60 + rank)
        expected = sorted(fused, key=lambda i: (-fused[i], i))[:k]
        assert result.ids[b].tolist() == expected
        torch.testing.assert_close(result.scores[b], products[b, expected])  # the dense logits, not RRF's
    # The question about the Mona Lisa finds its block through BM25 even where the random vectors do not.
    assert 2 in result.ids[1].tolist()
    torch.testing.assert_close(hybrid.reconstruct(result.ids), vectors[result.ids])

    with pytest.raises(ValueError, match="needs the question texts"):
        hybrid.search(queries, k)
    with pytest.raises(ValueError, match="one per query"):
        hybrid.search(queries, k, texts=QUESTIONS[:2])
    with pytest.raises(ValueError, match="the dense index has 3 blocks but the sparse index 9"):
        HybridIndex(ExactIndex(vectors[:3]), sparse)
    with pytest.raises(NotImplementedError, match="save its parts"):
        hybrid.save("unused")


# ---------------------------------------------------------------------------------------------------------
# Weighted score fusion.


def test_weighted_fusion_against_values_written_out() -> None:
    ids = torch.tensor([[4, 7, 9, -1]])
    dense = torch.tensor([[2.0, 1.0, 0.0, 5.0]])  # the padding's 5.0 must not enter the min-max
    bm25 = torch.tensor([[0.0, 5.0, 10.0, 0.0]])
    # min-max: dense -> [1, 0.5, 0], BM25 -> [0, 0.5, 1]
    scores, out = weighted_score_fusion(ids, dense, bm25, k=4, weight=0.5)  # [1, 0.75, 0.5]
    assert out.tolist() == [[4, 7, 9, -1]]
    np.testing.assert_allclose(scores[0, :3].numpy(), [1.0, 0.75, 0.5])
    assert scores[0, 3] == float("-inf")
    scores, out = weighted_score_fusion(ids, dense, bm25, k=2, weight=2.0)  # [1, 1.5, 2]
    assert out.tolist() == [[9, 7]] and scores[0].tolist() == [2.0, 1.5]
    _, out = weighted_score_fusion(ids, dense, bm25, k=3, weight=1.0)  # [1, 1, 1]: a tie, lower id first
    assert out.tolist() == [[4, 7, 9]]
    # a constant column (e.g. no candidate shares a token with the question) adds nothing
    _, out = weighted_score_fusion(ids, dense, torch.zeros(1, 4), k=3, weight=5.0)
    assert out.tolist() == [[4, 7, 9]]


def test_weighted_hybrid_index_equals_the_formula(store) -> None:
    torch.manual_seed(1)
    n, dim, depth, k, weight = len(store), 8, 3, 3, 0.4
    vectors = torch.randn(n, dim)
    sparse = SparseIndex.build(store, progress=False)
    hybrid = HybridIndex(ExactIndex(vectors), sparse, depth=depth, fusion="weighted", weight=weight)
    queries = torch.randn(len(QUESTIONS), dim)
    result = hybrid.search(queries, k, texts=QUESTIONS)
    products, bm25 = queries @ vectors.T, sparse.scores(QUESTIONS)
    reordered = 0
    for b in range(len(QUESTIONS)):
        dense_top = sorted(range(n), key=lambda i: (-products[b, i].item(), i))[:depth]
        sparse_top = [i for i in sorted(range(n), key=lambda i: (-bm25[b, i].item(), i)) if bm25[b, i] > 0][:depth]
        union = sorted(set(dense_top) | set(sparse_top))

        def scaled(values: list[float]) -> list[float]:
            low, high = min(values), max(values)
            return [(v - low) / (high - low) if high > low else 0.0 for v in values]

        fused = dict(zip(union, (d + weight * s for d, s in zip(scaled([products[b, i].item() for i in union]),
                                                                 scaled([bm25[b, i].item() for i in union]),
                                                                 strict=True)), strict=True))  # fmt: skip
        expected = sorted(union, key=lambda i: (-fused[i], i))[:k]
        assert result.ids[b].tolist() == expected
        torch.testing.assert_close(result.scores[b], products[b, expected])
        reordered += expected != dense_top[:k]
    assert reordered >= 2  # BM25 changed the ranking (the check would pass trivially otherwise)
    with pytest.raises(ValueError, match="fusion must be one of"):
        HybridIndex(ExactIndex(vectors), sparse, fusion="max")
