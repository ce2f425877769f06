"""Answer probabilities (REALM's marginal over the blocks and spans read, the same string's spans summed), the
"sure" threshold, and the reliability table of `realm evaluate`, against sums written out by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from realm import RealmForOpenQA, RealmRetriever, RealmTokenizerFast
from realm.corpus import Block, BlockStore
from realm.eval import normalize_answer, reliability_table, summarize
from realm.eval.calibration import fit_temperature
from realm.index import ExactIndex
from realm.objectives import top_joint_spans
from realm.pipeline import MARGINAL_SPANS, Pipeline, answer_marginals
from realm.qa import read
from tests.conftest import REFERENCE

CASE = REFERENCE / "openqa_eval"
QUESTIONS = ["the capital of france?", "which city has the eiffel tower?", "the capital of italy", "old church"]
MIN = torch.finfo(torch.float32).min

# Two blocks read, three span candidates each. (block, span) -> the span's text in its block.
LOGITS = torch.tensor([[2.0, 1.0, MIN], [0.5, 2.0, 0.0]])  # [R, S] joint scores; (0, 2) leaves its block
TEXTS = {(0, 0): "Paris", (0, 1): "the city", (0, 2): "", (1, 0): "paris.", (1, 1): "Rome", (1, 2): "The"}


def test_joint_softmax_over_all_pairs_by_hand() -> None:
    z = math.e**2 + math.e**1 + math.e**0.5 + math.e**2 + math.e**0  # the masked pair adds exp(-inf) = 0
    probabilities, blocks, spans = top_joint_spans(LOGITS, top=10)
    assert len(probabilities) == 5  # the masked pair is not returned
    expected = {(0, 0): math.e**2 / z, (0, 1): math.e / z, (1, 0): math.e**0.5 / z, (1, 1): math.e**2 / z, (1, 2): 1 / z}
    got = {(b, s): p for p, b, s in zip(probabilities.tolist(), blocks.tolist(), spans.tolist(), strict=True)}
    assert got.keys() == expected.keys()
    for pair, p in expected.items():
        assert got[pair] == pytest.approx(p, rel=1e-6)
    assert probabilities.tolist() == sorted(probabilities.tolist(), reverse=True)
    # Only the M best: the softmax still runs over every pair (the same values, fewer of them).
    top2, _, _ = top_joint_spans(LOGITS, top=2)
    assert top2.tolist() == pytest.approx([math.e**2 / z] * 2, rel=1e-6)


def test_answer_marginal_sums_the_same_string_across_blocks_by_hand() -> None:
    z = math.e**2 + math.e**1 + math.e**0.5 + math.e**2 + math.e**0
    found = answer_marginals(LOGITS, lambda b, s: TEXTS[(b, s)], top=10)
    by_key = {a.key: a for a in found}
    # "Paris" (block 0) and "paris." (block 1) normalise alike: one answer, its two spans' mass summed.
    assert by_key["paris"].probability == pytest.approx((math.e**2 + math.e**0.5) / z, rel=1e-6)
    assert by_key["paris"].text == "Paris" and (by_key["paris"].block, by_key["paris"].span) == (0, 0)
    assert by_key["rome"].probability == pytest.approx(math.e**2 / z, rel=1e-6)
    assert by_key["city"].probability == pytest.approx(math.e / z, rel=1e-6)
    # "The" normalises to "" (an article): no answer, left out with its mass.
    assert [a.key for a in found] == ["paris", "rome", "city"]
    assert [a.probability for a in found] == sorted((a.probability for a in found), reverse=True)
    assert sum(a.probability for a in found) == pytest.approx(1.0 - 1 / z, rel=1e-6)
    # With M = 2 only the two most probable pairs count: a lower bound of each answer's full sum.
    top2 = {a.key: a.probability for a in answer_marginals(LOGITS, lambda b, s: TEXTS[(b, s)], top=2)}
    assert top2 == pytest.approx({"paris": math.e**2 / z, "rome": math.e**2 / z}, rel=1e-6)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    tokenizer = RealmTokenizerFast.from_pretrained(CASE)
    texts = json.loads((CASE / "block_records.json").read_text())
    blocks = [Block("", t, [], tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
    store = BlockStore.create(tmp_path_factory.mktemp("answers") / "store", blocks, tokenizer)
    model = RealmForOpenQA.from_pretrained(CASE, retriever=RealmRetriever(store, tokenizer))
    return Pipeline.from_pretrained(CASE, store, ExactIndex(model.block_emb.clone()), k=3)


@torch.no_grad()
def test_pipeline_answers_carry_the_marginal_of_the_reader(pipeline) -> None:
    answers = pipeline.ask(QUESTIONS)
    retrieved = pipeline.retrieve(QUESTIONS, 3)
    reading = read(pipeline.reader, pipeline.retriever, retrieved.block_ids, retrieved.question_ids[:, None],
                   retrieved.retrieval_logits, max_length=pipeline.reader.config.reader_seq_len)  # fmt: skip
    merged_somewhere = False
    for b, answer in enumerate(answers):
        scores = reading.spans[b].logits.float()  # [R, S]
        text = _span_text(pipeline, b, reading, retrieved)
        evidence = {e.block_id: e for e in answer.evidence}
        assert evidence[answer.block_id].text[answer.span_start : answer.span_end] == answer.text
        # Brute force over EVERY pair: the joint softmax, and the mass of the pairs reading as the answer.
        joint = scores.reshape(-1).softmax(0).view_as(scores)  # [R, S]
        key = normalize_answer(answer.text)
        assert key, "an answer reads as more than articles and punctuation"
        pairs = [(z, s) for z in range(scores.shape[0]) for s in range(scores.shape[1]) if normalize_answer(text(z, s)) == key]
        full = sum(float(joint[z, s]) for z, s in pairs)
        best_pair = max(float(joint[z, s]) for z, s in pairs)
        # Over the top M: at least its best span, at most the sum over all of its spans.
        assert best_pair - 1e-6 <= answer.probability <= full + 1e-6
        merged_somewhere |= answer.probability > best_pair + 1e-6
        found = answer_marginals(scores, text, MARGINAL_SPANS)
        mine = min(found, key=lambda a: a.rank)  # the best span's string is the answer
        assert mine.key == key and mine.probability == pytest.approx(answer.probability, abs=1e-6)
        assert sum(a.probability for a in found) <= 1 + 1e-6  # over distinct answers: at most 1
        # With M = every pair, the marginal is the brute-force sum exactly.
        everything = {a.key: a.probability for a in answer_marginals(scores, text, scores.numel())}
        assert everything[key] == pytest.approx(full, abs=1e-6)
        assert sum(everything.values()) <= 1 + 1e-6
    assert merged_somewhere, "no answer summed two spans of the same string: the fixture no longer tests merging"


def _span_text(pipeline, b, reading, retrieved):
    """(block, span) -> text, mapped independently of the pipeline's own mapping: re-tokenize the block's
    reader input and decode through its offsets."""
    ids = retrieved.block_ids[b, :3].tolist()
    texts = pipeline.store.texts(ids)
    offsets = pipeline.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    types, mask = reading.inputs["token_type_ids"][b], reading.inputs["attention_mask"][b]
    starts, ends = reading.spans[b].starts.tolist(), reading.spans[b].ends.tolist()

    def text(z: int, s: int) -> str:
        first_block_token = int(((types[z] == 0) & mask[z].bool()).sum())  # [CLS] question [SEP]
        first, last = starts[s] - first_block_token, ends[s] - first_block_token
        if not 0 <= first <= last < len(offsets[z]):
            return ""
        return texts[z][offsets[z][first][0] : offsets[z][last][1]]

    return text


def test_sure_follows_the_threshold(pipeline) -> None:
    (answer,) = pipeline.ask(QUESTIONS[0])
    assert 0 < answer.probability < 1
    for threshold in (0.0, answer.probability, min(1.0, answer.probability + 1e-3), 1.0):
        strict = Pipeline(pipeline.embedder, pipeline.reader, pipeline.store, pipeline.index, k=3, threshold=threshold)
        (again,) = strict.ask(QUESTIONS[0])
        assert again.text == answer.text and again.probability == answer.probability
        assert again.sure == (answer.probability >= threshold)
    with pytest.raises(ValueError, match="threshold"):
        Pipeline(pipeline.embedder, pipeline.reader, pipeline.store, pipeline.index, threshold=1.5)


def test_reliability_table_by_hand() -> None:
    probabilities = [0.05, 0.15, 0.12, 0.55, 0.58, 0.95, 1.0, 0.91]
    correct = [False, True, False, True, False, True, True, False]
    table = reliability_table(probabilities, correct, bins=4)
    # bins [0, .25): 0.05 0.15 0.12 -> mean 0.10667, EM 1/3; [.25, .5): none; [.5, .75): 0.55 0.58 -> 0.565,
    # EM 1/2; [.75, 1]: 0.95 1.0 0.91 -> 0.95333, EM 2/3.
    assert [b.count for b in table.bins] == [3, 0, 2, 3]
    assert [b.low for b in table.bins] == [0.0, 0.25, 0.5, 0.75] and table.bins[-1].high == 1.0
    assert table.bins[1].mean_probability is None and table.bins[1].exact_match is None
    assert [table.bins[i].mean_probability for i in (0, 2, 3)] == pytest.approx([0.32 / 3, 0.565, 2.86 / 3])
    assert [table.bins[i].exact_match for i in (0, 2, 3)] == pytest.approx([1 / 3, 1 / 2, 2 / 3])
    ece = 3 / 8 * abs(1 / 3 - 0.32 / 3) + 2 / 8 * abs(0.5 - 0.565) + 3 / 8 * abs(2 / 3 - 2.86 / 3)
    assert table.ece == pytest.approx(ece) and table.count == 8
    assert "0.75-1.00" in table.table() and f"{ece:.4f}" in table.table()
    with pytest.raises(ValueError, match="outside"):
        reliability_table([1.2], [True])
    with pytest.raises(ValueError):
        reliability_table([0.5, 0.2], [True])


def test_summary_reports_the_reliability_of_prediction_rows() -> None:
    rows = [
        {"question": "a", "answers": ["Paris"], "prediction": "paris", "probability": 0.9},
        {"question": "b", "answers": ["Rome"], "prediction": "Milan", "probability": 0.8},
        {"question": "c", "answers": ["Oslo"], "prediction": "Oslo", "probability": 0.1},
    ]
    summary = summarize(rows, regex=False)
    expected = reliability_table([0.9, 0.8, 0.1], [True, False, True])
    assert summary.reliability == expected
    assert summary.to_dict()["ece"] == pytest.approx(expected.ece) and summary.to_dict()["reliability"]["count"] == 3
    assert "calibration error (ECE)" in summary.table()
    with pytest.raises(ValueError, match="probability"):
        summarize([rows[0], {k: v for k, v in rows[1].items() if k != "probability"}], regex=False)
    assert summarize([{k: v for k, v in r.items() if k != "probability"} for r in rows], regex=False).reliability is None


def test_temperature_scales_the_marginal_by_hand() -> None:
    # At T = 2 the joint scores are halved before the softmax: "paris" = (e^1 + e^0.25) / Z2.
    z2 = math.e**1 + math.e**0.5 + math.e**0.25 + math.e**1 + math.e**0
    found = {a.key: a for a in answer_marginals(LOGITS, lambda b, s: TEXTS[(b, s)], top=10, temperature=2.0)}
    assert found["paris"].probability == pytest.approx((math.e**1 + math.e**0.25) / z2, rel=1e-6)
    assert found["paris"].pairs == (0, 3)  # (0, 0) and (1, 0) = 1 x 3 + 0
    assert {found["paris"].rank, found["rome"].rank} == {0, 1}  # the two best pairs tie at 2.0 / T
    assert found["city"].rank == 2  # (0, 1) at 1.0 / T, ahead of (1, 0) at 0.5 / T


def test_fit_temperature_minimises_the_log_loss_by_hand() -> None:
    # Two answers: one right, one wrong, each with probability 1 / (1 + T) (a made-up family). The loss
    # -log(1/(1+T)) - log(1 - 1/(1+T)) = log(1+T) + log(1+T) - log(T), minimal at T = 1 among the candidates.
    at = [lambda t: 1 / (1 + t)] * 2
    best, losses = fit_temperature(at, [True, False], temperatures=(0.5, 1.0, 2.0))
    expected = {t: (2 * math.log(1 + t) - math.log(t)) / 2 for t in (0.5, 1.0, 2.0)}
    assert dict(losses) == pytest.approx(expected)
    assert best == 1.0
    # All wrong: the flattest candidate wins (the lowest probabilities).
    assert fit_temperature(at, [False, False], temperatures=(0.5, 1.0, 2.0))[0] == 2.0
    with pytest.raises(ValueError, match="no answers"):
        fit_temperature([], [])


def test_the_answer_is_the_best_span_and_masses_give_its_probability(pipeline) -> None:
    found = pipeline.answer_masses(QUESTIONS)
    retrieved = pipeline.retrieve(QUESTIONS, 3)
    reading = read(pipeline.reader, pipeline.retriever, retrieved.block_ids, retrieved.question_ids[:, None],
                   retrieved.retrieval_logits, max_length=pipeline.reader.config.reader_seq_len)  # fmt: skip
    for b, (answer, mass) in enumerate(found):
        scores = reading.spans[b].logits.float()
        text = _span_text(pipeline, b, reading, retrieved)
        # The best pair whose text is an answer (articles and punctuation alone are none).
        order = scores.reshape(-1).argsort(descending=True).tolist()
        width = scores.shape[1]
        first = next(i for i in order if normalize_answer(text(i // width, i % width)))
        assert normalize_answer(answer.text) == normalize_answer(text(first // width, first % width))
        assert mass.probability(1.0) == pytest.approx(answer.probability, abs=1e-6)
        hot = Pipeline(pipeline.embedder, pipeline.reader, pipeline.store, pipeline.index, k=3, temperature=3.0)
        (again,) = hot.ask(QUESTIONS[b])
        assert again.text == answer.text  # temperature never changes the answer
        assert again.probability == pytest.approx(mass.probability(3.0), abs=1e-6)
