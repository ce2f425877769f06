"""Smoke test of the model benchmark script (no timing assertions)."""

from __future__ import annotations

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
