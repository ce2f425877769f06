"""Curves of a training run: `metrics.jsonl` (`realm pretrain` or `realm finetune`) -> PNG files.

    plot_run("runs/realm", out_dir="runs/realm/plots")   # -> [Path("runs/realm/plots/loss.png"), ...]

One figure per quantity the run logged, against the step; figures whose keys the run did not log are not
drawn (a fine-tuning run has no retrieval utility, an ICT run no null-block accuracy):

    loss.png          training loss (pre-training: masked LM, or ICT; fine-tuning: retriever + reader)
    accuracy.png      pre-training: masked-token accuracy with retrieval (the marginal) vs the null block
                      alone; ICT: in-batch accuracy
    utility.png       retrieval utility: log-likelihood gain per masked token over the null block
    staleness.png     steps since the index in use was built (drops to 0 at each refresh)
    dev_recall.png    pre-training with `dev_questions`: the query tower's gold-article recall@k against each
                      new index; fine-tuning: its dev evaluations (rows of kind "eval": recall@k, EM)
    finetune.png      fine-tuning: how often the answer is among the retrieved / read blocks

matplotlib is an optional extra (`pip install 'realm-lm[plot]'`); it draws off-screen (the Agg backend).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from realm.train.metrics import METRICS_NAME

# figure name -> (title, y label, [(row kind, key, legend label)])
FIGURES: dict[str, tuple[str, str, list[tuple[str, str, str]]]] = {
    "loss": ("training loss", "loss", [("train", "loss", "loss"), ("train", "retriever_loss", "retriever"),
                                       ("train", "reader_loss", "reader")]),
    "accuracy": ("masked-token accuracy (training batches)", "accuracy",
                 [("train", "mlm_accuracy", "with retrieval"), ("train", "null_mlm_accuracy", "null block only"),
                  ("train", "accuracy", "accuracy")]),
    "utility": ("retrieval utility (log-likelihood gain per masked token)", "nats",
                [("train", "retrieval_utility", "retrieval utility")]),
    "staleness": ("index staleness", "steps since the index was built", [("train", "staleness", "staleness")]),
    "dev_recall": ("dev questions: gold-article recall (pre-training: at each index refresh), EM", "score",
                   [("train", f"dev_recall@{k}", f"recall@{k}") for k in (1, 5, 20)]
                   + [("eval", key, key) for key in ("recall@1", "recall@5", "recall@20", "exact_match")]),
    "finetune": ("answer found during fine-tuning", "share of questions",
                 [("train", "answer_retrieved", "in the retrieved blocks"), ("train", "answer_read", "in the read blocks")]),
}  # fmt: skip


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl` (or of the one in a run directory).

    Raises:
        FileNotFoundError: no such file, naming where it was looked for.
        ValueError: a line that is not a JSON object with an integer "step", naming the file and line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file; `realm pretrain` and `realm finetune` write one in their output_dir")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ValueError(f"{path}:{number}: expected a JSON object with an integer \"step\", got {line[:80]!r}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows (has the run logged a step yet?)")
    return rows


def _series(rows: Sequence[dict[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if row.get("kind", "train") == kind and isinstance(value, int | float) and not isinstance(value, bool):
            steps.append(row["step"])
            values.append(float(value))
    return steps, values


def plot_run(run: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, *, dpi: int = 110) -> list[Path]:
    """Draw the figures of `FIGURES` that the run's rows have data for; see the module doc.

    Args:
        run: a run directory (holding `metrics.jsonl`) or the file itself.
        out_dir: where to write the PNGs (default: `plots/` beside the metrics file).

    Returns:
        The PNG files written, in `FIGURES` order.
    """
    rows = read_metrics(run)
    run_path = Path(run)
    out = Path(out_dir) if out_dir is not None else (run_path if run_path.is_dir() else run_path.parent) / "plots"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'realm-lm[plot]'") from None
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (title, ylabel, lines) in FIGURES.items():
        series = [(label, *_series(rows, kind, key)) for kind, key, label in lines]
        series = [s for s in series if s[1]]
        if not series:
            continue
        figure, axes = plt.subplots(figsize=(6.4, 3.6))
        for label, steps, values in series:
            axes.plot(steps, values, label=label, marker="o" if len(steps) < 20 else None, linewidth=1.4)
        if name == "utility":
            axes.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        axes.set(title=title, xlabel="step", ylabel=ylabel)
        axes.grid(alpha=0.3)
        if len(series) > 1:
            axes.legend()
        figure.tight_layout()
        path = out / f"{name}.png"
        figure.savefig(path, dpi=dpi)
        plt.close(figure)
        written.append(path)
    return written
