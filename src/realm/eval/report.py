"""Summarise a predictions file: EM (string or regex), F1, recall@k, as a record and a plain-text table.

    rows = read_predictions_jsonl("nq_dev_predictions.jsonl")
    summary = summarize(rows, regex=False)
    print(summary.table())                    # the CLI prints; this module never does

Each row is a mapping with "prediction" (str, or None for a question the model did not answer: counted
wrong, as ORQA's `missing_predictions`) and "answers" (strings, or regexes when `regex=True`). When rows
carry "hits" (one bool per retrieved block, best first, from `metrics.retrieval_hits`), recall@k is
reported too; then every row must carry them. Rows of questions with a gold article carry "title_hits"
(from `metrics.title_hits`): gold-article recall@k is reported over those rows (other rows may lack it).
When rows carry "probability" (the answer's probability, `Pipeline`'s marginal), a reliability table of it
against EM is reported too (`realm.eval.calibration`); then every row must carry one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from realm.eval.calibration import Reliability, reliability_table
from realm.eval.metrics import (
    DEFAULT_RECALL_KS,
    exact_match,
    f1_score,
    is_valid_regex,
    recall_at_k,
    regex_match,
)

logger = logging.getLogger(__name__)

HITS_KEY = "hits"
TITLE_HITS_KEY = "title_hits"
PROBABILITY_KEY = "probability"


@dataclass(frozen=True)
class Summary:
    """Open-QA scores over a set of predictions. Rates are fractions in [0, 1]; `table()` shows percent.

    Attributes:
        count: number of questions.
        exact_match: EM, max over references (ORQA normalisation, or regex match when `regex`).
        f1: SQuAD token F1, max over references; None in regex mode (F1 against a regex is undefined).
        recall: {k: recall@k} when the rows carry retrieval hits, else empty.
        regex: whether answers were matched as regexes (CuratedTrec).
        num_missing: questions with no prediction (None), counted wrong.
        num_invalid_regex: answer patterns that do not compile (regex mode), counted as no match.
        title_recall: {k: gold-article recall@k} over the rows with "title_hits", else empty.
        num_titled: questions with a gold article (rows with "title_hits").
        reliability: answer probability against EM (bins, ECE) when the rows carry "probability", else None.
    """

    count: int
    exact_match: float
    f1: float | None
    recall: dict[int, float]
    regex: bool
    num_missing: int = 0
    num_invalid_regex: int = 0
    title_recall: dict[int, float] = field(default_factory=dict)
    num_titled: int = 0
    reliability: Reliability | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (recall keys become "recall@k")."""
        out: dict[str, Any] = {
            "count": self.count,
            "exact_match": self.exact_match,
            "f1": self.f1,
            "regex": self.regex,
            "num_missing": self.num_missing,
            "num_invalid_regex": self.num_invalid_regex,
        }
        out.update({f"recall@{k}": v for k, v in self.recall.items()})
        if self.num_titled:
            out["num_titled"] = self.num_titled
            out.update({f"title_recall@{k}": v for k, v in self.title_recall.items()})
        if self.reliability is not None:
            out["ece"] = self.reliability.ece
            out["reliability"] = self.reliability.to_dict()
        return out

    def table(self) -> str:
        """A two-column plain-text table, one metric a line, rates in percent with two decimals (the ECE as a
        fraction; the reliability bins are `reliability.table()`)."""
        rows: list[tuple[str, str]] = [("questions", f"{self.count:,}")]
        rows.append(("exact match (regex)" if self.regex else "exact match", f"{100 * self.exact_match:.2f}"))
        if self.f1 is not None:
            rows.append(("F1", f"{100 * self.f1:.2f}"))
        rows.extend((f"recall@{k}", f"{100 * v:.2f}") for k, v in self.recall.items())
        if self.num_titled:
            if self.num_titled != self.count:
                rows.append(("questions with a gold article", f"{self.num_titled:,}"))
            rows.extend((f"gold-article recall@{k}", f"{100 * v:.2f}") for k, v in self.title_recall.items())
        if self.reliability is not None:
            rows.append(("calibration error (ECE)", f"{self.reliability.ece:.4f}"))
        if self.num_missing:
            rows.append(("missing predictions", f"{self.num_missing:,}"))
        if self.regex:
            rows.append(("invalid answer regexes", f"{self.num_invalid_regex:,}"))
        name_width = max(len("metric"), *(len(name) for name, _ in rows))
        value_width = max(len("value"), *(len(value) for _, value in rows))
        lines = [
            f"{'metric':<{name_width}}  {'value':>{value_width}}",
            f"{'-' * name_width}  {'-' * value_width}",
        ]
        lines.extend(f"{name:<{name_width}}  {value:>{value_width}}" for name, value in rows)
        return "\n".join(lines)


def _answers_of(row: Mapping[str, Any], index: int) -> list[str]:
    answers = row.get("answers")
    if not isinstance(answers, list | tuple) or not all(isinstance(a, str) for a in answers):
        raise ValueError(f'prediction row {index}: "answers" must be a list of strings')
    return list(answers)


def _prediction_of(row: Mapping[str, Any], index: int) -> str | None:
    if "prediction" not in row:
        raise ValueError(f'prediction row {index} lacks "prediction" (use None for an unanswered question)')
    prediction = row["prediction"]
    if prediction is not None and not isinstance(prediction, str):
        raise ValueError(f'prediction row {index}: "prediction" must be a string or None')
    return prediction


def summarize(
    predictions: Iterable[Mapping[str, Any]], regex: bool, ks: Iterable[int] = DEFAULT_RECALL_KS
) -> Summary:
    """Score prediction rows: EM (string or regex), F1 (string mode), recall@k (when rows carry hits).

    Args:
        predictions: rows with "prediction" and "answers", optionally "hits" and "title_hits" (see the module
            docstring).
        regex: match answers as regexes, ORQA's CuratedTrec evaluation (`regex_match`); else
            `exact_match` and `f1_score` on normalised strings.
        ks: recall cut-offs; cut-offs beyond the longest ranking are left out.

    Returns:
        The Summary.

    Raises:
        ValueError: no rows, a malformed row (its 0-based index is named), or hits on some rows only.
    """
    count = num_correct = num_missing = num_invalid = 0
    f1_total = 0.0
    all_hits: list[list[bool]] = []
    all_title_hits: list[list[bool]] = []
    probabilities: list[float] = []
    right: list[bool] = []
    first_with_hits: bool | None = None
    for index, row in enumerate(predictions):
        count += 1
        prediction = _prediction_of(row, index)
        answers = _answers_of(row, index)
        if regex:
            num_invalid += sum(1 for a in answers if not is_valid_regex(a))
        correct = False
        if prediction is None:
            num_missing += 1
        elif regex:
            correct = regex_match(prediction, answers)
        else:
            correct = exact_match(prediction, answers)
            f1_total += f1_score(prediction, answers)
        num_correct += correct

        if index and (PROBABILITY_KEY in row) != (len(probabilities) == index):  # row 0 decides: all or none
            raise ValueError(
                f'prediction row {index} {"has" if PROBABILITY_KEY in row else "lacks"} "{PROBABILITY_KEY}" unlike '
                "the rows before it; the reliability table needs a probability on every row or none"
            )
        if PROBABILITY_KEY in row:
            probability = row[PROBABILITY_KEY]
            if isinstance(probability, bool) or not isinstance(probability, int | float) or not 0 <= probability <= 1:
                raise ValueError(f'prediction row {index}: "{PROBABILITY_KEY}" must be a number in [0, 1]')
            probabilities.append(float(probability))
            right.append(bool(correct))

        has_hits = HITS_KEY in row
        if first_with_hits is None:
            first_with_hits = has_hits
        elif has_hits != first_with_hits:
            raise ValueError(
                f'prediction row {index} {"has" if has_hits else "lacks"} "{HITS_KEY}" but row 0 '
                f"{'has' if first_with_hits else 'does not'}; recall@k needs hits on every row or none"
            )
        if has_hits:
            hits = row[HITS_KEY]
            if not isinstance(hits, list | tuple) or not all(isinstance(h, bool) for h in hits):
                raise ValueError(f'prediction row {index}: "{HITS_KEY}" must be a list of booleans')
            all_hits.append(list(hits))
        if TITLE_HITS_KEY in row:
            hits = row[TITLE_HITS_KEY]
            if not isinstance(hits, list | tuple) or not all(isinstance(h, bool) for h in hits):
                raise ValueError(f'prediction row {index}: "{TITLE_HITS_KEY}" must be a list of booleans')
            all_title_hits.append(list(hits))
    if count == 0:
        raise ValueError("no predictions to summarize")
    if num_missing:
        logger.warning("%d of %d questions have no prediction; they count as wrong", num_missing, count)
    if num_invalid:
        logger.warning("%d answer regexes do not compile; they count as no match", num_invalid)
    return Summary(
        count=count,
        exact_match=num_correct / count,
        f1=None if regex else f1_total / count,
        recall=recall_at_k(all_hits, ks) if all_hits else {},
        regex=regex,
        num_missing=num_missing,
        num_invalid_regex=num_invalid,
        title_recall=recall_at_k(all_title_hits, ks) if all_title_hits else {},
        num_titled=len(all_title_hits),
        reliability=reliability_table(probabilities, right) if probabilities else None,
    )
