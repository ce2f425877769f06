"""Named output records, with the transformers port's field names.

Each record is a dataclass read by attribute (`out.loss`). For code written against the port it also
indexes like the port's outputs: `out["loss"]`, and `out[0]` / `out.to_tuple()` over the fields that are
not None, in declaration order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ModelOutput:
    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v for v in (getattr(self, f.name) for f in dataclasses.fields(self)) if v is not None)

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]


@dataclass
class RealmEmbedderOutput(ModelOutput):
    """`projected_score` [B, D]: the 128-d retrieval embedding of each input."""

    projected_score: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class RealmScorerOutput(ModelOutput):
    """`relevance_score` [B, K] retrieval logits, `query_score` [B, D], `candidate_score` [B, K, D]."""

    relevance_score: torch.Tensor | None = None
    query_score: torch.Tensor | None = None
    candidate_score: torch.Tensor | None = None


@dataclass
class MaskedLMOutput(ModelOutput):
    """`loss` (marginal MLM loss, when labels are given) and `logits` [B*K, T, V]."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class RealmReaderOutput(ModelOutput):
    """Reader losses, correctness masks and the predicted (block, span).

    `block_idx` and `candidate` are 0-d, `start_pos` and `end_pos` have shape (1,), as in the port.
    `reader_correct` is [R, number of span candidates].
    """

    loss: torch.Tensor | None = None
    retriever_loss: torch.Tensor | None = None
    reader_loss: torch.Tensor | None = None
    retriever_correct: torch.Tensor | None = None
    reader_correct: torch.Tensor | None = None
    block_idx: torch.Tensor | None = None
    candidate: torch.Tensor | None = None
    start_pos: torch.Tensor | None = None
    end_pos: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class RealmForOpenQAOutput(ModelOutput):
    """The reader's output and the predicted answer's WordPiece ids.

    For one question (the port's case) `predicted_answer_ids` is a 1-D tensor; for a batch of questions
    it is a list of them and `reader_output`'s fields gain a leading batch axis (`loss` is the batch mean).
    `retrieved_block_ids` [K] (or [B, K]) are the blocks the searcher returned, best first.
    """

    reader_output: RealmReaderOutput | None = None
    predicted_answer_ids: torch.Tensor | list[torch.Tensor] | None = None
    retrieved_block_ids: torch.Tensor | None = None
