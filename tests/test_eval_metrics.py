"""Open-QA evaluation: hand-computed cases against ORQA's and DPR's rules, data files, the report."""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import string
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from realm.eval import (
    QADataError,
    QAExample,
    Summary,
    compile_answer_regex,
    dpr_tokenize,
    exact_match,
    f1_score,
    has_answer,
    has_answer_substring,
    iter_qa_jsonl,
    normalize_answer,
    read_predictions_jsonl,
    read_qa_jsonl,
    recall_at_k,
    regex_match,
    retrieval_hits,
    summarize,
    write_predictions_jsonl,
)

try:  # DPR tokenises with the third-party `regex` module; when it is installed we test against it.
    import regex
except ImportError:  # pragma: no cover
    regex = None

# ---------------------------------------------------------------------------------------------------------
# normalize_answer / exact_match: ORQA's eval_utils, step by step.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Beatles", "beatles"),
        ("an apple a day", "apple day"),
        ("Theatre of the Absurd", "theatre of absurd"),  # articles only as whole words
        ("THE END", "end"),  # lowercase comes before article removal
        ("t.he cat", "cat"),  # punctuation removal comes before article removal: "t.he" -> "the" -> ""
        ("U.S.A.", "usa"),
        ("rock-paper, scissors!", "rockpaper scissors"),
        ("\u201cHey\u201d \u2013 you", "\u201chey\u201d \u2013 you"),  # only ASCII punctuation goes
        ("  New \t York\n", "new york"),
        ("", ""),
        ("the a an", ""),
        # NFD splits accents off and nothing strips the combining mark (ORQA does the same):
        ("Beyonc\u00e9", "beyonce\u0301"),
        # ... and a combining mark is not a word character, so an article before one is still a word:
        ("\u00e0 la carte", "\u0300 la carte"),
        ("th\u00e9", "\u0301"),
    ],
)
def test_normalize_answer_follows_orqa(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_cases() -> None:
    assert exact_match("beatles", ["The Beatles"])
    assert exact_match("usa", ["United States", "U.S.A."])  # max over references
    assert not exact_match("usa", ["United States"])
    assert exact_match("New  York", ["new york"])
    # ORQA keeps the combining mark after NFD, so an accent still matters ...
    assert not exact_match("Beyonce", ["Beyonc\u00e9"])
    # ... but composed and decomposed spellings of the same accent agree.
    assert exact_match("BEYONCE\u0301", ["Beyonc\u00e9"])
    assert exact_match("", [""])
    assert exact_match("", ["The"])  # "The" normalises to the empty string
    assert not exact_match("", ["x"])
    assert not exact_match("anything", [])  # no references: wrong (ORQA would raise on max([]))


def test_references_as_a_bare_string_is_an_error() -> None:
    with pytest.raises(TypeError, match=r"wrap it as \['Paris'\]"):
        exact_match("Paris", "Paris")
    with pytest.raises(TypeError):
        regex_match("Paris", "Paris")
    with pytest.raises(TypeError):
        has_answer("in Paris", "Paris")


def _no_mark_after_punctuation(text: str) -> bool:
    decomposed = unicodedata.normalize("NFD", text)
    return not any(
        a in string.punctuation and unicodedata.combining(b) for a, b in itertools.pairwise(decomposed)
    )


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40))
def test_normalize_answer_is_idempotent(text: str) -> None:
    # The one exception, pinned below: punctuation between two combining marks.
    assume(_no_mark_after_punctuation(text))
    once = normalize_answer(text)
    assert normalize_answer(once) == once


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="aAnNtThHeE .,!'-\u00e9\u00c9\u0301", max_size=30))
def test_normalize_answer_is_idempotent_on_answer_like_text(text: str) -> None:
    once = normalize_answer(text)
    assert normalize_answer(once) == once


def test_normalize_answer_is_not_idempotent_when_punctuation_separates_combining_marks() -> None:
    # Removing "." joins U+0301 (class 230) and U+0327 (class 202) out of canonical order; NFD on a second
    # pass reorders them. ORQA has the same behaviour; no real answer looks like this.
    once = normalize_answer("e\u0301.\u0327")
    assert once == "e\u0301\u0327"
    assert normalize_answer(once) == "e\u0327\u0301"


# ---------------------------------------------------------------------------------------------------------
# F1 (SQuAD token F1 on ORQA-normalised text).
# ---------------------------------------------------------------------------------------------------------


def test_f1_score_by_hand() -> None:
    # [cat, sat] vs [cat, sat, on, mat]: 2 shared, P = 1, R = 1/2, F1 = 2/3.
    assert f1_score("The cat sat", ["cat sat on the mat"]) == pytest.approx(2 / 3)
    # [x, x, y] vs [x, y]: shared multiset {x, y} = 2, P = 2/3, R = 1, F1 = 0.8.
    assert f1_score("x x y", ["x y"]) == pytest.approx(0.8)
    assert f1_score("x x y", ["z", "x y"]) == pytest.approx(0.8)  # max over references
    assert f1_score("beatles", ["The Beatles"]) == 1.0
    assert f1_score("dog", ["cat"]) == 0.0
    assert f1_score("", [""]) == 1.0  # both empty agree (SQuAD v2.0's rule, consistent with EM)
    assert f1_score("the", ["cat"]) == 0.0  # one empty
    assert f1_score("cat", []) == 0.0


# ---------------------------------------------------------------------------------------------------------
# regex_match: ORQA's CuratedTrec EM.
# ---------------------------------------------------------------------------------------------------------


def test_regex_match_is_anchored_at_the_start_only() -> None:
    assert regex_match("Paris", ["paris"])  # IGNORECASE
    assert regex_match("Paris, France", ["paris"])  # implicit "^", partial suffix allowed
    assert not regex_match("The city of Paris", ["paris"])  # not a search
    assert regex_match("Paree", ["Par(is|ee)$"])
    assert not regex_match("Parisian", ["Paris$"])
    assert regex_match("Paris\nFrance", ["paris$"])  # MULTILINE: "$" matches before a newline
    assert regex_match("1961", [r"Obama", r"19[56]\d"])  # max over patterns
    assert not regex_match("U.S.A.", ["usa"])  # no normalisation of either side


def test_invalid_regex_counts_as_no_match_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    compile_answer_regex.cache_clear()
    with caplog.at_level(logging.WARNING, logger="realm.eval.metrics"):
        assert not regex_match("(abc", ["(abc"])
        assert regex_match("abc", ["(abc", "abc"])
        assert not has_answer("xx (abc", ["(abc"], mode="regex")
    warnings = [r for r in caplog.records if "invalid answer regex" in r.getMessage()]
    assert len(warnings) == 1
    assert "'(abc'" in warnings[0].getMessage()


# ---------------------------------------------------------------------------------------------------------
# has_answer (DPR, recall@k) vs has_answer_substring (ORQA, training signal).
# ---------------------------------------------------------------------------------------------------------

BLOCK = "The parade in new york city was the largest since 1961."


def test_has_answer_string_mode_is_a_token_sequence_match() -> None:
    assert has_answer(BLOCK, ["New York"])
    assert has_answer(BLOCK, ["Boston", "new YORK city"])
    assert not has_answer(BLOCK, ["york c"])  # "c" is not a token of the block
    assert not has_answer(BLOCK, ["ew york"])  # whole tokens only
    assert has_answer(BLOCK, ["1961."])  # "." is a token of its own on both sides
    assert has_answer("served in the u.s. army", ["U.S."])
    assert not has_answer("born in the u.s.a.", ["USA"])
    assert not has_answer("a party", ["art"])


def test_has_answer_string_mode_unicode() -> None:
    assert has_answer("BEYONC\u00c9 released it", ["Beyonc\u00e9"])  # NFD on both sides, then lowercase
    assert has_answer("Beyonce\u0301 released it", ["Beyonc\u00e9"])  # composed vs decomposed
    assert not has_answer("Beyonce released it", ["Beyonc\u00e9"])  # the combining mark stays in the token


def test_has_answer_skips_answers_without_tokens() -> None:
    # DPR would match an empty answer in every block; we skip it.
    assert not has_answer(BLOCK, [""])
    assert not has_answer(BLOCK, ["  \t"])
    assert has_answer(BLOCK, ["", "parade"])


def test_has_answer_regex_mode_searches_anywhere() -> None:
    assert has_answer(BLOCK, [r"19[56]\d"], mode="regex")
    assert has_answer(BLOCK, [r"NEW YORK"], mode="regex")  # IGNORECASE
    assert has_answer(BLOCK, [r"york c"], mode="regex")  # no token boundaries in regex mode
    assert not has_answer(BLOCK, [r"^parade"], mode="regex")
    assert has_answer("Beyonce\u0301", ["Beyonc\u00e9"], mode="regex")  # NFD on both sides


def test_has_answer_unknown_mode() -> None:
    with pytest.raises(ValueError, match='use "string" or "regex"'):
        has_answer(BLOCK, ["x"], mode="substring")  # type: ignore[arg-type]


def test_has_answer_substring_is_raw_and_case_sensitive() -> None:
    # ORQA's HasAnswer op: std::string::find on the raw text.
    assert has_answer_substring("abcdefg hijklmn", ["hij"])  # the op's own unit test
    assert has_answer_substring("a party", ["art"])  # not word-aligned
    assert not has_answer_substring(BLOCK, ["New York"])  # no lowercasing
    assert not has_answer_substring("Beyonce\u0301", ["Beyonc\u00e9"])  # no NFD
    assert not has_answer_substring(BLOCK, [""])  # deviation: ORQA's find("") matches every block


def test_retrieval_hits_matches_has_answer_per_block() -> None:
    blocks = [BLOCK, "nothing here", "NEW YORK!", ""]
    for mode, answers in (("string", ["new york"]), ("regex", [r"new\s+york"])):
        expected = [has_answer(b, answers, mode=mode) for b in blocks]
        assert retrieval_hits(blocks, answers, mode=mode) == expected
    assert retrieval_hits(blocks, ["new york"]) == [True, False, True, False]


def test_dpr_tokenize_by_hand() -> None:
    assert dpr_tokenize("It's 3.14, Beyonc\u00e9!\tok\u200bgo \u6771\u4eac") == [
        "it", "'", "s", "3", ".", "14", ",", "beyonce\u0301", "!", "ok", "go", "\u6771\u4eac",
    ]  # fmt: skip


@pytest.mark.skipif(regex is None, reason="the `regex` module (DPR's tokenizer) is not installed")
@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x2FFFF, exclude_categories=("Cs", "Cn")), max_size=40))
def test_dpr_tokenize_matches_dprs_simple_tokenizer(text: str) -> None:
    # DPR's SimpleTokenizer pattern and flags (dpr/utils/tokenizers.py), with the third-party `regex` module.
    pattern = regex.compile(
        r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])", flags=regex.IGNORECASE + regex.UNICODE + regex.MULTILINE
    )
    nfd = unicodedata.normalize("NFD", text)
    assert dpr_tokenize(text) == [m.group().lower() for m in pattern.finditer(nfd)]


# ---------------------------------------------------------------------------------------------------------
# recall@k.
# ---------------------------------------------------------------------------------------------------------


def test_recall_at_k_by_hand() -> None:
    hits = [
        [False, True, False],  # first hit at rank 2
        [False, False, False],  # never
        [True, False, False],  # rank 1
        [False, False, True],  # rank 3
    ]
    assert recall_at_k(hits, ks=(1, 2, 3)) == {1: 0.25, 2: 0.5, 3: 0.75}
    assert recall_at_k(hits, ks=(3, 1, 1)) == {1: 0.25, 3: 0.75}  # sorted, deduplicated


def test_recall_at_k_edges() -> None:
    assert recall_at_k([[False, True], [True]], ks=(1, 5, 20)) == {1: 0.5}  # k beyond the longest: left out
    assert recall_at_k([[False, True, True, True, True], [True]], ks=(1, 5)) == {1: 0.5, 5: 1.0}
    assert recall_at_k([]) == {}
    with pytest.raises(ValueError, match="positive integers"):
        recall_at_k([[True]], ks=(0, 1))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=1, max_size=12), min_size=1, max_size=20))
def test_recall_at_k_against_brute_force(hits: list[list[bool]]) -> None:
    longest = max(map(len, hits))
    ks = range(1, longest + 1)
    expected = {k: sum(any(h[:k]) for h in hits) / len(hits) for k in ks}
    assert recall_at_k(hits, ks) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------------------
# QA data files.
# ---------------------------------------------------------------------------------------------------------


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_read_qa_jsonl(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "dev.jsonl",
        [
            json.dumps({"question": "who sang hey jude", "answer": ["The Beatles"]}),
            "",
            json.dumps({"question": "capital of france", "answers": ["Paris", "paris"], "id": 7}),
            json.dumps({"question": "caf\u00e9?", "answer": ["x"]}, ensure_ascii=False),
        ],
    )
    assert read_qa_jsonl(path) == [
        QAExample("who sang hey jude", ("The Beatles",), 1),
        QAExample("capital of france", ("Paris", "paris"), 3),
        QAExample("caf\u00e9?", ("x",), 4),
    ]


def test_read_qa_jsonl_gz(tmp_path: Path) -> None:
    path = tmp_path / "dev.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"question": "q", "answer": ["a"]}) + "\n")
    assert read_qa_jsonl(path) == [QAExample("q", ("a",), 1)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q", "answer": "Paris"}', '"answer" must be a list of strings'),
        ('{"question": "q", "answers": [1]}', '"answers" must be a list of strings'),
        ('{"question": "q"}', 'missing "answer"'),
        ('{"question": "q", "answer": ["a"], "answers": ["a"]}', 'both "answer" and "answers"'),
        ('{"question": "q", "answer": []}', '"answer" is empty'),
        ('{"question": 3, "answer": ["a"]}', '"question" must be a non-empty string'),
        ('["q", ["a"]]', "expected a JSON object, got list"),
        ('{"question": "q", "answer": ["a"]', "invalid JSON"),
    ],
)
def test_read_qa_jsonl_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    good = json.dumps({"question": "q", "answer": ["a"]})
    path = _write_lines(tmp_path / "dev.jsonl", [good] * 11 + [line])
    with pytest.raises(QADataError) as err:
        read_qa_jsonl(path)
    assert str(err.value).startswith(f"{path}:12: ")
    assert message in str(err.value)


def test_read_qa_jsonl_error_message_example(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "dev.jsonl", ['{"question": "q", "answer": "Paris"}'])
    with pytest.raises(QADataError) as err:
        read_qa_jsonl(path)
    assert str(err.value) == f'{path}:1: "answer" must be a list of strings'


def test_iter_qa_jsonl_streams_and_allows_unlabelled(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "q.jsonl", ['{"question": "q", "answer": []}', "not json"])
    examples = iter_qa_jsonl(path, allow_empty_answers=True)
    assert next(examples) == QAExample("q", (), 1)  # the bad line 2 is not read yet
    with pytest.raises(QADataError, match=":2: invalid JSON"):
        next(examples)


# ---------------------------------------------------------------------------------------------------------
# Predictions files.
# ---------------------------------------------------------------------------------------------------------


ROWS = [
    {"question": "who sang hey jude", "prediction": "the Beatles", "answers": ["The Beatles"], "score": 1.5},
    {"question": "caf\u00e9?", "prediction": None, "answers": ["x"], "block_ids": [3, 1]},
]


@pytest.mark.parametrize("name", ["pred.jsonl", "pred.jsonl.gz"])
def test_predictions_round_trip(tmp_path: Path, name: str) -> None:
    path = tmp_path / "out" / name
    assert write_predictions_jsonl(path, iter(ROWS)) == 2
    assert read_predictions_jsonl(path) == ROWS
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left behind


def test_predictions_numpy_values_become_json(tmp_path: Path) -> None:
    row = {"question": "q", "prediction": "a", "answers": ["a"], "ids": np.array([3, 1]), "s": np.float32(2)}
    write_predictions_jsonl(tmp_path / "p.jsonl", [row])
    assert read_predictions_jsonl(tmp_path / "p.jsonl") == [
        {
            "question": "q",
            "prediction": "a",
            "answers": ["a"],
            "ids": [3, 1],
            "s": 2.0,
        }
    ]


def test_predictions_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "pred.jsonl"
    write_predictions_jsonl(path, ROWS)
    before = path.read_bytes()
    bad = [ROWS[0], {"question": "q", "answers": ["a"]}]
    with pytest.raises(ValueError, match=r"row 1 lacks \['prediction'\]"):
        write_predictions_jsonl(path, bad)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["pred.jsonl"]


# ---------------------------------------------------------------------------------------------------------
# summarize / Summary.table.
# ---------------------------------------------------------------------------------------------------------


def test_summarize_string_mode_by_hand() -> None:
    rows = [
        {"prediction": "The Beatles", "answers": ["beatles"], "hits": [False, True]},  # EM 1, F1 1
        {"prediction": "cat sat", "answers": ["cat sat on mat"], "hits": [False, False]},  # EM 0, F1 2/3
        {"prediction": None, "answers": ["x"], "hits": [True, False]},  # missing: EM 0, F1 0
        {"prediction": "dog", "answers": ["cat"], "hits": [False, False]},  # EM 0, F1 0
    ]
    summary = summarize(rows, regex=False, ks=(1, 2, 5))
    assert summary.count == 4
    assert summary.exact_match == 0.25
    assert summary.f1 == pytest.approx((1 + 2 / 3) / 4)
    assert summary.recall == {1: 0.25, 2: 0.5}  # k=5 is beyond the 2 blocks listed
    assert summary.num_missing == 1
    assert summary.to_dict()["recall@2"] == 0.5
    assert summary.table() == "\n".join(
        [
            "metric               value",
            "-------------------  -----",
            "questions                4",
            "exact match          25.00",
            "F1                   41.67",
            "recall@1             25.00",
            "recall@2             50.00",
            "missing predictions      1",
        ]
    )


def test_summarize_regex_mode() -> None:
    rows = [
        {"prediction": "Paris, France", "answers": ["paris"]},  # anchored at the start: correct
        {"prediction": "in Paris", "answers": ["paris"]},  # wrong
        {"prediction": "x", "answers": ["(x", "y"]},  # one invalid pattern, no match
    ]
    summary = summarize(rows, regex=True)
    assert summary == Summary(count=3, exact_match=1 / 3, f1=None, recall={}, regex=True, num_invalid_regex=1)
    assert summary.table() == "\n".join(
        [
            "metric                  value",
            "----------------------  -----",
            "questions                   3",
            "exact match (regex)     33.33",
            "invalid answer regexes      1",
        ]
    )


def test_summarize_errors() -> None:
    with pytest.raises(ValueError, match="no predictions"):
        summarize([], regex=False)
    with pytest.raises(ValueError, match='row 1 lacks "hits"'):
        summarize(
            [{"prediction": "a", "answers": ["a"], "hits": [True]}, {"prediction": "a", "answers": ["a"]}],
            False,
        )
    with pytest.raises(ValueError, match='row 0 lacks "prediction"'):
        summarize([{"answers": ["a"]}], regex=False)
    with pytest.raises(ValueError, match='"answers" must be a list of strings'):
        summarize([{"prediction": "a", "answers": "a"}], regex=False)
    with pytest.raises(ValueError, match='"hits" must be a list of booleans'):
        summarize([{"prediction": "a", "answers": ["a"], "hits": [1, 0]}], regex=False)
