"""The demo's hybrid retrieval and its bundle: the `sparse` stage (BM25 of the store) and `pipeline.json`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def sparse_stage(
    stages: Any, store_dir: Path, blocks_fp: str, progress: bool
) -> tuple[Path | None, str | None]:
    """Build the store's BM25 index (the sparse half of the demo's hybrid retrieval); without bm25s the demo
    retrieves with the dense index alone, and says so."""
    from realm.index.sparse import build_sparse_index, import_bm25s

    try:
        import_bm25s()
    except ImportError as err:
        logger.warning("dense retrieval only: %s", err)
        return None, None

    def sparse(directory: Path) -> dict[str, Any]:
        index = build_sparse_index(store_dir, directory / "bm25", progress=progress)
        return {"blocks": len(index)}

    sparse_dir, _, sparse_fp = stages.run("sparse", {"blocks": blocks_fp}, sparse)
    return sparse_dir / "bm25", sparse_fp


def write_demo_bundle(
    cache: Path, pipeline: Any, model: Path, store: Path, index: Path, sparse: Path | None
) -> None:
    """`cache/pipeline.json`, naming what the demo's pipeline answers with (written atomically)."""
    from realm.bundle import PipelineBundle, write_bundle

    retrieval = pipeline.retrieval()
    hybrid = {k: retrieval[k] for k in ("fusion", "depth", "weight") if k in retrieval}
    write_bundle(cache, PipelineBundle(model, store, index, sparse, k=pipeline.k, threshold=pipeline.threshold,
                                       temperature=pipeline.temperature,
                                       max_question_length=pipeline.max_question_length, **hybrid))  # fmt: skip


def calibrate(pipeline: Any, dev: list[dict], test: list[dict], batch_size: int = 16) -> dict[str, Any]:
    """Fit the pipeline's answer temperature on the dev questions whose answer is in their gold block (sets
    `pipeline.temperature`), then report the reliability of answer probabilities on the test questions of
    that kind (never used for fitting) at T = 1 and at the fitted T."""
    from realm.eval.calibration import fit_temperature, reliability_table
    from realm.eval.metrics import exact_match

    def masses(rows: list[dict]) -> list[tuple[Any, bool]]:
        out = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            found = pipeline.answer_masses([r["question"] for r in chunk])
            out += [(mass, exact_match(answer.text, r["answer"])) for (answer, mass), r in zip(found, chunk, strict=True)]
        return out

    dev_cases = masses([r for r in dev if r.get("answer_in_block")])
    if not dev_cases:
        return {"temperature": pipeline.temperature}
    temperature, losses = fit_temperature([m.probability for m, _ in dev_cases], [c for _, c in dev_cases])
    pipeline.temperature = temperature
    report: dict[str, Any] = {"temperature": temperature, "dev_count": len(dev_cases), "log_loss": losses}
    test_cases = masses([r for r in test if r.get("answer_in_block")])
    if test_cases:
        right = [c for _, c in test_cases]
        for name, t in (("test_reliability_t1", 1.0), ("test_reliability", temperature)):
            report[name] = reliability_table([m.probability(t) for m, _ in test_cases], right, bins=5).to_dict()
    return report
