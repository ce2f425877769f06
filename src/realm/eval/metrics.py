"""Open-QA metrics as pure functions: answer normalisation, EM, F1, regex EM, answer matching, recall@k.

Which reference each function follows (read the docstrings for the details):

| function | follows | used for |
|---|---|---|
| `normalize_answer` | ORQA `language/orqa/utils/eval_utils.py:normalize_answer` | EM and F1 |
| `exact_match` | ORQA `exact_match_score`, max over references | reader EM (NQ, WQ) |
| `regex_match` | ORQA `regex_match_score`, max over patterns | reader EM (CuratedTrec) |
| `f1_score` | SQuAD token F1 on ORQA-normalised text | reader F1 (extra; the paper reports EM only) |
| `has_answer_substring` | ORQA `HasAnswer` op (`language/orqa/ops/orqa_ops.cc`) | training signal |
| `has_answer` | DPR `dpr/data/qa_validation.py:has_answer` | retrieval recall@k |
| `recall_at_k` | DPR `calculate_matches` top-k hits | retrieval recall@k |
| `title_hits` | (ours) the block's article is the gold one | gold-article recall@k |

The two answer-in-block tests are kept apart on purpose and must not be mixed:

* `has_answer_substring` is what ORQA/REALM fine-tuning uses to label a retrieved block "correct" for the
  retriever's marginal likelihood: a raw, case-sensitive substring test of each answer string in the block
  text, with no normalisation at all.
* `has_answer` is what published retrieval recall numbers (DPR, and "Recall@5" style tables) use: DPR's
  token-sequence match after NFD + lowercasing ("string" mode), or a regex search anywhere in the block
  ("regex" mode, CuratedTrec).

Nothing here prints; an invalid answer regex is logged once per distinct pattern and counts as no match.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import string
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Literal

logger = logging.getLogger(__name__)

MatchMode = Literal["string", "regex"]

DEFAULT_RECALL_KS: tuple[int, ...] = (1, 5, 20, 100)

_PUNCTUATION = frozenset(string.punctuation)  # ASCII only, as ORQA: "“", "–" and "é" survive
_ARTICLES = re.compile(r"\b(a|an|the)\b")  # str pattern: \b uses Unicode word characters
_REGEX_FLAGS = re.IGNORECASE | re.UNICODE | re.MULTILINE  # the flags of both ORQA and DPR


# ---------------------------------------------------------------------------------------------------------
# Normalisation, EM, F1 (reader answers).
# ---------------------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Normalise an answer string exactly as ORQA's `eval_utils.normalize_answer`.

    The steps, in ORQA's order: Unicode NFD; lowercase; drop ASCII punctuation (`string.punctuation`);
    replace the whole words "a", "an", "the" by a space; collapse runs of whitespace to one space and strip.

    Consequences of following ORQA to the letter (tested in `tests/test_eval_metrics.py`):

    * NFD splits accented letters but nothing strips the combining marks, so "Beyoncé" normalises to
      "beyonce" + U+0301 and does not equal "Beyonce".
    * A combining mark is not a word character, so an article followed by one is still a whole word:
      "à la carte" -> "\\u0300 la carte", "thé" -> "\\u0301".
    * Only ASCII punctuation goes: "U.S.A." -> "usa", but curly quotes and dashes stay.
    * The function is idempotent except on pathological text where removing a punctuation character
      joins two combining marks out of canonical order (NFD on a second pass reorders them).

    Args:
        text: any string.

    Returns:
        The normalised string (possibly empty).
    """
    text = unicodedata.normalize("NFD", text)
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _check_references(references: Sequence[str], name: str) -> None:
    if isinstance(references, str):
        raise TypeError(f"{name} must be a list of strings, not a str: wrap it as [{references!r}]")


def exact_match(prediction: str, references: Sequence[str]) -> bool:
    """Whether the prediction equals any reference after `normalize_answer` (ORQA `exact_match_score`).

    Args:
        prediction: the predicted answer text.
        references: the gold answer strings; an empty list gives False (ORQA would raise).

    Returns:
        True when some reference matches.
    """
    _check_references(references, "references")
    normalized = normalize_answer(prediction)
    return any(normalized == normalize_answer(reference) for reference in references)


def _token_f1(prediction_tokens: list[str], reference_tokens: list[str]) -> float:
    if not prediction_tokens or not reference_tokens:
        # SQuAD v2.0's rule: two empty answers agree (1.0), one empty answer gets 0.0. SQuAD v1.1 returned
        # 0.0 for both, which would disagree with EM on a pair of empty strings.
        return float(prediction_tokens == reference_tokens)
    common = Counter(prediction_tokens) & Counter(reference_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, references: Sequence[str]) -> float:
    """SQuAD token F1 (bag of whitespace tokens), max over references, on ORQA-normalised text.

    The formula is the official SQuAD v1.1 script's `f1_score` (precision and recall of the multiset of
    shared tokens); only the normalisation is ORQA's (NFD first). Empty token lists follow SQuAD v2.0: both
    empty -> 1.0, one empty -> 0.0.

    Args:
        prediction: the predicted answer text.
        references: the gold answer strings; an empty list gives 0.0.

    Returns:
        The best F1 in [0, 1] over the references.
    """
    _check_references(references, "references")
    prediction_tokens = normalize_answer(prediction).split()
    return max((_token_f1(prediction_tokens, normalize_answer(r).split()) for r in references), default=0.0)


# ---------------------------------------------------------------------------------------------------------
# Regular-expression answers (CuratedTrec).
# ---------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def compile_answer_regex(pattern: str) -> re.Pattern[str] | None:
    """Compile an answer regex with the flags of ORQA and DPR (IGNORECASE | UNICODE | MULTILINE).

    Compiled patterns are cached. An invalid pattern is logged once (a warning naming the pattern and the
    error) and gives None, which every caller treats as "no match".

    Note: DPR compiles with the third-party `regex` module, ORQA and this library with the standard `re`;
    the CuratedTrec patterns use only syntax the two share.

    Args:
        pattern: the regular expression, as found in the dataset.

    Returns:
        The compiled pattern, or None when `re` rejects it.
    """
    try:
        return re.compile(pattern, _REGEX_FLAGS)
    except re.error as err:
        logger.warning("invalid answer regex %r counts as no match: %s", pattern, err)
        return None


def is_valid_regex(pattern: str) -> bool:
    """Whether `compile_answer_regex` accepts the pattern (use it to count invalid references)."""
    return compile_answer_regex(pattern) is not None


def regex_match(prediction: str, patterns: Sequence[str]) -> bool:
    """CuratedTrec EM as ORQA's `regex_match_score`, max over patterns.

    Each pattern is `re.match`ed against the raw prediction: anchored at the start (an implicit "^") but
    not at the end, so a prediction that starts with a match but continues counts as correct. Neither side
    is normalised. Invalid patterns count as no match (see `compile_answer_regex`).

    Args:
        prediction: the predicted answer text.
        patterns: the gold answer regexes.

    Returns:
        True when some pattern matches at the start of the prediction.
    """
    _check_references(patterns, "patterns")
    for pattern in patterns:
        compiled = compile_answer_regex(pattern)
        if compiled is not None and compiled.match(prediction) is not None:
            return True
    return False


# ---------------------------------------------------------------------------------------------------------
# Is the answer in the block? ORQA's training signal vs DPR's evaluation recall.
# ---------------------------------------------------------------------------------------------------------


def has_answer_substring(block_text: str, answers: Sequence[str]) -> bool:
    """ORQA's `HasAnswer` op: whether some answer string occurs verbatim in the block text.

    This is the label of the retriever's marginal likelihood in ORQA/REALM fine-tuning
    (`orqa_model.py`: `orqa_ops.has_answer(blocks=retrieved blocks, answers=labels)`). The op is a C++
    `std::string::find` on the raw UTF-8 bytes: case-sensitive, no Unicode normalisation, not aligned to
    words ("art" is found in "party"). For valid UTF-8 a byte substring is a code point substring, so
    Python's `in` gives the same answer.

    Deviation: an empty answer string is skipped. `find("")` succeeds on every block, so in ORQA one empty
    answer would make every retrieved block "correct".

    Args:
        block_text: the block text as stored in the corpus.
        answers: the gold answer strings (never regexes).

    Returns:
        True when some non-empty answer is a substring of the block.
    """
    _check_references(answers, "answers")
    return any(bool(answer) and answer in block_text for answer in answers)


@functools.cache
def _dpr_token_pattern() -> re.Pattern[str]:
    """DPR's `SimpleTokenizer` regex, `([\\p{L}\\p{N}\\p{M}]+)|([^\\p{Z}\\p{C}])`, rebuilt for `re`.

    The standard `re` has no `\\p{...}` classes, so the two classes are spelled out as code point ranges
    from `unicodedata` (built once, ~0.3 s). The Unicode version is Python's, which can differ from the one
    of the `regex` module DPR uses for characters assigned in between.
    """

    def kind(category: str) -> str:
        return "word" if category[0] in "LNM" else "skip" if category[0] in "ZC" else "other"

    ranges: dict[str, list[tuple[int, int]]] = {"word": [], "skip": [], "other": []}
    start = 0
    categories = map(unicodedata.category, map(chr, range(sys.maxunicode + 1)))
    for group, members in itertools.groupby(categories, key=kind):
        end = start + sum(1 for _ in members)
        ranges[group].append((start, end - 1))
        start = end

    def char_class(spans: list[tuple[int, int]]) -> str:
        return "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in spans)

    # word: letters, numbers, marks; skip: separators, control, format, unassigned, surrogates.
    return re.compile(f"[{char_class(ranges['word'])}]+|[^{char_class(ranges['skip'])}]")


def dpr_tokenize(text: str) -> list[str]:
    """DPR's evaluation tokenisation: NFD, `SimpleTokenizer` tokens, each lowercased.

    A token is a maximal run of letters, numbers and combining marks, or any other single character that is
    not whitespace/separator or control (so each punctuation mark is its own token). This is what
    `has_answer(..., tokenizer, "string")` in DPR's `qa_validation.py` applies to passages and answers.

    Args:
        text: any string.

    Returns:
        The lowercased tokens, in order.
    """
    text = unicodedata.normalize("NFD", text)
    return [token.lower() for token in _dpr_token_pattern().findall(text)]


def _contains_sequence(haystack: list[str], needle: list[str]) -> bool:
    width = len(needle)
    first = needle[0]
    return any(
        haystack[i] == first and haystack[i : i + width] == needle for i in range(len(haystack) - width + 1)
    )


def retrieval_hits(
    block_texts: Iterable[str], answers: Sequence[str], mode: MatchMode = "string"
) -> list[bool]:
    """`has_answer` for each block of one question's ranking, preparing the answers only once.

    Args:
        block_texts: the retrieved blocks' texts, best first.
        answers: the gold answers (strings in "string" mode, regexes in "regex" mode).
        mode: "string" (DPR token match) or "regex" (DPR regex search).

    Returns:
        One bool per block, in the same order: the input of `recall_at_k`.
    """
    _check_references(answers, "answers")
    if mode == "string":
        # DPR matches an answer with no tokens (e.g. "" or only spaces) everywhere; we skip it instead.
        needles = [tokens for tokens in map(dpr_tokenize, answers) if tokens]
        hits = []
        for block in block_texts:
            tokens = dpr_tokenize(block)
            hits.append(any(_contains_sequence(tokens, needle) for needle in needles))
        return hits
    if mode == "regex":
        compiled = [compile_answer_regex(unicodedata.normalize("NFD", a)) for a in answers]
        regexes = [c for c in compiled if c is not None]
        return [
            any(r.search(text) is not None for r in regexes)
            for text in (unicodedata.normalize("NFD", block) for block in block_texts)
        ]
    raise ValueError(f'unknown answer match mode {mode!r}: use "string" or "regex"')


def has_answer(block_text: str, answers: Sequence[str], mode: MatchMode = "string") -> bool:
    """DPR's `has_answer`: whether a retrieved block contains an answer, for retrieval recall@k.

    * "string" mode: block and answers are NFD-normalised, tokenised by `dpr_tokenize` and lowercased; the
      block matches when some answer's token sequence occurs contiguously in the block's tokens. Matching is
      case-insensitive and whole-token: "New York" is in "... in new york city ...", "york c" is not.
    * "regex" mode (CuratedTrec): block and patterns are NFD-normalised and each pattern is `search`ed
      anywhere in the block with IGNORECASE | UNICODE | MULTILINE; invalid patterns never match.

    Deviation (string mode): an answer that tokenises to nothing is skipped (DPR would match it in every
    block).
    Not the training signal: ORQA/REALM label blocks with `has_answer_substring`.

    Args:
        block_text: the retrieved block's text.
        answers: the gold answers (strings in "string" mode, regexes in "regex" mode).
        mode: "string" or "regex".

    Returns:
        True when some answer is found in the block.
    """
    return retrieval_hits([block_text], answers, mode)[0]


def title_hits(block_titles: Iterable[str], gold_title: str) -> list[bool]:
    """Whether each retrieved block belongs to the gold article: its title equals `gold_title` exactly.

    The input of `recall_at_k` for gold-article recall: a question about an article is retrieved well
    when a block of that article comes back, whether or not the answer string is in the block.

    Args:
        block_titles: the retrieved blocks' titles (as stored), best first.
        gold_title: the title of the question's gold article.
    """
    return [title == gold_title for title in block_titles]


# ---------------------------------------------------------------------------------------------------------
# Recall@k.
# ---------------------------------------------------------------------------------------------------------


def recall_at_k(
    per_question_hits: Sequence[Sequence[bool]], ks: Iterable[int] = DEFAULT_RECALL_KS
) -> dict[int, float]:
    """Top-k retrieval recall: the fraction of questions with an answer-bearing block among the first k.

    As DPR's `calculate_matches` (and ORQA's `top_{k}_match` metrics). A question with fewer than k blocks
    listed counts with the blocks it has. A k larger than the longest ranking is left out of the result
    (recall@100 of a top-5 retrieval would just repeat recall@5) and the omission is logged.

    Args:
        per_question_hits: for each question, one bool per retrieved block, best first (see
            `retrieval_hits`).
        ks: the cut-offs, positive integers.

    Returns:
        {k: recall in [0, 1]} in increasing k; empty when there are no questions.
    """
    ks = sorted(set(ks))
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"recall cut-offs must be positive integers, got {ks}")
    if not per_question_hits:
        return {}
    # Rank of the first hit per question (None when no hit): recall@k = mean(first < k).
    firsts = [next((rank for rank, hit in enumerate(hits) if hit), None) for hits in per_question_hits]
    longest = max(len(hits) for hits in per_question_hits)
    dropped = [k for k in ks if k > longest]
    if dropped:
        logger.info(
            "recall@k: leaving out k=%s, larger than the longest ranking (%d blocks)", dropped, longest
        )
    n = len(firsts)
    return {k: sum(1 for first in firsts if first is not None and first < k) / n for k in ks if k <= longest}
