"""Calibration of answer probabilities: a reliability table and the expected calibration error.

    table = reliability_table([0.9, 0.2, 0.65], [True, False, True], bins=10)
    table.ece                      # sum over bins of (count / N) * |EM - mean probability|
    print(table.table())           # the CLI prints; this module never does

Bins are equal-width intervals of predicted probability, [i/n, (i+1)/n) for i < n - 1 and [1 - 1/n, 1] for
the last. In each: the questions that fell there, their mean predicted probability, and the share of them
answered right (exact match). A calibrated model has EM close to the mean probability in every bin;
ECE (Naeini et al. 2015; Guo et al. 2017) is the count-weighted mean of the gaps:

    ECE = sum over bins b of (n_b / N) * | EM_b - mean p_b |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

DEFAULT_BINS = 10


@dataclass(frozen=True)
class ReliabilityBin:
    """One interval [low, high) of predicted probability (the last one includes 1).

    Attributes:
        count: questions whose answer probability fell here.
        mean_probability: their mean predicted probability (None when empty).
        exact_match: the share of them answered right (None when empty).
    """

    low: float
    high: float
    count: int
    mean_probability: float | None
    exact_match: float | None


@dataclass(frozen=True)
class Reliability:
    """A reliability table over N questions, with its expected calibration error."""

    bins: tuple[ReliabilityBin, ...]
    count: int
    ece: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "ece": self.ece,
            "bins": [
                {
                    "low": b.low,
                    "high": b.high,
                    "count": b.count,
                    "mean_probability": b.mean_probability,
                    "exact_match": b.exact_match,
                }  # fmt: skip
                for b in self.bins
            ],
        }

    def table(self) -> str:
        """One line per bin (empty bins included): probability range, questions, mean probability, EM."""
        lines = [
            f"{'probability':<11}  {'questions':>9}  {'mean p':>6}  {'EM':>6}",
            f"{'-' * 11}  {'-' * 9}  {'-' * 6}  {'-' * 6}",
        ]
        for b in self.bins:
            mean = "-" if b.mean_probability is None else f"{b.mean_probability:.3f}"
            em = "-" if b.exact_match is None else f"{b.exact_match:.3f}"
            lines.append(f"{f'{b.low:.2f}-{b.high:.2f}':<11}  {b.count:>9,}  {mean:>6}  {em:>6}")
        lines.append(f"expected calibration error (ECE): {self.ece:.4f} over {self.count:,} questions")
        return "\n".join(lines)


def reliability_table(
    probabilities: Iterable[float], correct: Iterable[bool], bins: int = DEFAULT_BINS
) -> Reliability:
    """Bin predictions by probability; per bin the count, the mean probability and the observed EM; the ECE.

    Args:
        probabilities: each question's answer probability, in [0, 1].
        correct: whether each answer was right (same order and length).
        bins: equal-width bins over [0, 1].
    Raises:
        ValueError: no predictions, lengths that differ, a probability outside [0, 1], or bins < 1.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    pairs = list(zip(probabilities, correct, strict=True))
    if not pairs:
        raise ValueError("no predictions to calibrate")
    counts, sums, rights = [0] * bins, [0.0] * bins, [0] * bins
    for i, (p, right) in enumerate(pairs):
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"prediction {i}: probability {p} is outside [0, 1]")
        b = min(int(p * bins), bins - 1)  # 1.0 goes to the last bin
        counts[b] += 1
        sums[b] += p
        rights[b] += bool(right)
    table, ece = [], 0.0
    for b in range(bins):
        mean = sums[b] / counts[b] if counts[b] else None
        em = rights[b] / counts[b] if counts[b] else None
        if counts[b]:
            ece += counts[b] / len(pairs) * abs(em - mean)  # type: ignore[operator]
        table.append(ReliabilityBin(b / bins, (b + 1) / bins, counts[b], mean, em))
    return Reliability(tuple(table), len(pairs), ece)


DEFAULT_TEMPERATURES = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)


def fit_temperature(
    probability_at: Iterable[Callable[[float], float]], correct: Iterable[bool],
    temperatures: Iterable[float] = DEFAULT_TEMPERATURES,
) -> tuple[float, list[tuple[float, float]]]:  # fmt: skip
    """Temperature scaling (Guo et al. 2017) of answer probabilities, chosen on a dev set: the temperature
    whose probabilities have the lowest mean log loss against whether each answer was right,

        T* = argmin over T of  -1/N sum_i [ c_i log p_i(T) + (1 - c_i) log (1 - p_i(T)) ]

    (probabilities clipped to [1e-6, 1 - 1e-6]). Scaling never changes which answer is given, only how sure
    it is said to be.

    Args:
        probability_at: per question, T -> its answer's probability (`realm.pipeline.AnswerMass.probability`).
        correct: whether each answer was right (same order).
        temperatures: the candidates, tried in order (ties keep the first).
    Returns:
        T*, and (T, mean log loss) for every candidate.
    """
    cases = list(zip(probability_at, correct, strict=True))
    if not cases:
        raise ValueError("no answers to fit a temperature on")
    losses = []
    for temperature in temperatures:
        if not temperature > 0:
            raise ValueError(f"temperatures must be > 0, got {temperature}")
        total = 0.0
        for at, right in cases:
            p = min(max(at(temperature), 1e-6), 1 - 1e-6)
            total -= math.log(p) if right else math.log(1 - p)
        losses.append((float(temperature), total / len(cases)))
    best = min(losses, key=lambda pair: pair[1])  # min keeps the first of equal losses
    return best[0], losses
