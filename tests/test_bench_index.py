"""Smoke test of the index benchmark script (no timing assertions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_index.py"


def test_bench_index_quick(tmp_path: Path) -> None:
    output = tmp_path / "bench_index.txt"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--threads",
            "1",
            "--output",
            str(output),
            "--tmp",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = output.read_text()
    for heading in (
        "## Memory bandwidth",
        "## Kernels",
        "## Exact top-10",
        "## ANN recall@10",
        "## A 100,000 x 128",
        "## Targets",
    ):
        assert heading in text, f"no {heading!r} section:\n{result.stdout}"
    for row in ("ExactIndex (float32)", "FAISS IndexFlatIP", "port einsum + topk", "HNSW16", "IVF64,Flat"):
        assert any(line.startswith(row) for line in text.splitlines()), f"no table row {row!r}:\n{text}"
    assert list(tmp_path.glob("realm-bench-index-*")) == []  # the large index is deleted
