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
