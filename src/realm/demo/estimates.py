"""How long a demo stage will take: per-unit costs measured once, times this run's units.

The costs come from one full first run on this project's 2-core CPU, idle (README "Quick start": index 144 s,
reader 294 s, evaluation 62 s; the retriever stage's 107 s from an earlier run that trained it). A stage's time is taken as linear in its units (articles,
blocks embedded, blocks read in training, questions answered); another machine, load or thread count changes it, so the result
is an estimate and says what it was measured on. On a busy machine (load average over 1.5 x the CPUs) it
says so: torch's threads then wait for each other and a stage can take many times its estimate (a `--quick`
retriever stage estimated at 18 s took 333 s at load 9 on 2 cores).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

MEASURED_ON = "a 2-core CPU"


@dataclass(frozen=True)
class StageCost:
    """`seconds` measured for `units` units (of `unit`, described for people by `per`)."""

    seconds: float
    units: float
    unit: str
    per: str


# Measured with the full demo's defaults: 10,033 articles, 150 reader steps x 10 questions x 2 blocks, 300 held-out
# questions. Re-measure the README's figures -> update these with them.
COSTS = {
    # The retriever stage, when it trains (retriever_steps > 0; measured with 400 steps over 64-wordpiece
    # blocks), runs the frozen trunk once over every block and training/dev question (the head's distillation
    # steps are cheap), so it scales with the articles.
    "retriever": StageCost(107.0, 10_033, "article", "10,033 articles"),
    "index": StageCost(147.0, 10_033, "block", "10,033 blocks"),
    "reader": StageCost(298.0, 150 * 10 * 2, "block read", "150 steps of 10 questions x 2 blocks"),
    "evaluate": StageCost(65.0, 300, "question", "300 questions"),
}


@dataclass(frozen=True)
class StageEstimate:
    """A stage about to run: its estimated seconds, the units it will process and what that rests on."""

    name: str
    seconds: float
    units: float
    unit: str
    basis: str
    resuming: bool = False
    load: float | None = None  # the machine's 1-minute load average when the stage starts
    cpus: int = 1

    def describe(self) -> str:
        """E.g. `~3.5 min (estimate: 210 s for 150 steps of 32 pairs on a 2-core CPU; 4,800 pairs here)`."""
        amount = f"{self.seconds:.0f} s" if self.seconds < 90 else f"{self.seconds / 60:.1f} min"
        bound = "at most " if self.resuming else "~"
        text = f"{bound}{amount} (estimate: {self.basis}; {self.units:,.0f} {self.unit}s here)"
        if self.load is not None and self.load > 1.5 * self.cpus:
            text += f"; the machine is busy (load {self.load:.1f} on {self.cpus} CPUs): expect much longer"
        return text


def stage_units(name: str, config: Any, articles: int) -> float | None:
    """The units stage `name` processes under a `DemoConfig`, for a corpus of `articles` articles."""
    if name == "retriever":  # nothing to run when it keeps the imported head
        return articles if config.retriever_steps > 0 else None
    if name == "index":
        return articles  # one block per article
    if name == "reader":
        return config.reader_steps * config.reader_batch_size * config.reader_train_blocks
    if name == "evaluate":  # every held-out question when eval_questions is 0 (fewer: some are dropped)
        held_out = round(config.holdout_fraction * articles)
        return min(config.eval_questions, held_out) if config.eval_questions else held_out
    return None


def estimate(
    name: str, config: Any, articles: int, resuming: bool = False, load: float | None = None
) -> StageEstimate | None:
    """The estimate for stage `name`, or None for the short stages that have no measured cost.

    Args:
        resuming: the stage's directory holds a killed run's work (the estimate is then an upper bound).
        load: the machine's load average (`load_average()`), to warn when it is busy.
    """
    cost, units = COSTS.get(name), stage_units(name, config, articles)
    if cost is None or units is None:
        return None
    basis = f"{cost.seconds:.0f} s for {cost.per} on {MEASURED_ON}"
    seconds = cost.seconds * units / cost.units
    return StageEstimate(name, seconds, units, cost.unit, basis, resuming, load, os.cpu_count() or 1)


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS does not report one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
