"""The ORQA/REALM fine-tuning step (the paper's Sec. 3.3-3.4; ORQA's `orqa_model.py`; spec Sec. 3.4-3.5).

For each question of a batch:

    Retrieve.   q = Embed(question); top-K blocks of the FROZEN index by q . e (K = searcher_beam_size), or
                of a hybrid dense + BM25 index given the questions' strings; retrieval logits q . e_k
                recomputed exactly from the dense vectors, differentiable in q only.
    Label.      has_answers[k]: block k, as truncated in the reader's input, contains an answer (token-id
                matching, as `RealmRetriever.block_has_answer`), for all K blocks, from stored ids.
    Read.       the top R blocks (R = reader_beam_size) as `[CLS] question [SEP] block [SEP]`; span scores
                + retrieval logits; gold spans where an answer occurs.
    Marginalise. retriever loss (MML over the K blocks) + reader loss (MML over R x spans), each zeroed
                without a positive (`realm.objectives.reader_losses`); the batch loss is their mean.

The numbers are `RealmForOpenQA`'s in train mode (see tests/test_finetune.py); the difference is speed:
`RealmForOpenQA`, like the port, builds reader inputs for all K blocks, and the port decodes the question
and re-tokenizes K (question, block) texts every step. Here nothing is decoded or re-tokenized, reader
inputs are built only for the R blocks read, and the K labels come from one numpy search over the
blocks' stored ids (`realm.finetune.answers`).

Shapes: B questions, Q question tokens, K retrieved, R read, T reader tokens, H hidden, D projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from realm.corpus import BlockStore
from realm.distributed import freeze_unused
from realm.finetune.answers import NO_TOKEN, answers_in_blocks
from realm.index import Index
from realm.index.base import check_index_size
from realm.index.hybrid import check_sparse_store
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.reader import RealmReader
from realm.qa import Retrieval, read, retrieve
from realm.retrieval import RealmRetriever

# Parameters no fine-tuning forward uses: the MLM heads the released checkpoints carry, and the reader's
# [CLS] pooler. They are frozen (and saved unchanged) so that DistributedDataParallel sees every
# trainable parameter receive a gradient.
UNUSED_PARAMETER_PREFIXES = ("embedder.cls.predictions.", "reader.cls.", "reader.realm.pooler.")


@dataclass
class EncodedQuestions:
    """Questions and answers tokenized once, before training.

    Attributes:
        question_ids: per question, `[CLS] question [SEP]` ids (truncated to the question length).
        answer_ids: per question, its answers' ids (no special tokens).
    """

    question_ids: list[list[int]]
    answer_ids: list[list[list[int]]]

    def __len__(self) -> int:
        return len(self.question_ids)


def encode_questions(tokenizer: Any, questions: Sequence[str], answers: Sequence[Sequence[str]], max_length: int) -> EncodedQuestions:
    """Tokenize questions as `Pipeline.retrieve` does, and answers without special tokens."""
    question_ids = tokenizer(list(questions), truncation=True, max_length=max_length)["input_ids"]
    flat = [a for group in answers for a in group]
    flat_ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    answer_ids, start = [], 0
    for group in answers:
        answer_ids.append([list(ids) for ids in flat_ids[start : start + len(group)]])
        start += len(group)
    return EncodedQuestions([list(q) for q in question_ids], answer_ids)


@dataclass
class FinetuneOutput:
    """One batch's losses and the health counts ORQA logs.

    Attributes:
        loss: [] mean over the batch of retriever_loss + reader_loss.
        retriever_loss, reader_loss: [B] per question.
        answer_retrieved: [B] some of the K retrieved blocks contains an answer (ORQA's top_K_match).
        answer_read: [B] a gold span exists in the R blocks read (ORQA's reader_oracle).
    """

    loss: torch.Tensor
    retriever_loss: torch.Tensor
    reader_loss: torch.Tensor
    answer_retrieved: torch.Tensor
    answer_read: torch.Tensor


class OpenQAFinetuner(nn.Module):
    """The trainable query tower and reader, with the frozen index and store they retrieve from.

    Wrap it in `DistributedDataParallel` as a whole: its forward is one training step's forward pass.

    Args:
        embedder: the query tower (trained). The index was built by a document tower (not trained).
        reader: the reader (trained).
        store: the blocks the index was built from; tokenizer: the store's tokenizer.
        index: the block embeddings; searched without gradient, its vectors never change.
        searcher_beam_size: K; reader_beam_size: R; reader_seq_len: T at most.
    """

    def __init__(
        self,
        embedder: RealmEmbedder,
        reader: RealmReader,
        store: BlockStore,
        index: Index,
        tokenizer: Any,
        searcher_beam_size: int,
        reader_beam_size: int,
        reader_seq_len: int,
    ) -> None:
        super().__init__()
        check_index_size(len(index), len(store))
        check_sparse_store(index, store)
        self.embedder = embedder
        self.reader = reader
        self.store = store
        self.index = index
        self.tokenizer = tokenizer
        self.retriever = RealmRetriever(store, tokenizer)
        self.searcher_beam_size = searcher_beam_size
        self.reader_beam_size = reader_beam_size
        self.reader_seq_len = reader_seq_len
        freeze_unused(self, UNUSED_PARAMETER_PREFIXES)

    def train(self, mode: bool = True) -> OpenQAFinetuner:
        super().train(mode)
        if not any(p.requires_grad for p in self.embedder.parameters()):
            self.embedder.eval()  # a frozen tower without dropout retrieves at every step what it will at inference
        return self

    def _retrieve_and_label(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        answer_ids: list[list[list[int]]],
        texts: Sequence[str] | None,
        labelled: int | None = None,
    ) -> tuple[Retrieval, list[list[int]], list[torch.Tensor]]:
        """Retrieve K blocks from the frozen index (their logits q . e_k differentiable in q only) and label
        the first `labelled` of them (None: all K) from their stored ids: the retrieval, the questions' ids,
        has_answers [labelled] per question."""
        k = min(self.searcher_beam_size, len(self.index))
        retrieved = retrieve(
            self.embedder, self.index, input_ids, attention_mask, k=k, texts=texts,
            embed_blocks=lambda ids: self.index.reconstruct(ids).to(self.reader.device),
        )  # fmt: skip
        questions = [row[mask.bool()].tolist() for row, mask in zip(input_ids.cpu(), attention_mask.cpu(), strict=True)]
        has_answers = []
        for b, question in enumerate(questions):
            ids = retrieved.block_ids[b, :labelled].numpy()
            tokens, lengths = self.store.token_ids_array(ids, pad_id=NO_TOKEN)  # [labelled, L], [labelled]
            has_answers.append(
                answers_in_blocks(self.tokenizer, question, tokens, lengths, answer_ids[b], self.reader_seq_len)
            )
        return retrieved, questions, has_answers

    @torch.no_grad()
    def answer_readable(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        answer_ids: list[list[list[int]]],
        texts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """[B] bool: some of the R blocks a training step would read for the question contains an answer
        (the step's `answer_read`, without reading). With a frozen query tower this never changes."""
        # Only the R blocks a step reads decide it (the step labels all K, for its retriever loss).
        _, _, has_answers = self._retrieve_and_label(input_ids, attention_mask, answer_ids, texts, self.reader_beam_size)
        return torch.tensor([bool(h.any()) for h in has_answers])

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        answer_ids: list[list[list[int]]],
        texts: Sequence[str] | None = None,
    ) -> FinetuneOutput:
        """
        Args:
            input_ids, attention_mask: [B, Q] questions (`collate_questions`).
            answer_ids: per question, its answers as token-id lists.
            texts: the B questions' strings, for an index that scores text too (a hybrid index chooses the
                K candidates with BM25 as well; it requires them).
        """
        device = self.reader.device
        # Retrieve K and label all K; reader inputs and gold spans are built for the R read only.
        retrieved, questions, has_answers = self._retrieve_and_label(input_ids, attention_mask, answer_ids, texts)
        block_ids = retrieved.block_ids  # [B, K]
        r = min(self.reader_beam_size, block_ids.shape[1])

        # Read and marginalise.
        outputs = read(
            self.reader, self.retriever, block_ids[:, :r], [[q] for q in questions], retrieved.retrieval_logits,
            max_length=self.reader_seq_len, answer_ids=answer_ids, has_answers=has_answers,
        ).outputs  # fmt: skip
        retriever_loss = torch.stack([o.retriever_loss for o in outputs]).float()  # [B]
        reader_loss = torch.stack([o.reader_loss for o in outputs]).float()  # [B]
        return FinetuneOutput(
            loss=(retriever_loss + reader_loss).mean(),
            retriever_loss=retriever_loss,
            reader_loss=reader_loss,
            answer_retrieved=torch.tensor([bool(h.any()) for h in has_answers], device=device),
            answer_read=torch.stack([o.reader_correct.any() for o in outputs]),
        )
