"""`bench_e2e.py`'s ONNX variant: the bundle's towers exported with `realm.modeling.export` into the work
directory, then the same workloads run on them in onnxruntime (float32): the corpus embedded by the exported
block tower (`embed_blocks`), the questions answered by a `Pipeline` whose embedder and reader are the exported
graphs (`onnx_towers`), so tokenisation, search and the answer's post-processing are the PyTorch variant's.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from realm.modeling.export import OnnxQueryModule, export_onnx, load_onnx, onnx_towers


def missing() -> str | None:
    """Why the ONNX variant cannot run here (None: it can)."""
    absent = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    return f"{', '.join(absent)} not installed (pip install 'realm-lm[onnx]')" if absent else None


def export(model: Path, embedder_dir: Path, prefix: str, work: Path) -> tuple[Path, Path, float]:
    """Export the OpenQA model (query tower + reader) and the block tower; (model export, block tower export, s)."""
    started = time.perf_counter()
    model_out = export_onnx(model, work / "onnx_model").directory
    block_out = model_out if prefix else export_onnx(embedder_dir, work / "onnx_block_tower").directory
    return model_out, block_out, time.perf_counter() - started


def block_tower(directory: Path, threads: int) -> OnnxQueryModule:
    models = load_onnx(directory, threads)
    return OnnxQueryModule(models.query, models.config)


__all__ = ["block_tower", "export", "missing", "onnx_towers"]
