"""The demo's retriever stage keeps the projection best on the dev questions, so it never lowers dev recall."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from realm.corpus import BlockStore
from realm.demo import DemoConfig, run_demo
from realm.demo.data import Article, dev_questions, ict_queries, read_articles
from realm.demo.retriever import recall_at, train_projection
from realm.demo.run import _block_of_title
from realm.modeling.embedder import RealmEmbedder
from tests.conftest import tiny_config
from tests.test_bert_import import write_tiny_bert
from tests.test_demo import CORPUS, write_corpus


def _features(seed: int, n: int = 24, hidden: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randn(n, hidden, generator=g)
    dev = blocks + 0.3 * torch.randn(n, hidden, generator=g)  # dev question i is about block i
    return blocks, dev


def test_recall_at_hand_computed() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8], [0.7, 0.6, 0.5]])  # gold 0 @1, 1 @2, 2 @3
    assert recall_at(scores, torch.tensor([0, 1, 2]), ks=(1, 2, 3)) == {
        "recall@1": round(1 / 3, 4), "recall@2": round(2 / 3, 4), "recall@3": 1.0,
    }  # fmt: skip


def test_training_that_lowers_dev_recall_keeps_the_start() -> None:
    torch.manual_seed(0)
    embedder = RealmEmbedder(tiny_config())
    start = {k: v.clone() for k, v in embedder.cls.state_dict().items()}
    blocks, dev = _features(0)
    n = len(blocks)
    # Training pairs that contradict the dev set: query i's positive is another block.
    wrong = torch.roll(torch.arange(n), 1)
    result = train_projection(
        embedder, dev.clone(), wrong, blocks, dev_features=dev, dev_targets=torch.arange(n),
        steps=60, batch_size=8, lr=3e-2, eval_every=10, progress=False,
    )  # fmt: skip
    later = [row["recall@1"] for row in result.history[1:]]
    assert min(later) < result.start["recall@1"], "the training must really lower dev recall for this test to mean anything"
    assert result.best_step == 0 and result.best == result.start
    for key, value in embedder.cls.state_dict().items():
        assert torch.equal(value, start[key]), key
    assert all(p.requires_grad for p in embedder.parameters())


def test_training_that_helps_keeps_its_best_step() -> None:
    torch.manual_seed(0)
    embedder = RealmEmbedder(tiny_config())
    blocks, dev = _features(1)
    n = len(blocks)
    g = torch.Generator().manual_seed(2)
    train = blocks.repeat(4, 1) + 0.3 * torch.randn(4 * n, blocks.shape[1], generator=g)
    result = train_projection(
        embedder, train, torch.arange(n).repeat(4), blocks, dev_features=dev, dev_targets=torch.arange(n),
        steps=60, batch_size=8, lr=3e-2, eval_every=10, progress=False,
    )  # fmt: skip
    score = lambda row: sum(v for k, v in row.items() if k.startswith("recall@"))  # noqa: E731
    assert score(result.best) == max(score(row) for row in result.history) >= score(result.start)
    # The embedder holds the kept projection: its dev recall is the one reported.
    with torch.no_grad():
        kept = recall_at(embedder.cls(dev) @ embedder.cls(blocks).T, torch.arange(n))
    assert kept == result.best


def test_ict_queries_skip_sentences_inside_the_block() -> None:
    article = Article("Nile", "The Nile is a major river. It flows north into the Mediterranean Sea. It is long.", "River")
    rows = ict_queries([article], {"Nile": "The Nile is a major river."}, limit=10)
    assert rows == [{"question": "It flows north into the Mediterranean Sea.", "title": "Nile"}]


def test_demo_retriever_stage_logs_dev_recall_and_never_lowers_it(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "summaries.json")
    words = sorted({w.strip(".,()").lower() for t, (e, d) in CORPUS.items() for w in f"{t} {e} {d}".split()})
    bert = write_tiny_bert(tmp_path / "bert", words + ["what", "who", "is", "the", "?", "(", ")", "–", "which"], positions=128)
    dev = tmp_path / "dev.jsonl"
    rows = [{"question": "which river is in africa?", "answer": ["Nile"], "title": "Nile", "answer_in_block": True},
            {"question": "what is the capital of japan?", "answer": ["Tokyo"], "title": "Tokyo", "answer_in_block": True},
            {"question": "who was a pioneer of computer science?", "answer": ["Alan Turing"], "title": "Alan Turing"}]  # fmt: skip
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = DemoConfig(
        cache_dir=str(tmp_path / "cache"), corpus_json=str(corpus), bert_dir=str(bert), block_tokens=32,
        question_max_length=16, holdout_fraction=0.5, retriever_steps=20, retriever_batch_size=4, retriever_lr=3e-2,
        retriever_eval_every=5, retriever_ict_queries=10, reader_steps=1, reader_batch_size=2, searcher_beam_size=4,
        reader_beam_size=2, eval_questions=0, examples=(), dev_questions=str(dev),
    )  # fmt: skip
    result = run_demo(config, progress=False)
    store = BlockStore.open(tmp_path / "cache/blocks/store")
    block_of = _block_of_title(store, read_articles(corpus))
    assert len(block_of) == len(store) == len(CORPUS)
    assert all(store.titles([b])[0] == title for title, b in block_of.items())
    curve = [json.loads(line) for line in (tmp_path / "cache/retriever/metrics.jsonl").read_text().splitlines()]
    evals = [r for r in curve if r.get("kind") != "kept"]
    assert [r["step"] for r in evals] == [0, 5, 10, 15, 20]
    kept = curve[-1]
    assert kept["kind"] == "kept"
    score = lambda row: sum(v for k, v in row.items() if k.startswith("recall@"))  # noqa: E731
    assert score(kept) == max(score(r) for r in evals) >= score(evals[0])
    assert result.metrics["dev_gold"]["count"] == 3
    assert set(result.metrics["dev_gold"]) == {"count", "recall@1", "recall@5", "recall@20"}
    assert result.metrics["dev_answerable"]["count"] == 2
    assert len(dev_questions(path=dev)) == 3 and dev_questions({"Nile"}, dev)[0]["title"] == "Nile"
