"""`Pipeline`: batched answers with evidence, equal to `RealmForOpenQA` on the same blocks."""

from __future__ import annotations

import json

import pytest
import torch

from realm import RealmForOpenQA, RealmRetriever, RealmTokenizerFast
from realm.corpus import Block, BlockStore
from realm.index import ExactIndex
from realm.pipeline import Pipeline
from tests.conftest import REFERENCE

CASE = REFERENCE / "openqa_eval"
QUESTIONS = ["the capital of france?", "which city has the eiffel tower?", "the capital of italy", "old church"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokenizer = RealmTokenizerFast.from_pretrained(CASE)
    texts = json.loads((CASE / "block_records.json").read_text())
    store_dir = tmp_path_factory.mktemp("pipeline") / "store"
    blocks = [Block("", t, [], tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
    store = BlockStore.create(store_dir, blocks, tokenizer)
    model = RealmForOpenQA.from_pretrained(CASE, retriever=RealmRetriever(store, tokenizer))
    index = ExactIndex(model.block_emb.clone())
    pipeline = Pipeline.from_pretrained(CASE, store, index, k=model.config.reader_beam_size)
    return model, pipeline, tokenizer


def test_answers_equal_the_open_qa_model(setup) -> None:
    model, pipeline, tokenizer = setup
    answers = pipeline.ask(QUESTIONS)
    assert [a.question for a in answers] == QUESTIONS
    for answer in answers:
        out = model(**tokenizer([answer.question], return_tensors="pt"))
        retrieved = out.retrieved_block_ids.tolist()
        assert [e.block_id for e in answer.evidence] == retrieved
        # The best single span (the port's prediction) is the best of the evidence's spans; the answer itself
        # is the string of highest marginal probability (tests/test_pipeline_answers.py), which may differ.
        top = max(answer.evidence, key=lambda e: e.span_score)
        assert top.block_id == retrieved[int(out.reader_output.block_idx)]
        # The character span, re-tokenized, gives the wordpieces the model predicted.
        assert tokenizer(top.span_text, add_special_tokens=False).input_ids == out.predicted_answer_ids.tolist()
        assert top.text[top.span_start : top.span_end] == top.span_text
        assert answer.text in next(e for e in answer.evidence if e.block_id == answer.block_id).text
        assert answer.score <= top.span_score + 1e-5
        probs = [e.retrieval_probability for e in answer.evidence]
        assert abs(sum(probs) - 1) < 1e-5 and probs == sorted(probs, reverse=True)


def test_batched_equals_one_at_a_time(setup) -> None:
    _, pipeline, _ = setup
    batched = pipeline.ask(QUESTIONS)
    for question, answer in zip(QUESTIONS, batched, strict=True):
        (alone,) = pipeline.ask(question)
        assert alone.text == answer.text and alone.block_id == answer.block_id
        assert [e.block_id for e in alone.evidence] == [e.block_id for e in answer.evidence]
        assert alone.score == pytest.approx(answer.score, abs=1e-4)


def test_bad_questions_and_mismatched_index(setup) -> None:
    _, pipeline, _ = setup
    with pytest.raises(ValueError, match="non-empty"):
        pipeline.ask(["", "ok?"])
    assert pipeline.ask([]) == []
    with pytest.raises(ValueError, match="index has 3 blocks but the store has 8"):
        Pipeline(pipeline.embedder, pipeline.reader, pipeline.store, ExactIndex(torch.zeros(3, 16)))


def test_ask_and_evaluate_commands(setup, tmp_path, capsys) -> None:
    from realm.cli import main
    from realm.eval import read_predictions_jsonl
    from realm.index import write_embeddings

    model, pipeline, _ = setup
    write_embeddings(tmp_path / "index", model.block_emb)
    common = ["--model", str(CASE), "--store", str(pipeline.store.path), "--index", str(tmp_path / "index"), "--k", "3"]
    assert main(["ask", "the capital of france?", *common]) == 0
    out = capsys.readouterr().out
    expected = pipeline.ask("the capital of france?")[0]
    assert out.count(" p=") == 3 and "[[" in out
    # The tiny random reader is unsure: below the default threshold the best guess is shown as such.
    assert not expected.sure and f"A: not sure (p={expected.probability:.2f} < 0.30); best guess: {expected.text}" in out
    assert main(["ask", "the capital of france?", *common, "--threshold", "0"]) == 0
    assert f"A: {expected.text}   (p={expected.probability:.2f}, block {expected.block_id})" in capsys.readouterr().out

    data = tmp_path / "dev.jsonl"
    data.write_text(
        json.dumps({"question": "the capital of france?", "answer": ["Paris"]}) + "\n"
        + json.dumps({"question": "the capital of italy", "answer": ["rome"]}) + "\n"
    )
    args = ["evaluate", "--data", str(data), *common, "--recall-k", "1", "5", "--out", str(tmp_path / "pred.jsonl"), "--no-progress"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "2" in table and "recall@5" in table.lower().replace(" ", "")
    rows = read_predictions_jsonl(tmp_path / "pred.jsonl")
    assert [r["question"] for r in rows] == ["the capital of france?", "the capital of italy"]
    assert all(len(r["hits"]) == 5 and len(r["retrieved"]) == 5 for r in rows)
    # recall is computed from the texts of the retrieved blocks
    texts = json.loads((CASE / "block_records.json").read_text())
    assert rows[0]["hits"] == ["paris" in texts[i] for i in rows[0]["retrieved"]]
