"""Open-QA evaluation: ORQA's answer normalisation and EM, DPR's retrieval recall, QA data files, reports.

    from realm.eval import read_qa_jsonl, exact_match, retrieval_hits, summarize

    examples = read_qa_jsonl("nq.resplit.dev.jsonl")            # [QAExample(question, answers, line)]
    exact_match("the Beatles", ["Beatles"])                      # True (ORQA normalisation)
    retrieval_hits(block_texts, example.answers)                 # [bool] per block: DPR token match
    title_hits(block_titles, example.title)                      # [bool] per block: the gold article's
    print(summarize(rows, regex=False).table())                  # EM, F1, recall@k, reliability
    reliability_table(probabilities, correct).ece                # calibration of answer probabilities

Which function follows which reference, and why the retriever's training label (`has_answer_substring`,
ORQA) differs from the recall@k match (`has_answer`, DPR): see `realm.eval.metrics`.
"""

from __future__ import annotations

from realm.eval.calibration import Reliability, ReliabilityBin, reliability_table
from realm.eval.data import (
    PREDICTION_KEYS,
    QADataError,
    QAExample,
    iter_predictions_jsonl,
    iter_qa_jsonl,
    read_predictions_jsonl,
    read_qa_jsonl,
    write_predictions_jsonl,
)
from realm.eval.metrics import (
    DEFAULT_RECALL_KS,
    MatchMode,
    compile_answer_regex,
    dpr_tokenize,
    exact_match,
    f1_score,
    has_answer,
    has_answer_substring,
    is_valid_regex,
    normalize_answer,
    recall_at_k,
    regex_match,
    retrieval_hits,
    title_hits,
)
from realm.eval.report import HITS_KEY, TITLE_HITS_KEY, Summary, summarize

__all__ = [
    "DEFAULT_RECALL_KS",
    "HITS_KEY",
    "TITLE_HITS_KEY",
    "PREDICTION_KEYS",
    "MatchMode",
    "QADataError",
    "QAExample",
    "Reliability",
    "ReliabilityBin",
    "Summary",
    "compile_answer_regex",
    "dpr_tokenize",
    "exact_match",
    "f1_score",
    "has_answer",
    "has_answer_substring",
    "is_valid_regex",
    "iter_predictions_jsonl",
    "iter_qa_jsonl",
    "normalize_answer",
    "read_predictions_jsonl",
    "read_qa_jsonl",
    "recall_at_k",
    "regex_match",
    "reliability_table",
    "retrieval_hits",
    "summarize",
    "title_hits",
    "write_predictions_jsonl",
]
