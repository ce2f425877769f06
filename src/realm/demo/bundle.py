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
                                       max_question_length=pipeline.max_question_length, **hybrid))  # fmt: skip
