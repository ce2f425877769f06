"""Sparse (BM25) index: scores against the formula written out, ties and missing hits, save/open without
pickle, the refusal of another store's index, and `realm index build-sparse`."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from realm import RealmTokenizerFast
from realm.cli import main
from realm.corpus import Block, BlockStore
from realm.index import SparseConfig, SparseIndex
from tests.conftest import REFERENCE

DOCUMENTS = [
    ("Jupiter", "Jupiter is the fifth planet from the Sun and the largest in the Solar System."),
    ("Mars", "Mars is the fourth planet from the Sun. It is a rocky planet with a thin atmosphere."),
    ("Mona Lisa", "The Mona Lisa is a portrait painting by Leonardo da Vinci, painted in Florence."),
    ("Leonardo da Vinci", "Leonardo was an Italian painter, engineer and scientist who painted portraits."),
    ("Paris", "Paris is the capital and largest city of France, on the river Seine."),
    ("Seine", "The Seine is a river in northern France that flows through Paris to the sea."),
    ("Florence", "Florence is a city in Italy, the capital of Tuscany, home of many painters."),
    ("Saturn", "Saturn is the sixth planet from the Sun, known for its rings of ice."),
    ("", "And the of to is."),  # no title and stop words only: no BM25 token at all
]
QUESTIONS = ["which planet is the fifth from the sun?", "who painted the mona lisa", "rivers of France",
             "planets planets rings", "zzz unknown words"]  # fmt: skip


def make_store(path: Path, documents: list[tuple[str, str]]) -> BlockStore:
    tokenizer = RealmTokenizerFast.from_pretrained(REFERENCE / "tokenizer" / "fast")
    blocks = [
        Block(title, text, tokenizer(title, add_special_tokens=False).input_ids,
              tokenizer(text, add_special_tokens=False).input_ids, doc_id=i)
        for i, (title, text) in enumerate(documents)
    ]  # fmt: skip
    return BlockStore.create(path, blocks, tokenizer)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> BlockStore:
    return make_store(tmp_path_factory.mktemp("hybrid") / "store", DOCUMENTS)


# ---------------------------------------------------------------------------------------------------------
# BM25 against the formula.


def brute_force_bm25(docs: list[list[str]], query: list[str], k1: float, b: float) -> list[float]:
    """Lucene BM25 written out: sum over query tokens of idf * tf / (tf + k1 (1 - b + b |d| / avgdl))."""
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    df = Counter(t for d in docs for t in set(d))
    scores = []
    for d in docs:
        tf = Counter(d)
        total = 0.0
        for t in query:
            if tf[t]:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                total += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
        scores.append(total)
    return scores


def our_tokens(text: str, stopwords: set[str], stem=None) -> list[str]:
    words = [w for w in re.findall(r"\b\w\w+\b", text.lower()) if w not in stopwords]
    return [stem(w) for w in words] if stem else words


@pytest.mark.parametrize("stemmer", [None, "english"])
def test_bm25_scores_equal_the_formula(store, stemmer) -> None:
    k1, b = 1.2, 0.6  # not bm25s's defaults: the settings must reach the scorer
    index = SparseIndex.build(store, SparseConfig(k1=k1, b=b, stemmer=stemmer), progress=False)
    stopwords = set(index.tokenization["stopwords"])
    assert {"the", "is", "and", "of"} <= stopwords
    stem = None
    if stemmer:
        import Stemmer

        stem = Stemmer.Stemmer("english").stemWord
    docs = [our_tokens(f"{t}. {x}" if t else x, stopwords, stem) for t, x in zip(store.titles(range(len(store))),
                                                                     store.texts(range(len(store))), strict=True)]  # fmt: skip
    assert docs[-1] == []
    got = index.scores(QUESTIONS)  # [B, N]
    for row, question in zip(got.tolist(), QUESTIONS, strict=True):
        expected = brute_force_bm25(docs, our_tokens(question, stopwords, stem), k1, b)
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-6)
    if stemmer:  # "planets" and "planet" are one term only when stemming
        assert got[3, 0] > 0
    else:
        assert got[3, 0] == 0


def test_search_text_orders_ties_and_marks_blocks_without_a_shared_token(store) -> None:
    index = SparseIndex.build(store, progress=False)
    result = index.search_text(QUESTIONS, k=len(store) + 5)  # clamped to N
    assert result.ids.shape == (len(QUESTIONS), len(store)) and result.ids.dtype == torch.int64
    scores = index.scores(QUESTIONS)
    for b in range(len(QUESTIONS)):
        matched = [i for i in range(len(store)) if scores[b, i] > 0]
        expected = sorted(matched, key=lambda i: (-scores[b, i].item(), i))  # best first, ties lower id
        assert result.ids[b, : len(matched)].tolist() == expected
        assert (result.ids[b, len(matched) :] == -1).all() and torch.isinf(result.scores[b, len(matched) :]).all()
    assert (result.ids[-1] == -1).all()  # no token of "zzz unknown words" is in the corpus
    assert store.titles(result.ids[0, :1].tolist()) == ["Jupiter"]
    assert store.titles(result.ids[1, :1].tolist()) == ["Mona Lisa"]
    assert index.search_text([], 3).ids.shape == (0, 3)
    with pytest.raises(TypeError, match="list of strings"):
        index.search_text("one question", 3)


# ---------------------------------------------------------------------------------------------------------
# Save, open, refusal.


def test_save_open_round_trip_without_pickle(store, tmp_path) -> None:
    index = SparseIndex.build(store, SparseConfig(stemmer="english"), progress=False)
    out = tmp_path / "bm25"
    index.save(out, extra={"store": str(store.path)})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "bm25" and manifest["count"] == len(store)
    assert manifest["store_fingerprint"] == store.fingerprint
    assert manifest["tokenization"]["stemmer"] == "english" and "the" in manifest["tokenization"]["stopwords"]
    assert manifest["bm25"] == {"k1": 1.5, "b": 0.75, "method": "lucene"}
    for npy in out.glob("*.npy"):  # plain numeric arrays: loading them needs no pickle
        assert np.load(npy, allow_pickle=False).dtype.kind in "iuf"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left

    opened = SparseIndex.open(out, store)
    before, after = index.search_text(QUESTIONS, 4), opened.search_text(QUESTIONS, 4)
    assert torch.equal(before.ids, after.ids) and torch.equal(before.scores, after.scores)

    SparseIndex.build(store, SparseConfig(stemmer=None), progress=False).save(out)  # replaces it
    assert SparseIndex.open(out).tokenization["stemmer"] is None
    (tmp_path / "dense").mkdir()
    (tmp_path / "dense" / "embeddings.npy").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a sparse index"):
        index.save(tmp_path / "dense")
    with pytest.raises(FileNotFoundError, match="realm index build-sparse"):
        SparseIndex.open(tmp_path / "nothing")


def test_sparse_index_from_another_store_is_refused(store, tmp_path) -> None:
    out = tmp_path / "bm25"
    SparseIndex.build(store, progress=False).save(out)
    other = make_store(tmp_path / "other", DOCUMENTS[:-1] + [("Venus", "Venus is the second planet.")])
    assert len(other) == len(store)  # same count: only the fingerprint tells them apart
    with pytest.raises(ValueError, match=re.escape(f"rebuild it with: realm index build-sparse --store {other.path} --out {out}")):
        SparseIndex.open(out, other)
    shorter = make_store(tmp_path / "shorter", DOCUMENTS[:3])
    with pytest.raises(ValueError, match=r"has 9 blocks but the store has 3; rebuild it with"):
        SparseIndex.open(out, shorter)


def test_cli_build_sparse(store, tmp_path, capsys) -> None:
    out = tmp_path / "bm25"
    assert main(["index", "build-sparse", "--store", str(store.path), "--out", str(out), "--no-stem", "--no-progress"]) == 0
    assert f"{out}: BM25 over 9 blocks (no stemming)" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenization"]["stemmer"] is None and manifest["store"] == str(store.path.resolve())
    assert SparseIndex.open(out, store).search_text(["mona lisa"], 1).ids.tolist() == [[2]]


def test_a_failed_save_leaves_the_old_index(store, tmp_path, monkeypatch) -> None:
    out = tmp_path / "bm25"
    index = SparseIndex.build(store, progress=False)
    index.save(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_save(directory, **kwargs) -> None:
        (Path(directory) / "data.csc.index.npy").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(index.bm25, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        index.save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bm25"]  # the temporary directory is gone
