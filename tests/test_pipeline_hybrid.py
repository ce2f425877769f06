"""Hybrid (dense + BM25) retrieval wherever a retriever is used: `Pipeline`, `realm ask`, `realm evaluate`,
`realm serve` and fine-tuning's candidate search; a sparse index of another store is refused on every path.
A tiny real store, an exact index and a real BM25 index (bm25s)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch

from realm import RealmTokenizerFast
from realm.cli import main
from realm.corpus import BlockStore
from realm.eval import read_predictions_jsonl
from realm.finetune import FinetuneConfig, OpenQAFinetuner, finetune
from realm.index import SparseIndex, open_index
from realm.index.hybrid import HybridIndex
from realm.index.sparse import build_sparse_index
from realm.pipeline import Pipeline
from tests.test_serve import CASE, QUESTIONS, build_corpora, make_store, serving

pytest.importorskip("bm25s")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hybrid")
    paths = build_corpora(root)
    for name in ("a", "b"):
        build_sparse_index(paths[f"store_{name}"], root / f"bm25_{name}", progress=False)
        paths[f"bm25_{name}"] = root / f"bm25_{name}"
    return paths


@pytest.fixture(scope="module")
def hybrid(corpora) -> Pipeline:
    return Pipeline.from_pretrained(CASE, corpora["store_a"], corpora["index_a"], sparse=corpora["bm25_a"], k=3)


def fused_ids(pipeline: Pipeline, questions: list[str], k: int) -> list[list[int]]:
    """The blocks the hybrid index itself chooses for the questions' embeddings and strings."""
    encoded = pipeline.tokenizer(questions, padding=True, truncation=True, max_length=pipeline.max_question_length,
                                 return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        query = pipeline.embedder(**encoded).projected_score
    return pipeline.index.search(query, k, texts=questions).ids.tolist()


def test_pipeline_retrieves_with_the_fused_blocks(hybrid, corpora) -> None:
    assert isinstance(hybrid.index, HybridIndex)
    assert hybrid.retrieval() == {"mode": "hybrid", "fusion": "weighted", "depth": 100, "weight": 0.5}
    expected = fused_ids(hybrid, QUESTIONS, 3)
    retrieved = hybrid.retrieve(QUESTIONS, 3)
    assert retrieved.block_ids.tolist() == expected
    for answer, ids in zip(hybrid.ask(QUESTIONS), expected, strict=True):
        assert [e.block_id for e in answer.evidence] == ids
    # The blocks are weighed by the embedder's own logits, as with the dense index.
    dense = open_index(corpora["index_a"])
    with torch.no_grad():
        query = hybrid.embedder(**hybrid.tokenizer(QUESTIONS, padding=True, return_tensors="pt")).projected_score
    vectors = dense.reconstruct(retrieved.block_ids)  # [B, K, D]
    torch.testing.assert_close(retrieved.retrieval_logits, torch.einsum("bkd,bd->bk", vectors, query), atol=1e-5, rtol=0)
    # BM25 decides when it weighs most: "old church" has its words in block 7 only.
    bm25_heavy = Pipeline.from_pretrained(CASE, corpora["store_a"], corpora["index_a"], sparse=corpora["bm25_a"],
                                          weight=1000.0, k=3)  # fmt: skip
    assert bm25_heavy.retrieve(["old church"], 1).block_ids.tolist() == [[7]]
    rrf = Pipeline.from_pretrained(CASE, corpora["store_a"], corpora["index_a"], sparse=corpora["bm25_a"], fusion="rrf")
    assert rrf.retrieval() == {"mode": "hybrid", "fusion": "rrf", "depth": 100, "k0": 60.0}
    assert rrf.retrieve(QUESTIONS, 3).block_ids.tolist() == fused_ids(rrf, QUESTIONS, 3)


def test_a_sparse_index_of_another_store_is_refused_on_every_path(corpora, tmp_path, capsys) -> None:
    store_a = BlockStore.open(corpora["store_a"])
    # Another store of the same size (its texts changed): refused by fingerprint; of another size: by count.
    texts = [f"{t} again" for t in store_a.texts(range(len(store_a)))]
    make_store(tmp_path / "store_c", texts, RealmTokenizerFast.from_pretrained(CASE))
    build_sparse_index(tmp_path / "store_c", tmp_path / "bm25_c", progress=False)
    refusals = (("bm25_c", "another block store"), ("bm25_b", "has 5 blocks but the store has 8"))
    for name, message in refusals:
        path = tmp_path / name if name == "bm25_c" else corpora[name]
        with pytest.raises(ValueError, match=f"{message}.*realm index build-sparse --store"):
            Pipeline.from_pretrained(CASE, store_a, corpora["index_a"], sparse=path)
        opened = SparseIndex.open(path)  # opened without a store: checked when it meets one
        with pytest.raises(ValueError, match="another block store.*realm index build-sparse --store"):
            Pipeline.from_pretrained(CASE, store_a, corpora["index_a"], sparse=opened)
        if len(opened) == len(store_a):  # a HybridIndex built by hand, handed to Pipeline or to fine-tuning
            hybrid = HybridIndex(open_index(corpora["index_a"]), opened)
            base = Pipeline.from_pretrained(CASE, store_a, corpora["index_a"])
            with pytest.raises(ValueError, match="another block store"):
                Pipeline(base.embedder, base.reader, store_a, hybrid)
            with pytest.raises(ValueError, match="another block store"):
                OpenQAFinetuner(base.embedder, base.reader, store_a, hybrid, base.tokenizer, 4, 2, 24)
        common = ["--model", str(CASE), "--store", str(corpora["store_a"]), "--index", str(corpora["index_a"])]
        assert main(["ask", "old church", *common, "--sparse", str(path)]) == 2
        assert message in capsys.readouterr().err
        # Fine-tuning's candidate search opens it through the same check.
        config = FinetuneConfig(model=str(CASE), store=str(corpora["store_a"]), index=str(corpora["index_a"]),
                                sparse=str(path), train=str(tmp_path / "train.jsonl"), output_dir=str(tmp_path / name))  # fmt: skip
        (tmp_path / "train.jsonl").write_text(json.dumps({"question": "old church", "answer": ["notre dame"]}) + "\n")
        with pytest.raises(ValueError, match=message):
            finetune(config)


def test_ask_and_evaluate_commands_use_the_hybrid(hybrid, corpora, tmp_path, capsys) -> None:
    common = ["--model", str(CASE), "--store", str(corpora["store_a"]), "--index", str(corpora["index_a"]),
              "--sparse", str(corpora["bm25_a"]), "--k", "3"]  # fmt: skip
    assert main(["ask", "old church", *common, "--json"]) == 0
    captured = capsys.readouterr()
    assert "hybrid retrieval" in captured.err
    got = json.loads(captured.out)
    assert got == hybrid.ask("old church")[0].to_dict()

    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": ["paris"]}) + "\n" for q in QUESTIONS))
    out, summary = tmp_path / "pred.jsonl", tmp_path / "summary.json"
    args = ["evaluate", "--data", str(data), *common, "--recall-k", "1", "5", "--out", str(out), "--summary",
            str(summary), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = read_predictions_jsonl(out)
    assert [r["retrieved"] for r in rows] == fused_ids(hybrid, QUESTIONS, 5)
    assert [r["probability"] for r in rows] == pytest.approx([a.probability for a in hybrid.ask(QUESTIONS)], abs=1e-6)
    written = json.loads(summary.read_text())
    assert written["reliability"]["count"] == 4 and len(written["reliability"]["bins"]) == 10
    assert "calibration error (ECE)" in printed and "answer probability against exact match" in printed


def test_serve_reports_and_keeps_hybrid_retrieval(hybrid, corpora) -> None:
    with serving(hybrid, allow_reload=True) as url, httpx.Client(base_url=url, timeout=60) as client:
        health = client.get("/health").json()
        assert health["retrieval"] == {"mode": "hybrid", "fusion": "weighted", "depth": 100, "weight": 0.5}
        (answer,) = client.post("/ask", json={"question": "old church"}).json()["answers"]
        assert answer == hybrid.ask("old church")[0].to_dict()
        # A store the server's BM25 index was not built from is refused; the old corpus keeps serving.
        r = client.post("/reload", json={"store": str(corpora["store_b"]), "index": str(corpora["index_b"])})
        assert r.status_code == 409 and "BM25" in r.json()["error"] and r.json()["field"] == "store"
        r = client.post("/reload", json={"store": str(corpora["store_a"]), "index": str(corpora["index_a"])})
        assert r.status_code == 200 and client.get("/health").json()["retrieval"]["mode"] == "hybrid"
        assert client.post("/ask", json={"question": "old church"}).json()["answers"][0] == answer
