"""Run a `Pipeline` over a QA file: predictions with their evidence ids, retrieval hits, and the summary."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from realm.eval.data import QAExample
from realm.eval.metrics import DEFAULT_RECALL_KS, retrieval_hits, title_hits
from realm.eval.report import TITLE_HITS_KEY, Summary, summarize


def evaluate(
    pipeline: Any,
    examples: Sequence[QAExample],
    *,
    regex: bool = False,
    recall_ks: Iterable[int] = DEFAULT_RECALL_KS,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], Summary]:
    """Answer every example and score the answers (EM/F1, or regex EM) and the retrieval (recall@k).

    Each question is embedded and searched once, for max(recall_ks) blocks; the reader reads the first
    `pipeline.k` of them.

    Returns:
        prediction rows (question, answers, prediction, score, probability, sure, block_id, retrieved ids,
        hits; and title, title_hits for examples with a gold article) and the summary (with the reliability
        table of the answer probabilities).
    """
    from tqdm.auto import tqdm

    ks = tuple(recall_ks)
    depth = max((*ks, pipeline.k))
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(examples), unit="question", desc="evaluating", disable=not progress) as bar:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            questions = [e.question for e in batch]
            retrieved = pipeline.retrieve(questions, depth)
            answers = pipeline.read(questions, retrieved)
            for example, answer, ids in zip(batch, answers, retrieved.block_ids.tolist(), strict=True):
                texts = pipeline.store.texts(ids)
                row = {
                    "question": example.question,
                    "answers": list(example.answers),
                    "prediction": answer.text,
                    "score": answer.score,
                    "probability": answer.probability,
                    "sure": answer.sure,
                    "block_id": answer.block_id,
                    "retrieved": ids,
                    "hits": retrieval_hits(texts, example.answers, mode="regex" if regex else "string"),
                }
                if example.title is not None:
                    row["title"] = example.title
                    row[TITLE_HITS_KEY] = title_hits(pipeline.store.titles(ids), example.title)
                rows.append(row)
            bar.update(len(batch))
    return rows, summarize(rows, regex=regex, ks=ks)
