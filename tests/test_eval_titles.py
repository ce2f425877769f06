"""Gold-article recall@k: QA rows with a "title", `summarize` by hand, and `realm evaluate` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from realm import RealmForOpenQA, RealmRetriever, RealmTokenizerFast
from realm.cli import main
from realm.corpus import Block, BlockStore
from realm.eval import QADataError, QAExample, read_predictions_jsonl, read_qa_jsonl, summarize, title_hits
from realm.index import write_embeddings
from tests.conftest import REFERENCE

CASE = REFERENCE / "openqa_eval"


def test_read_qa_jsonl_keeps_the_gold_title(tmp_path: Path) -> None:
    path = tmp_path / "dev.jsonl"
    path.write_text(
        json.dumps({"question": "q1", "answer": ["a"], "title": "Jupiter"}) + "\n"
        + json.dumps({"question": "q2", "answer": ["b"]}) + "\n"
    )  # fmt: skip
    assert read_qa_jsonl(path) == [QAExample("q1", ("a",), 1, "Jupiter"), QAExample("q2", ("b",), 2)]
    path.write_text(json.dumps({"question": "q", "answer": ["a"], "title": ["Jupiter"]}) + "\n")
    with pytest.raises(QADataError, match=r'dev.jsonl:1: "title" \(the gold article\) must be a non-empty string'):
        read_qa_jsonl(path)


def test_title_hits_and_summary_by_hand() -> None:
    assert title_hits(["Mars", "Jupiter", "jupiter"], "Jupiter") == [False, True, False]  # exact match
    rows = [
        {"prediction": "x", "answers": ["x"], "hits": [False, True, False], "title_hits": [True, False, False]},
        {"prediction": "y", "answers": ["x"], "hits": [False, False, False], "title_hits": [False, False, True]},
        {"prediction": "x", "answers": ["x"], "hits": [True, False, False], "title_hits": [False, False, False]},
        {"prediction": "x", "answers": ["x"], "hits": [True, True, False]},  # no gold article: not counted
    ]
    summary = summarize(rows, regex=False, ks=(1, 2, 3))
    assert summary.recall == {1: 0.5, 2: 0.75, 3: 0.75}
    assert summary.num_titled == 3
    assert summary.title_recall == {1: 1 / 3, 2: 1 / 3, 3: 2 / 3}  # first gold blocks at ranks 1, 3, none
    assert summary.to_dict()["title_recall@3"] == pytest.approx(2 / 3)
    table = summary.table().splitlines()
    assert "questions with a gold article      3" in table
    assert "gold-article recall@1          33.33" in table and "gold-article recall@3          66.67" in table
    assert "gold-article" not in summarize(rows[3:], regex=False).table()  # no title: no such line
    with pytest.raises(ValueError, match='"title_hits" must be a list of booleans'):
        summarize([{"prediction": "x", "answers": ["x"], "title_hits": [1]}], regex=False)


def test_evaluate_reports_gold_article_recall(tmp_path: Path, capsys) -> None:
    tokenizer = RealmTokenizerFast.from_pretrained(CASE)
    texts = json.loads((CASE / "block_records.json").read_text())
    titles = [f"Article {i // 2}" for i in range(len(texts))]  # two blocks per article
    blocks = [Block(title, text, tokenizer(title, add_special_tokens=False).input_ids,
                    tokenizer(text, add_special_tokens=False).input_ids) for title, text in zip(titles, texts, strict=True)]  # fmt: skip
    store = BlockStore.create(tmp_path / "store", blocks, tokenizer)
    model = RealmForOpenQA.from_pretrained(CASE, retriever=RealmRetriever(store, tokenizer))
    write_embeddings(tmp_path / "index", model.block_emb)
    data = tmp_path / "dev.jsonl"
    data.write_text(
        json.dumps({"question": "the capital of france?", "answer": ["Paris"], "title": "Article 0"}) + "\n"
        + json.dumps({"question": "the capital of italy", "answer": ["rome"], "title": "Article 2"}) + "\n"
        + json.dumps({"question": "old church", "answer": ["church"]}) + "\n"
    )  # fmt: skip
    args = ["evaluate", "--data", str(data), "--model", str(CASE), "--store", str(store.path),
            "--index", str(tmp_path / "index"), "--k", "3", "--recall-k", "1", "5",
            "--out", str(tmp_path / "pred.jsonl"), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    table = capsys.readouterr().out

    rows = read_predictions_jsonl(tmp_path / "pred.jsonl")
    assert [r.get("title") for r in rows] == ["Article 0", "Article 2", None] and "title_hits" not in rows[2]
    for row in rows[:2]:  # a hit is a retrieved block of the gold article
        assert row["title_hits"] == [titles[i] == row["title"] for i in row["retrieved"]]
    expected = {k: sum(any(r["title_hits"][:k]) for r in rows[:2]) / 2 for k in (1, 5)}
    metrics = table.split("\n\n")[0]  # the metrics table; the reliability table follows it
    shown = {line.rsplit(maxsplit=1)[0]: line.split()[-1] for line in metrics.splitlines()[2:]}
    assert shown["gold-article recall@1"] == f"{100 * expected[1]:.2f}"
    assert shown["gold-article recall@5"] == f"{100 * expected[5]:.2f}"
    assert shown["questions with a gold article"] == "2"
