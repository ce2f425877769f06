"""`metrics.jsonl` (and TensorBoard) for both training loops, kept consistent across a kill and a resume."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class MetricsLog:
    """`metrics.jsonl` rows (and TensorBoard scalars when `tensorboard` is installed), main process only.

    On resume, rows after the checkpoint's step (written before the kill, the last one perhaps cut short)
    are dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(self, output_dir: Path, step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        path = _mkdir(output_dir) / METRICS_NAME
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if step and _row_step(line) <= step]
            path.write_text("".join(line + "\n" for line in kept))
        self.file = open(path, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=step or None)
        except ImportError:
            logger.info("TensorBoard logging is off (pip install tensorboard to turn it on)")

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("kind", "step") and isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{row['kind']}/{key}", value, row["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()


def _row_step(line: str) -> float:
    """A metrics row's step; infinity for a line a kill cut short (dropped on resume)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf
