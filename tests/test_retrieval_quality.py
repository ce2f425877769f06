"""Smoke test of benchmarks/retrieval_quality.py on a tiny store, embedder and index (the table's rows)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from realm.index.build import IndexBuildConfig, build_index
from tests.test_index_build import make_embedder
from tests.test_sparse import DOCUMENTS, make_store

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "retrieval_quality.py"


def test_retrieval_quality_table(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", DOCUMENTS)
    make_embedder(tmp_path / "embedder")
    build_index(store, tmp_path / "embedder", tmp_path / "index", IndexBuildConfig(max_length=64),
                store_fingerprint=store.fingerprint, special_ids=store.special_ids, progress=False)  # fmt: skip
    questions = tmp_path / "questions.jsonl"
    rows = [("which planet is the fifth from the sun?", "Jupiter"), ("who painted the mona lisa", "Mona Lisa"),
            ("the rings of saturn", "Saturn")]  # fmt: skip
    questions.write_text("".join(json.dumps({"question": q, "answer": ["x"], "title": t}) + "\n" for q, t in rows))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--store", str(store.path), "--questions", str(questions),
         "--embedder", str(tmp_path / "embedder"), "--index", str(tmp_path / "index"), "--label", "tiny",
         "--depths", "2", "5", "--weights", "0.3", "--ks", "1", "3", "--output", str(tmp_path / "table.md")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    table = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "retriever":
            table[cells[0]] = [float(c) for c in cells[1:]]
    expected = ["BM25, stemmed", "BM25, no stemming", "dense (tiny)"] + [
        f"hybrid {kind} (BM25, {stem}), depth {depth}, {param}"
        for stem in ("stemmed", "no stemming") for depth in (2, 5) for kind, param in (("RRF", "k0 60"), ("weighted", "w 0.3"))
    ]  # fmt: skip
    assert sorted(table) == sorted(expected)
    assert table["BM25, stemmed"][:2] == [1.0, 1.0]  # each question names words of its article only
    assert all(0 <= value <= 1 for values in table.values() for value in values[:2])
    assert "questions.jsonl: 3 questions" in (tmp_path / "table.md").read_text()
