"""`Pipeline`: questions in, answers out, each with the evidence it was read from.

Batched end to end: all questions are embedded in one call, searched in one call, and their top-k blocks
read in one reader call. Reader inputs come from the block store's pre-tokenized ids (no decoding or
re-tokenizing); only the blocks actually read are tokenized again, with offsets, to turn the predicted
wordpiece span into a character span of the block's original text.

Shapes: B questions, K blocks read per question, T reader tokens, S span candidates, D embedding size.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

from realm.config import RealmConfig
from realm.corpus import BlockStore
from realm.index import Index, open_index
from realm.index.base import check_index_size
from realm.modeling.checkpoint import resolve_weights
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.reader import RealmReader
from realm.qa import Retrieval, read, retrieve
from realm.retrieval import RealmRetriever
from realm.tokenization import RealmTokenizerFast
from realm.verify import check_corpus


@dataclass
class Evidence:
    """One block read for a question, with the best answer span found in it."""

    block_id: int
    title: str
    text: str
    retrieval_score: float  # the retrieval logit: inner product of question and block embeddings
    retrieval_probability: float  # softmax of the retrieval logits over the K blocks read
    span_text: str
    span_start: int  # character offsets of the best span in `text` (end exclusive)
    span_end: int
    span_score: float  # joint score: span logit + retrieval logit


@dataclass
class Answer:
    question: str
    text: str  # the best span, in the block's original characters
    score: float  # its joint score
    block_id: int
    evidence: list[Evidence]  # the K blocks read, best retrieved first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Pipeline:
    """Open-domain QA over a block store and an index.

    Args:
        embedder: the question tower (`RealmEmbedder`).
        reader: `RealmReader`.
        store: the blocks; `index`: their embeddings (built from this store).
        tokenizer: a fast tokenizer (for offsets); default the store's own.
        k: blocks read per question (5, as REALM).
        max_question_length: question tokens kept, special tokens included.
    """

    def __init__(
        self,
        embedder: RealmEmbedder,
        reader: RealmReader,
        store: BlockStore,
        index: Index,
        tokenizer: RealmTokenizerFast | None = None,
        k: int = 5,
        max_question_length: int = 64,
    ) -> None:
        check_index_size(len(index), len(store), rebuild=f"realm index build --store {store.path} --embedder <embedder> --out <index>")
        self.embedder = embedder.eval()
        self.reader = reader.eval()
        self.store = store
        self.index = index
        self.tokenizer = tokenizer or RealmTokenizerFast.from_pretrained(store.path / "tokenizer")
        self.retriever = RealmRetriever(store, self.tokenizer)
        self.k = k
        self.max_question_length = max_question_length

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str],
        store: str | os.PathLike[str] | BlockStore,
        index: str | os.PathLike[str] | Index,
        *,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> Pipeline:
        """Load the embedder and reader of a `RealmForOpenQA` checkpoint (its `block_emb`, if any, is not
        read: the index replaces it), open the store and the index.

        Args:
            model: a `RealmForOpenQA` checkpoint directory (what `realm finetune` writes).
            store, index: directories, or opened objects.
            device: where the models run.
            kwargs: `k`, `max_question_length`, `tokenizer`.
        """
        config = RealmConfig.from_pretrained(model)
        weights = resolve_weights(model)
        embedder, reader = RealmEmbedder(config), RealmReader(config)
        embedder.load_checkpoint(weights, prefix="embedder.")
        reader.load_checkpoint(weights, prefix="reader.")
        store = store if isinstance(store, BlockStore) else BlockStore.open(store)
        if not isinstance(index, Index):  # the same checks as /reload: store, embedder, size, vocabulary
            check_corpus(store, index, embedder, model)
        index = index if isinstance(index, Index) else open_index(index)
        if device is not None:
            embedder.to(device)
            reader.to(device)
        return cls(embedder, reader, store, index, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.reader.device

    @torch.inference_mode()
    def ask(self, questions: str | list[str], k: int | None = None) -> list[Answer]:
        """Answer each question (one batch; split very large lists yourself to bound memory)."""
        questions = [questions] if isinstance(questions, str) else list(questions)
        if not questions:
            return []
        retrieved = self.retrieve(questions, k or self.k)
        return self.read(questions, retrieved, k)

    @torch.inference_mode()
    def retrieve(self, questions: list[str], k: int) -> Retrieval:
        """Embed the questions and search the index: the top-k block ids and retrieval logits of each."""
        if any(not isinstance(q, str) or not q.strip() for q in questions):
            raise ValueError("questions must be non-empty strings")
        encoded = self.tokenizer(
            questions, padding=True, truncation=True, max_length=self.max_question_length, return_tensors="pt"
        ).to(self.device)
        return retrieve(
            self.embedder, self.index, encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"],
            k=min(k, len(self.store)), texts=questions,
        )  # fmt: skip

    @torch.inference_mode()
    def read(self, questions: list[str], retrieved: Retrieval, k: int | None = None) -> list[Answer]:
        """Read the first k (default `self.k`) retrieved blocks of every question in one reader call."""
        k = min(k or self.k, retrieved.block_ids.shape[1])
        logits, block_ids = retrieved.retrieval_logits[:, :k], retrieved.block_ids[:, :k]  # [B, K]
        reading = read(
            self.reader, self.retriever, block_ids, retrieved.question_ids[:, None], logits,
            max_length=self.reader.config.reader_seq_len,
        )  # fmt: skip
        token_type_ids, attention_mask = reading.inputs["token_type_ids"], reading.inputs["attention_mask"]  # [B, K, T]
        answers = []
        for b, question in enumerate(questions):
            spans = reading.spans[b]
            best_per_block, best_span = spans.logits.float().max(dim=1)  # [K], [K]
            # Question tokens in each row (truncation may shorten the question more for a longer block).
            question_lens = ((token_type_ids[b] == 0) & attention_mask[b].bool()).sum(dim=1) - 2  # [K]
            evidence = self._evidence(
                block_ids[b].tolist(), logits[b].float(), best_per_block, spans.starts[best_span],
                spans.ends[best_span], question_lens,
            )  # fmt: skip
            top = int(best_per_block.argmax())
            answers.append(Answer(question, evidence[top].span_text, evidence[top].span_score, evidence[top].block_id, evidence))
        return answers

    def _evidence(
        self,
        block_ids: list[int],
        retrieval_logits: torch.Tensor,
        span_scores: torch.Tensor,
        starts: torch.Tensor,
        ends: torch.Tensor,
        question_lens: torch.Tensor,
    ) -> list[Evidence]:
        """Blocks read -> `Evidence`, mapping each best span from reader positions to block characters."""
        texts, titles = self.store.texts(block_ids), self.store.titles(block_ids)
        offsets = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        probabilities = retrieval_logits.softmax(dim=0)
        evidence = []
        for i, block_id in enumerate(block_ids):
            # Reader position p holds block token p - (question_len + 2): after [CLS] question [SEP].
            first = int(starts[i]) - int(question_lens[i]) - 2
            last = int(ends[i]) - int(question_lens[i]) - 2
            if 0 <= first <= last < len(offsets[i]):
                start, end = offsets[i][first][0], offsets[i][last][1]
            else:  # no span fits inside this block (e.g. an empty block)
                start = end = 0
            evidence.append(
                Evidence(
                    block_id=block_id,
                    title=titles[i],
                    text=texts[i],
                    retrieval_score=float(retrieval_logits[i]),
                    retrieval_probability=float(probabilities[i]),
                    span_text=texts[i][start:end],
                    span_start=start,
                    span_end=end,
                    span_score=float(span_scores[i]),
                )
            )
        return evidence

