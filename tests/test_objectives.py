"""The paper's quantities in `realm.objectives` against their formulas written out with Python floats.

(The marginal MLM losses are checked the same way in tests/test_pretrain.py, ICT's in-batch loss in
tests/test_ict.py, and RealmReader's losses against the port's numbers in tests/test_parity.py.)
"""

from __future__ import annotations

import math

import pytest
import torch

from realm.objectives import (
    IGNORE_INDEX,
    candidate_token_log_probs,
    correct_spans,
    in_batch_softmax_loss,
    marginal_log_likelihood_loss,
    marginal_token_log_likelihood,
    reader_losses,
    retrieval_utility,
)


def _softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    exps = [math.exp(x - top) for x in xs]
    return [e / sum(exps) for e in exps]


def test_marginal_token_log_likelihood_and_retrieval_utility_written_out() -> None:
    g = torch.Generator().manual_seed(1)
    b, c, t, v = 2, 4, 3, 6
    logits, retrieval_logits = torch.randn(b, c, t, v, generator=g), torch.randn(b, c, generator=g)
    labels = torch.tensor([[2, IGNORE_INDEX, 5], [0, 1, IGNORE_INDEX]])
    token_logp = candidate_token_log_probs(logits, labels)  # [B, C, T]
    marginal = marginal_token_log_likelihood(token_logp, retrieval_logits)  # [B, T]
    marginal_sum = null_sum = 0.0
    count = 0
    for i in range(b):
        p_z = _softmax(retrieval_logits[i].tolist())
        for j in range(t):
            if labels[i, j] == IGNORE_INDEX:
                assert float(token_logp[i, :, j].abs().max()) == 0.0  # unlabelled positions contribute nothing
                continue
            y = int(labels[i, j])
            p_y = [_softmax(logits[i, z, j].tolist())[y] for z in range(c)]  # p(y | z, x) per candidate
            expected = math.log(sum(p_z[z] * p_y[z] for z in range(c)))
            assert float(marginal[i, j]) == pytest.approx(expected, rel=1e-5)
            marginal_sum += expected
            null_sum += math.log(p_y[0])  # candidate 0 is the null block
            count += 1
    mask = (labels != IGNORE_INDEX).float()
    got = retrieval_utility((marginal * mask).sum(), (token_logp[:, 0] * mask).sum(), mask.sum())
    assert float(got) == pytest.approx((marginal_sum - null_sum) / count, rel=1e-5)
    # Sums of a logging window (floats) give the same ratio; no masked token gives 0, not a division by 0.
    assert retrieval_utility(marginal_sum, null_sum, float(count)) == pytest.approx((marginal_sum - null_sum) / count)
    assert retrieval_utility(0.0, 0.0, 0.0) == 0.0


def test_retrieval_utility_is_zero_when_every_block_is_the_null_block() -> None:
    g = torch.Generator().manual_seed(2)
    one = torch.randn(1, 1, 3, 5, generator=g)
    logits = one.expand(1, 3, 3, 5)  # three candidates predicting exactly as the null block does
    labels = torch.tensor([[1, 4, 0]])
    token_logp = candidate_token_log_probs(logits, labels)
    marginal = marginal_token_log_likelihood(token_logp, torch.randn(1, 3, generator=g))
    utility = retrieval_utility(marginal.sum(), token_logp[:, 0].sum(), torch.tensor(3.0))
    assert float(utility) == pytest.approx(0.0, abs=1e-6)


def test_marginal_log_likelihood_loss_written_out() -> None:
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.1], [1.0, 1.0, -3.0, 0.0]])
    correct = torch.tensor([[True, False, True, False], [False, False, False, True]])
    got = marginal_log_likelihood_loss(logits, correct)
    for row in range(2):
        p = _softmax(logits[row].tolist())
        expected = -math.log(sum(p[i] for i in range(4) if correct[row, i]))
        assert float(got[row]) == pytest.approx(expected, rel=1e-5)


def test_reader_losses_written_out_and_zero_without_a_positive() -> None:
    retrieval_logits = torch.tensor([1.0, 0.2, -0.5])  # K = 3 retrieved
    reader_logits = torch.tensor([[0.3, 1.2], [-0.7, 0.4]])  # R = 2 read, N = 2 spans
    has_answers = torch.tensor([False, True, True])
    reader_correct = torch.tensor([[False, True], [True, False]])
    retriever_loss, reader_loss = reader_losses(retrieval_logits, reader_logits, has_answers, reader_correct)
    p_z = _softmax(retrieval_logits.tolist())
    assert float(retriever_loss) == pytest.approx(-math.log(p_z[1] + p_z[2]), rel=1e-5)
    p_span = _softmax(reader_logits.reshape(-1).tolist())
    assert float(reader_loss) == pytest.approx(-math.log(p_span[1] + p_span[2]), rel=1e-5)
    none_k, none_r = torch.zeros(3, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool)
    zero_retriever, zero_reader = reader_losses(retrieval_logits, reader_logits, none_k, none_r)
    assert float(zero_retriever) == 0.0 and float(zero_reader) == 0.0


def test_correct_spans_matches_start_and_end_together() -> None:
    starts, ends = torch.tensor([1, 1, 2, 3]), torch.tensor([1, 2, 3, 3])  # N = 4 candidates
    gold_starts = torch.tensor([[1, -1], [2, 3]])  # R = 2 blocks, A = 2 gold spans (-1 padding)
    gold_ends = torch.tensor([[2, -1], [3, 4]])
    expected = [
        [any(s == gs and e == ge for gs, ge in zip(gold_starts[r].tolist(), gold_ends[r].tolist(), strict=True))
         for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        for r in range(2)
    ]  # fmt: skip
    assert correct_spans(starts, ends, gold_starts, gold_ends).tolist() == expected
    assert expected == [[False, True, False, False], [False, False, True, False]]


def test_in_batch_softmax_loss_is_the_objectives_one() -> None:
    from realm.pretrain import in_batch_softmax_loss as from_pretrain

    assert from_pretrain is in_batch_softmax_loss  # one definition, re-exported
    q, blocks = torch.eye(2, 3), torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    loss, accuracy = in_batch_softmax_loss(q, blocks, torch.tensor([0, 1]))
    first = -math.log(math.exp(2) / (math.exp(2) + 2))
    second = -math.log(math.e / (math.e + 2))
    assert float(loss) == pytest.approx((first + second) / 2, rel=1e-6)
    assert float(accuracy) == 1.0
