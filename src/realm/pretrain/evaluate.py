"""What a pre-training run learned, measured on data it never trained on.

    masked_accuracy   held-out masked sentences through a `RealmPretrainer` in eval mode: the marginal
                      prediction's token accuracy, the null block's, and the retrieval utility (the loop's
                      numbers, without gradient or dropout)
    gold_recall       the query tower against an index: the share of questions whose gold block is among
                      the first k (the paper's point that pre-training improves the retriever)
    block_recall      the same for queries already tokenised, each with its gold block id

Shapes: B batch, Q question tokens, D projection dim, N blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from realm.index import Index
from realm.inputs import collate_questions
from realm.objectives import retrieval_utility
from realm.pretrain.examples import MaskedExample, collate_masked
from realm.pretrain.step import RealmPretrainer


@dataclass(frozen=True)
class MaskedScore:
    """Token accuracy of masked sentences: with retrieval (the marginal), with the null block alone.

    Attributes:
        accuracy: share of masked wordpieces the marginal prediction gets right.
        null_accuracy: the same, read with the null block only (the same model's no-retrieval answer).
        retrieval_utility: mean log-likelihood gain per masked token over the null block.
        masked_tokens: how many masked wordpieces were scored; sentences: how many sentences.
    """

    accuracy: float
    null_accuracy: float
    retrieval_utility: float
    masked_tokens: int
    sentences: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@torch.no_grad()
def masked_accuracy(
    model: RealmPretrainer, examples: Sequence[MaskedExample], *, batch_size: int = 16, exclude_source: bool = True
) -> MaskedScore:
    """Score `examples` with `model` (its index must be set) in eval mode; restores the train/eval mode.

    Args:
        exclude_source: keep each example's `source_block` out of its candidates (sentences taken from the
            knowledge corpus itself); False for sentences from another corpus (their source is no block).
    """
    if not examples:
        raise ValueError("masked_accuracy needs at least one example")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(5, dtype=torch.float64)  # tokens, marginal ll, null ll, correct, null correct
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate_masked(examples[start : start + batch_size], model.pad_id)
            if not exclude_source:
                batch["source_block"] = torch.full_like(batch["source_block"], -1)
            out = model(**{k: v.to(device) for k, v in batch.items()})
            sums += torch.tensor([float(out.masked_tokens), float(out.marginal_log_likelihood),
                                  float(out.null_log_likelihood), float(out.correct), float(out.null_correct)],
                                 dtype=torch.float64)  # fmt: skip
    finally:
        model.train(was_training)
    tokens = max(float(sums[0]), 1.0)
    return MaskedScore(
        accuracy=float(sums[3]) / tokens, null_accuracy=float(sums[4]) / tokens,
        retrieval_utility=float(retrieval_utility(float(sums[1]), float(sums[2]), tokens)),
        masked_tokens=int(sums[0]), sentences=len(examples),
    )  # fmt: skip


@torch.no_grad()
def gold_recall(
    embedder: torch.nn.Module,
    tokenizer: Any,
    index: Index,
    questions: Sequence[Mapping[str, Any]],
    gold_block: Mapping[str, int],
    *,
    ks: Sequence[int] = (1, 5, 20),
    max_length: int = 32,
    batch_size: int = 64,
) -> dict[str, float]:
    """Share of `questions` (rows with "question" and "title") whose gold block (`gold_block[title]`) is
    among the first k blocks `index` returns for the query tower `embedder`'s embedding, for each k.

    Raises:
        KeyError: a question's title has no block in `gold_block` (filter the questions first).
    """
    if not questions:
        raise ValueError("gold_recall needs at least one question")
    gold = [gold_block[str(r["title"])] for r in questions]
    ids = [tokenizer(str(r["question"]), truncation=True, max_length=max_length)["input_ids"] for r in questions]
    return block_recall(embedder, index, ids, gold, tokenizer.pad_token_id, ks=ks, batch_size=batch_size)


@torch.no_grad()
def block_recall(
    embedder: torch.nn.Module,
    index: Index,
    queries: Sequence[Sequence[int]],
    gold: Sequence[int],
    pad_id: int,
    *,
    ks: Sequence[int] = (1, 5, 20),
    batch_size: int = 64,
) -> dict[str, float]:
    """Share of `queries` (token ids, special tokens included) whose block `gold[i]` is among the first k
    blocks `index` returns for the query tower `embedder`'s embedding, for each k."""
    if not queries or len(queries) != len(gold):
        raise ValueError(f"block_recall needs queries and one gold block each, got {len(queries)} and {len(gold)}")
    was_training = embedder.training
    embedder.eval()
    device = next(embedder.parameters()).device
    depth = min(max(ks), len(index))
    hits = {k: 0 for k in ks}
    try:
        for start in range(0, len(queries), batch_size):
            input_ids, mask = collate_questions(list(queries[start : start + batch_size]), pad_id)  # [B, Q] each
            query = embedder(input_ids.to(device), attention_mask=mask.to(device),
                             token_type_ids=torch.zeros_like(input_ids).to(device)).projected_score  # [B, D]
            found = index.search(query.float().cpu(), depth).ids.tolist()  # [B, depth]
            for block, got in zip(gold[start : start + batch_size], found, strict=True):
                for k in ks:
                    hits[k] += block in got[:k]
    finally:
        embedder.train(was_training)
    return {f"recall@{k}": hits[k] / len(queries) for k in ks}
