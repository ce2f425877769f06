"""`pipeline.json`: the bundle round-trips, `Pipeline.from_pretrained(directory)` loads it, and `realm ask`,
`realm evaluate` and `realm serve` use the last demo's bundle (under $REALM_CACHE/demo) when given no paths."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from realm.bundle import BUNDLE_NAME, PipelineBundle, read_bundle, write_bundle
from realm.cli import main
from realm.index.sparse import build_sparse_index
from realm.pipeline import Pipeline
from tests.test_serve import CASE, QUESTIONS, REPO, build_corpora, free_port, wait_for

pytest.importorskip("bm25s")


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory) -> Path:
    """A cache directory laid out as `realm demo`'s, with its bundle: the store, index and BM25 index inside it,
    the model outside (an absolute path)."""
    cache = tmp_path_factory.mktemp("cache") / "demo"
    corpora = build_corpora(tmp_path_factory.mktemp("corpora"))
    shutil.copytree(corpora["store_a"], cache / "blocks" / "store")
    shutil.copytree(corpora["index_a"], cache / "index" / "index")
    build_sparse_index(cache / "blocks" / "store", cache / "sparse" / "bm25", progress=False)
    bundle = PipelineBundle(CASE, cache / "blocks" / "store", cache / "index" / "index", cache / "sparse" / "bm25",
                            k=3, weight=0.7, threshold=0.05, max_question_length=32)  # fmt: skip
    write_bundle(cache, bundle)
    return cache


def test_bundle_round_trips_with_relative_paths(demo_cache, tmp_path) -> None:
    record = json.loads((demo_cache / BUNDLE_NAME).read_text())
    assert record["store"] == "blocks/store" and record["index"] == "index/index" and record["sparse"] == "sparse/bm25"
    assert record["model"] == str(CASE.resolve())  # outside the bundle's directory: absolute
    assert {k: record[k] for k in ("k", "fusion", "depth", "weight", "threshold", "max_question_length")} == {
        "k": 3, "fusion": "weighted", "depth": 100, "weight": 0.7, "threshold": 0.05, "max_question_length": 32
    }  # fmt: skip
    bundle = read_bundle(demo_cache)
    assert bundle == PipelineBundle(CASE.resolve(), demo_cache / "blocks" / "store", demo_cache / "index" / "index",
                                    demo_cache / "sparse" / "bm25", k=3, weight=0.7, threshold=0.05,
                                    max_question_length=32)  # fmt: skip
    write_bundle(tmp_path / "again", bundle)  # written elsewhere: every path is outside, so absolute
    assert read_bundle(tmp_path / "again") == bundle
    # Moved as a whole, it still loads: the paths inside are relative.
    moved = tmp_path / "moved"
    shutil.copytree(demo_cache, moved)
    assert read_bundle(moved).store == moved / "blocks" / "store"


def test_pipeline_from_a_bundle_directory(demo_cache) -> None:
    pipeline = Pipeline.from_pretrained(demo_cache)
    explicit = Pipeline.from_pretrained(CASE, demo_cache / "blocks" / "store", demo_cache / "index" / "index",
                                        sparse=demo_cache / "sparse" / "bm25", weight=0.7, k=3, threshold=0.05,
                                        max_question_length=32)  # fmt: skip
    assert pipeline.retrieval() == {"mode": "hybrid", "fusion": "weighted", "depth": 100, "weight": 0.7}
    assert (pipeline.k, pipeline.threshold, pipeline.max_question_length) == (3, 0.05, 32)
    assert [a.to_dict() for a in pipeline.ask(QUESTIONS)] == [a.to_dict() for a in explicit.ask(QUESTIONS)]
    # Keyword arguments override the bundle's settings; sparse=False retrieves with the dense index alone.
    dense = Pipeline.from_pretrained(demo_cache, sparse=False, threshold=0.9, k=2)
    assert dense.retrieval() == {"mode": "dense"} and (dense.threshold, dense.k) == (0.9, 2)


def test_bad_bundles_are_refused_naming_the_key(demo_cache, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="realm demo"):
        read_bundle(tmp_path)
    with pytest.raises(ValueError, match="no pipeline.json"):
        Pipeline.from_pretrained(tmp_path)
    record = json.loads((demo_cache / BUNDLE_NAME).read_text())
    for change, message in (({"nprobe": 3}, "unknown key.*nprobe"), ({"fusion": "max"}, "fusion"),
                            ({"index": None}, "index"), ({"version": 9}, "version"), ({"threshold": 2}, "threshold")):  # fmt: skip
        (tmp_path / BUNDLE_NAME).write_text(json.dumps({**record, **change}))
        with pytest.raises(ValueError, match=message):
            read_bundle(tmp_path)


def test_cli_uses_the_last_demos_bundle(demo_cache, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("REALM_CACHE", str(demo_cache.parent))
    expected = Pipeline.from_pretrained(demo_cache).ask("old church")[0]
    assert main(["ask", "old church", "--json"]) == 0
    captured = capsys.readouterr()
    assert f"using the pipeline bundle {demo_cache / BUNDLE_NAME}" in captured.err and "hybrid retrieval" in captured.err
    assert json.loads(captured.out) == expected.to_dict()
    assert main(["ask", "old church", "--bundle", str(demo_cache), "--threshold", "1"]) == 0
    assert "A: not sure" in capsys.readouterr().out

    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": ["paris"]}) + "\n" for q in QUESTIONS))
    assert main(["evaluate", "--data", str(data), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "using the pipeline bundle" in captured.err and "exact match" in captured.out

    # No bundle: the error says what to do.
    monkeypatch.setenv("REALM_CACHE", str(tmp_path / "empty"))
    assert main(["ask", "old church"]) == 2
    assert "run `realm demo` first, or pass --model, --store and --index" in capsys.readouterr().err
    assert main(["ask", "old church", "--model", str(CASE)]) == 2
    assert "--store and --index missing" in capsys.readouterr().err


def test_serve_uses_the_last_demos_bundle(demo_cache) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "REALM_CACHE": str(demo_cache.parent)}
    process = subprocess.Popen([sys.executable, "-m", "realm.cli", "serve", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, what="the server")
        health = httpx.get(f"{url}/health").json()
        assert health["retrieval"]["mode"] == "hybrid" and health["threshold"] == 0.05 and health["k"] == 3
        assert health["corpus"] == {"name": "store", "blocks": 8} and health["index"]["name"] == "index"
        r = httpx.post(f"{url}/ask", json={"question": "old church"}, timeout=60)
        assert r.status_code == 200 and r.json()["threshold"] == 0.05
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert f"using the pipeline bundle {demo_cache / BUNDLE_NAME}" in output, output
