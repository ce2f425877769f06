"""Smoke test of the model benchmark script (no timing assertions)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_models.py"
CLASSES = ("RealmEmbedder", "RealmScorer", "RealmKnowledgeAugEncoder", "RealmReader", "RealmForOpenQA")

# Run the script as __main__ with `import transformers` failing, whether or not it is installed.
WITHOUT_TRANSFORMERS = (
    "import runpy, sys; sys.modules['transformers'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_bench_models_quick() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TRANSFORMERS, str(SCRIPT), "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any("transformers is not importable" in line for line in lines), result.stdout
    for name in CLASSES:
        assert any(line.split()[:1] == [name] for line in lines), f"no table line for {name}:\n{result.stdout}"


PRETRAIN_SCRIPT = REPO / "benchmarks" / "bench_pretrain.py"
PRETRAIN_PARTS = ("data", "search", "re-embedding", "encoder forward", "rest of forward", "backward", "optimizer",
                  "refresh")  # fmt: skip


def test_bench_pretrain_quick() -> None:
    result = subprocess.run(
        [sys.executable, str(PRETRAIN_SCRIPT), "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("steps/s: ") for line in lines), result.stdout
    for part in PRETRAIN_PARTS:
        shares = [line for line in lines if line.startswith(part) and line.rstrip().endswith("%")]
        assert shares, f"no share line for {part}:\n{result.stdout}"
    assert any(line.startswith("ratio ours / port-style step time: ") for line in lines), result.stdout
    assert any(line.startswith("agreement (eval mode)") for line in lines), result.stdout


E2E_SCRIPT = REPO / "benchmarks" / "bench_e2e.py"


def test_bench_e2e_on_a_tiny_bundle_without_the_port(tmp_path: Path) -> None:
    """The end-to-end benchmark on the fixture's tiny OpenQA model (no port interpreter, no server): it runs the
    variants, measures their dev quality against float32 and writes the JSON with the issue's keys."""
    import json

    from realm import RealmForOpenQA, RealmRetriever, RealmTokenizerFast
    from realm.bundle import PipelineBundle, write_bundle
    from realm.corpus import Block, BlockStore
    from realm.index import write_embeddings
    from tests.conftest import REFERENCE

    case = REFERENCE / "openqa_eval"
    tokenizer = RealmTokenizerFast.from_pretrained(case)
    texts = json.loads((case / "block_records.json").read_text())
    blocks = [Block(f"t{i}", t, [], tokenizer(t, add_special_tokens=False).input_ids) for i, t in enumerate(texts)]
    store = BlockStore.create(tmp_path / "store", blocks, tokenizer)
    model = RealmForOpenQA.from_pretrained(case, retriever=RealmRetriever(store, tokenizer))
    write_embeddings(tmp_path / "index", model.block_emb)
    write_bundle(tmp_path, PipelineBundle(case, tmp_path / "store", tmp_path / "index", k=3, max_question_length=16))
    out = tmp_path / "e2e.json"
    command = [sys.executable, str(E2E_SCRIPT), "--bundle", str(tmp_path), "--port-python", str(tmp_path / "absent"),
               "--threads", "1", "--questions", "12", "--latency-questions", "2", "--ask-batch", "5", "--no-serve",
               "--variants", "fp32", "int8", "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the port's part is skipped" in result.stdout
    report = json.loads(out.read_text())
    assert report["command"].startswith("python benchmarks/bench_e2e.py --bundle")
    assert set(report["variants"]) == {"fp32", "int8"} and report["questions"] == 12 and report["blocks"] == len(texts)
    fp32, int8 = report["variants"]["fp32"], report["variants"]["int8"]
    assert fp32["dev_quality"]["top5_overlap"] == 1.0 and fp32["index_quality_dev"]["top5_overlap"] == 1.0
    assert int8["dev_quality"]["top5_overlap"] == 1.0  # the fast mode's query tower is float32: same blocks
    assert int8["embedding_max_abs_diff_vs_fp32"] > 0  # the int8 corpus embedding did run
    assert report["fast_em_delta"] == int8["dev_quality"]["em"] - fp32["dev_quality"]["em"]
    assert "embed_speedup" not in report  # no port, no ratio


WIKI_SCRIPT = REPO / "benchmarks" / "pretrain_wiki.py"
# Leads of four sentences: the block holds the first ones, the later ones name what the first ones state.
WIKI_FACTS = [("Adam Smith", "Kirkcaldy", "1723"), ("ASEAN", "Jakarta", "1967"), ("Zorvath", "Quellin", "1802"),
              ("Brimholt", "Tarrow", "1911"), ("Osklund", "Vemmer", "1650"), ("Pranwick", "Dullow", "1777"),
              ("Gulmere", "Fexton", "1888"), ("Drovak", "Kivra", "1540"), ("Namsul", "Wepper", "1999"),
              ("Yadmox", "Trelby", "1320")]  # fmt: skip


def write_wiki_demo(root: Path) -> Path:
    """A `realm demo` cache's inputs, tiny: the corpus JSON, init/model (from a tiny BERT), retriever/embedder."""
    from realm.modeling.bert_import import init_from_bert
    from tests.test_bert_import import write_tiny_bert

    filler = "it was known for many things and people came from far away to see it"
    corpus, words = {}, set(filler.split()) | {"was", "founded", "in", "at", "the", "seat", "of", "is", "lies",
                                               "near", "since", "and", "who", "what", "where", "?"}  # fmt: skip
    for title, place, year in WIKI_FACTS:
        extract = (f"{title} was founded in {year} at {place}. {filler.capitalize()}. {filler.capitalize()}. "
                   f"The seat of {title} is {place}. {title} lies near {place} since {year}.")  # fmt: skip
        corpus[title] = {"title": title, "extract": extract, "description": "a thing", "topic": "Test"}
        words |= {w.lower() for w in f"{title} {place} {year}".split()}
    (root / "summaries.json").write_text(json.dumps(corpus))
    bert = write_tiny_bert(root / "bert", sorted(words), positions=160)
    init_from_bert(bert, root / "demo" / "init" / "model", seed=0)
    shutil.copytree(root / "demo" / "init" / "model" / "embedder", root / "demo" / "retriever" / "embedder")
    return root / "demo"


def test_pretrain_wiki_quick(tmp_path: Path) -> None:
    demo = write_wiki_demo(tmp_path)
    out = tmp_path / "result.json"
    command = [sys.executable, str(WIKI_SCRIPT), "--quick", "--demo-cache", str(demo), "--corpus-json",
               str(tmp_path / "summaries.json"), "--work-dir", str(tmp_path / "work"), "--output", str(out),
               "--heldout", "0.3", "--threads", "1", "--set", "block_seq_len=24", "query_seq_len=24",
               "joint_seq_len=48", "num_candidates=3", "refresh=sync", "freeze=query_embedder.realm.,encoder.realm.embeddings."]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(out.read_text())
    assert record["seeds"] == [0] and record["steps"] == 4
    assert record["data"]["blocks"] == len(WIKI_FACTS) and record["data"]["heldout_articles"] >= 1
    for arm in ("realm", "null"):
        (run,) = record["runs"][arm]
        assert 0 <= run["accuracy"] <= 1 and run["masked_tokens"] > 0 and run["last_train_row"]["step"] == 4
    assert record["realm_accuracy"] == record["runs"]["realm"][0]["accuracy"]
    assert record["null_accuracy"] == record["runs"]["null"][0]["accuracy"]
    assert record["dev_questions"] == 2 and 0 <= record["recall_at_5_before"] <= 1 and 0 <= record["recall_at_5_after"] <= 1
    assert record["config"]["num_candidates"] == 3 and record["command"].startswith("python benchmarks/pretrain_wiki.py --quick")
    # Both arms started from the shared reader warm start, scored at step 0 with and without retrieval.
    warm = record["warm_start"]
    assert warm["examples"] > 0 and warm["log"][-1]["step"] == 3 and warm["config"]["train_from"] == 1
    assert 0 <= warm["heldout_realm"]["accuracy"] <= 1 and warm["heldout_null"]["masked_tokens"] == run["masked_tokens"]
    assert all(Path(r["run_dir"], "pretrain_config.json").read_text().count("data/reader/encoder") == 1
               for arm in ("realm", "null") for r in record["runs"][arm])
    # The realm run refreshed its index (quick: every 2 steps) and its curves were drawn.
    rows = [json.loads(line) for line in Path(record["runs"]["realm"][0]["run_dir"], "metrics.jsonl").read_text().splitlines()]
    assert [r["index_step"] for r in rows if r["kind"] == "train"] == [0, 2, 2, 2]  # logged after the refresh
    assert (Path(record["runs"]["realm"][0]["run_dir"]) / "plots" / "utility.png").is_file()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
