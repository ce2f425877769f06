"""Open-QA data files: questions with gold answers in, predictions out (JSON Lines, optionally gzipped).

Questions use the NQ-open format of the ORQA/DPR splits of NaturalQuestions, WebQuestions and
CuratedTrec (`{name}.resplit.{split}.jsonl` in ORQA), one JSON object per line:

    {"question": "who sang i want to hold your hand", "answer": ["The Beatles"]}

"answers" is accepted as an alias of "answer". An optional "title" names the question's gold article (the
title of its blocks in the store): `realm evaluate` then reports gold-article recall@k too. Other keys are
ignored. For CuratedTrec the answers are
regular expressions (evaluate with `regex=True`). Blank lines are skipped; any other malformed line stops
the read with a `QADataError` that names the file and the 1-based line: `dev.jsonl:12: "answer" must be
a list of strings`.

Predictions are written one JSON object per line with at least "question", "prediction" and "answers",
plus whatever else the caller adds (retrieved block ids, scores, per-block answer hits under "hits").
Files whose name ends in ".gz" are read and written gzipped.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

PREDICTION_KEYS: tuple[str, ...] = ("question", "prediction", "answers")


class QADataError(ValueError):
    """A malformed line in a QA file; the message starts with `path:line:`."""


@dataclass(frozen=True)
class QAExample:
    """One question with its gold answers.

    Attributes:
        question: the question text.
        answers: the gold answer strings (regexes for CuratedTrec), in file order.
        line: the 1-based line of the example in its file, for error messages and joins.
        title: the gold article's title, if the file gives one.
    """

    question: str
    answers: tuple[str, ...]
    line: int
    title: str | None = None


def _is_gzip(path: Path) -> bool:
    return path.name.endswith(".gz")


def _open_text(path: Path, mode: str, gzipped: bool) -> IO[str]:
    if gzipped:
        return io.TextIOWrapper(gzip.open(path, mode + "b"), encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def _parse_example(text: str, where: str, lineno: int, allow_empty_answers: bool) -> QAExample:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise QADataError(f"{where}: invalid JSON: {err}") from None
    if not isinstance(record, dict):
        raise QADataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise QADataError(f'{where}: "question" must be a non-empty string')
    if "answer" in record and "answers" in record:
        raise QADataError(f'{where}: has both "answer" and "answers"; keep one')
    key = "answers" if "answers" in record else "answer"
    if key not in record:
        raise QADataError(f'{where}: missing "answer" (a list of strings)')
    answers = record[key]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise QADataError(f'{where}: "{key}" must be a list of strings')
    if not answers and not allow_empty_answers:
        raise QADataError(
            f'{where}: "{key}" is empty; pass allow_empty_answers=True for unlabelled questions'
        )
    title = record.get("title")
    if title is not None and (not isinstance(title, str) or not title.strip()):
        raise QADataError(f'{where}: "title" (the gold article) must be a non-empty string')
    return QAExample(question=question, answers=tuple(answers), line=lineno, title=title)


def iter_qa_jsonl(path: str | os.PathLike[str], *, allow_empty_answers: bool = False) -> Iterator[QAExample]:
    """Stream the examples of an NQ-open style JSONL file (".gz" allowed), one line at a time.

    Args:
        path: the JSONL file.
        allow_empty_answers: accept `"answer": []` (questions to predict without gold answers).

    Yields:
        QAExample for each non-blank line, in file order.

    Raises:
        QADataError: at the first malformed line, naming the file and line.
    """
    path = Path(path)
    with _open_text(path, "r", _is_gzip(path)) as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            yield _parse_example(text, f"{path}:{lineno}", lineno, allow_empty_answers)


def read_qa_jsonl(path: str | os.PathLike[str], *, allow_empty_answers: bool = False) -> list[QAExample]:
    """Read a whole NQ-open style JSONL file; see `iter_qa_jsonl`."""
    return list(iter_qa_jsonl(path, allow_empty_answers=allow_empty_answers))


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, torch tensors: anything with .tolist() becomes plain JSON.
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_predictions_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> int:
    """Write prediction rows as JSONL atomically: to a temporary file beside `path`, then renamed over it.

    A reader never sees a half-written file, and a failure (a bad row, a full disk) leaves any previous
    file untouched. numpy values and torch tensors are converted with `.tolist()`.

    Args:
        path: the output file (gzipped when it ends in ".gz"); missing directories are created.
        rows: mappings with at least "question", "prediction" and "answers", in the order to write.

    Returns:
        The number of rows written.

    Raises:
        ValueError: a row lacks one of the required keys (the row's 0-based index is named).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o644)  # mkstemp makes it private (0o600); a predictions file is for sharing
    count = 0
    try:
        with _open_text(tmp, "w", _is_gzip(path)) as f:
            for count, row in enumerate(rows, start=1):
                missing = [key for key in PREDICTION_KEYS if key not in row]
                if missing:
                    raise ValueError(
                        f"prediction row {count - 1} lacks {missing}; each row needs {PREDICTION_KEYS}"
                    )
                f.write(json.dumps(dict(row), ensure_ascii=False, default=_json_default) + "\n")
            f.flush()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


def iter_predictions_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Stream the rows of a predictions file written by `write_predictions_jsonl` (blank lines skipped).

    Raises:
        QADataError: a line is not a JSON object, naming the file and line.
    """
    path = Path(path)
    with _open_text(path, "r", _is_gzip(path)) as f:
        for lineno, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise QADataError(f"{path}:{lineno}: invalid JSON: {err}") from None
            if not isinstance(row, dict):
                raise QADataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield row


def read_predictions_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a whole predictions file; see `iter_predictions_jsonl`."""
    return list(iter_predictions_jsonl(path))
