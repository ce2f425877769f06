"""`Pipeline`: questions in, answers out, each with the evidence it was read from and a probability.

Batched end to end: all questions are embedded in one call, searched in one call, and their top-k blocks
read in one reader call. Reader inputs come from the block store's pre-tokenized ids (no decoding or
re-tokenizing); only the blocks actually read are tokenized again, with offsets, to turn the predicted
wordpiece span into a character span of the block's original text.

Retrieval is dense (the index), or hybrid when a sparse (BM25) index of the same store is given: the
`HybridIndex` chooses the blocks, the embedder's inner products still weigh them (`realm.index.hybrid`).

The answer is the best span (ORQA / REALM's prediction: the highest joint score over the blocks read and
their spans); its probability is the marginal of its string under that joint distribution (the same
string's spans summed; `answer_marginals`), at the pipeline's `temperature` (1: the reader's own; the demo
fits it on its dev set, `realm.eval.calibration.fit_temperature`), and `sure` when it reaches the
pipeline's threshold. `from_pretrained` also loads a bundle directory
(`pipeline.json`, `realm.bundle`).

Shapes: B questions, K blocks read per question, T reader tokens, S span candidates, D embedding size.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from realm.bundle import DEFAULT_THRESHOLD, is_bundle, read_bundle
from realm.config import RealmConfig
from realm.corpus import BlockStore
from realm.eval.metrics import normalize_answer
from realm.index import Index, open_index
from realm.index.base import check_index_size
from realm.index.hybrid import (
    DEFAULT_DEPTH,
    DEFAULT_WEIGHT,
    check_sparse_store,
    describe_retrieval,
    with_sparse,
)
from realm.index.sparse import SparseIndex
from realm.modeling.checkpoint import resolve_weights
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.inference import InferenceConfig, autocast, quantize_trunk
from realm.modeling.reader import RealmReader
from realm.objectives import top_joint_spans
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


MARGINAL_SPANS = 50  # M: the (block, span) pairs of highest joint probability summed into answers


@dataclass
class Answer:
    """An answer with the probability a person can weigh it by.

    Attributes:
        question: as asked.
        text: the answer of highest `probability`, as its most probable span reads in its block.
        score: that span's joint score (span logit + retrieval logit; kept for compatibility: a raw logit).
        block_id: the block that span is in.
        evidence: the K blocks read, best retrieved first, each with its own best span.
        probability: p(text | question), the reader's marginal (see `answer_marginals`).
        sure: probability >= the pipeline's threshold; below it, show the answer as a guess ("not sure").
        span_start, span_end: `text`'s characters in block `block_id`'s text (end exclusive).
    """

    question: str
    text: str
    score: float
    block_id: int
    evidence: list[Evidence]
    probability: float = 0.0
    sure: bool = False
    span_start: int = 0
    span_end: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MarginalAnswer:
    """One distinct answer string and its marginal probability (`answer_marginals`).

    Attributes:
        text: its most probable span's text; key: that text normalised (SQuAD/ORQA `normalize_answer`).
        probability: the summed joint probability of its spans among the M.
        block, span: the (block read, span candidate) indices of its most probable span.
        rank: that span's place among the M (0: the best span of all).
        pairs: the flat indices (block x S + span) of all its spans among the M.
    """

    text: str
    key: str
    probability: float
    block: int
    span: int
    rank: int
    pairs: tuple[int, ...]


def answer_marginals(
    reader_logits: torch.Tensor, span_text: Callable[[int, int], str], top: int = MARGINAL_SPANS,
    temperature: float = 1.0,
) -> list[MarginalAnswer]:  # fmt: skip
    """REALM's answer marginal over the blocks read, one entry per distinct answer string, most probable first:

        p(a | x) = sum over (z, s) with normalize(text(z, s)) = normalize(a) of p(z, s | x)
        p(z, s | x) = softmax over all R x S pairs of (span logit + retrieval logit of z) / temperature

    (`realm.objectives.top_joint_spans`: the distribution the reader loss marginalises.) The softmax runs
    over all pairs, the sum over the M most probable ones only (M = `top`, 50 by default, which bounds the
    work per question to M span-to-text mappings): each probability is the exact sum over its spans among
    those M, a lower bound of the sum over all its spans. Over distinct answers the probabilities sum to at
    most 1. M = 50 was enough in practice on the `realm demo --quick` reader (35 held-out questions, ~1,900
    pairs each): the answers' mean probability was 0.033 with M = 50 and 0.034 with every pair; the 63% of
    the mass beyond the top 50 is spread over other strings.

    Args:
        reader_logits: [R, S] joint scores of one question.
        span_text: (block index, span index) -> the span's characters in its block.
        top: M.
        temperature: divides the joint scores (1: the reader's distribution; > 1 flattens it). It changes the
            probabilities, never their order.

    Spans whose text normalises to nothing (no characters, or only articles and punctuation: "the", ".")
    are no answer: they are left out, their mass with them.
    """
    probabilities, blocks, spans = top_joint_spans(reader_logits / temperature, top)  # [M'] each
    width = reader_logits.shape[1]
    found: dict[str, MarginalAnswer] = {}
    for rank, (p, z, span) in enumerate(zip(probabilities.tolist(), blocks.tolist(), spans.tolist(), strict=True)):
        text = span_text(z, span)
        key = normalize_answer(text)
        if not key:  # no text, or only articles and punctuation ("the", "."): not an answer a person can use
            continue
        best = found.get(key)
        if best is None:  # pairs come most probable first: the first is the answer's best span
            found[key] = MarginalAnswer(text, key, p, z, span, rank, (z * width + span,))
        else:
            found[key] = dataclasses.replace(best, probability=best.probability + p, pairs=(*best.pairs, z * width + span))
    return sorted(found.values(), key=lambda a: -a.probability)  # stable: ties keep the best-span order


@dataclass(frozen=True)
class AnswerMass:
    """What an answer's probability is made of: all R x S joint scores of its question, flattened, and the
    flat indices of the answer's spans among the M most probable pairs (empty: no answer read)."""

    scores: torch.Tensor  # [R*S]
    pairs: torch.Tensor  # [P] int64

    def probability(self, temperature: float = 1.0) -> float:
        """The answer's probability at this temperature (as `answer_marginals` computes it)."""
        if self.pairs.numel() == 0:
            return 0.0
        return float((self.scores.float() / temperature).softmax(dim=0)[self.pairs].sum())


class Pipeline:
    """Open-domain QA over a block store and an index.

    Args:
        embedder: the question tower (`RealmEmbedder`).
        reader: `RealmReader`.
        store: the blocks; `index`: their embeddings (built from this store), or a `HybridIndex` of them and
            their BM25 index (`realm.index.hybrid.with_sparse`).
        tokenizer: a fast tokenizer (for offsets); default the store's own.
        k: blocks read per question (5, as REALM).
        max_question_length: question tokens kept, special tokens included.
        threshold: answers whose probability is below it are not `sure` (default 0.3, in [0, 1]).
        marginal_spans: M, the most probable (block, span) pairs summed into answer probabilities.
        temperature: divides the joint scores before the answer probability is taken (1: the reader's own;
            fitted on a dev set by `realm.eval.calibration.fit_temperature`).
        inference: length buckets and the fast mode (`realm.modeling.inference.InferenceConfig`; default
            float32 with length buckets). Its int8 part quantises the reader's trunk in place.
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
        threshold: float = DEFAULT_THRESHOLD,
        marginal_spans: int = MARGINAL_SPANS,
        temperature: float = 1.0,
        inference: InferenceConfig | None = None,
    ) -> None:
        check_index_size(len(index), len(store), rebuild=f"realm index build --store {store.path} --embedder <embedder> --out <index>")
        check_sparse_store(index, store)  # a hybrid's BM25 half must come from this store too
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
        if marginal_spans < 1:
            raise ValueError(f"marginal_spans must be >= 1, got {marginal_spans}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.embedder = embedder.eval()
        self.reader = reader.eval()
        self.store = store
        self.index = index
        self.tokenizer = tokenizer or RealmTokenizerFast.from_pretrained(store.path / "tokenizer")
        self.retriever = RealmRetriever(store, self.tokenizer)
        self.k = k
        self.max_question_length = max_question_length
        self.threshold = float(threshold)
        self.marginal_spans = marginal_spans
        self.temperature = float(temperature)
        self.inference = inference or InferenceConfig()
        if self.inference.uses_int8(self.reader.device):
            quantize_trunk(self.reader.realm.encoder)  # the query tower stays float32 (see InferenceConfig)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str],
        store: str | os.PathLike[str] | BlockStore | None = None,
        index: str | os.PathLike[str] | Index | None = None,
        *,
        sparse: str | os.PathLike[str] | SparseIndex | Literal[False] | None = None,
        fusion: str | None = None,
        depth: int | None = None,
        weight: float | None = None,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> Pipeline:
        """Load the embedder and reader of a `RealmForOpenQA` checkpoint (its `block_emb`, if any, is not
        read: the index replaces it), open the store and the index (and the sparse index: hybrid retrieval).

        `Pipeline.from_pretrained(bundle_dir)` (no store, no index) loads everything a `pipeline.json` in
        `bundle_dir` names (`realm.bundle`); keyword arguments given here override the bundle's settings.

        Args:
            model: a `RealmForOpenQA` checkpoint directory (what `realm finetune` writes), or a bundle directory.
            store, index: directories, or opened objects.
            sparse: a BM25 index of the same store (directory or `SparseIndex`; refused if built from another
                store), for hybrid retrieval; None: dense only (with a bundle: the bundle's); False: dense only.
            fusion, depth, weight: the hybrid's fusion ("weighted" or "rrf"), hits per list, BM25 weight
                (None: the bundle's, else `HybridIndex`'s defaults: weighted, 100, 0.5).
            device: where the models run.
            kwargs: `k`, `max_question_length`, `tokenizer`, `threshold`, `marginal_spans`, `temperature`,
                `inference`.
        """
        if store is None and index is None:
            if not is_bundle(model):
                raise ValueError(
                    f"{model} holds no pipeline.json: give a bundle directory (realm demo writes one), or the "
                    "model, store and index"
                )
            settings = read_bundle(model).pipeline_kwargs()
            given = {"sparse": sparse, "fusion": fusion, "depth": depth, "weight": weight, **kwargs}
            settings.update({name: value for name, value in given.items() if value is not None})
            return cls.from_pretrained(device=device, **settings)
        if store is None or index is None:
            raise ValueError("give both the store and the index (or neither, with a bundle directory as model)")
        config = RealmConfig.from_pretrained(model)
        weights = resolve_weights(model)
        embedder, reader = RealmEmbedder(config), RealmReader(config)
        embedder.load_checkpoint(weights, prefix="embedder.")
        reader.load_checkpoint(weights, prefix="reader.")
        store = store if isinstance(store, BlockStore) else BlockStore.open(store)
        if not isinstance(index, Index):  # the same checks as /reload: store, embedder, size, vocabulary
            check_corpus(store, index, embedder, model)
        index = index if isinstance(index, Index) else open_index(index)
        index = with_sparse(
            index, sparse or None, store, fusion=fusion or "weighted", depth=DEFAULT_DEPTH if depth is None else depth,
            weight=DEFAULT_WEIGHT if weight is None else weight,
        )  # fmt: skip
        if device is not None:
            embedder.to(device)
            reader.to(device)
        return cls(embedder, reader, store, index, **kwargs)

    def retrieval(self) -> dict[str, Any]:
        """How this pipeline retrieves: {"mode": "dense"} or {"mode": "hybrid", "fusion": ..., ...}."""
        return describe_retrieval(self.index)

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
        with autocast(self.inference, self.device):
            return retrieve(
                self.embedder, self.index, encoded["input_ids"], encoded["attention_mask"], encoded["token_type_ids"],
                k=min(k, len(self.store)), texts=questions, bucket_rows=self.inference.bucket_rows,
            )  # fmt: skip

    @torch.inference_mode()
    def read(self, questions: list[str], retrieved: Retrieval, k: int | None = None) -> list[Answer]:
        """Read the first k (default `self.k`) retrieved blocks of every question in one reader call."""
        return [answer for answer, _ in self._read(questions, retrieved, k)]

    @torch.inference_mode()
    def answer_masses(self, questions: list[str], k: int | None = None) -> list[tuple[Answer, AnswerMass]]:
        """Each question's answer with what its probability is made of, to fit `temperature` on a dev set
        (`realm.eval.calibration.fit_temperature`) without reading again for every candidate temperature."""
        return self._read(questions, self.retrieve(questions, k or self.k), k)

    def _read(self, questions: list[str], retrieved: Retrieval, k: int | None) -> list[tuple[Answer, AnswerMass]]:
        k = min(k or self.k, retrieved.block_ids.shape[1])
        logits, block_ids = retrieved.retrieval_logits[:, :k], retrieved.block_ids[:, :k]  # [B, K]
        with autocast(self.inference, self.device):
            reading = read(
                self.reader, self.retriever, block_ids, retrieved.question_ids[:, None], logits,
                max_length=self.reader.config.reader_seq_len, bucket_rows=self.inference.bucket_rows,
            )  # fmt: skip
        token_type_ids, attention_mask = reading.inputs["token_type_ids"], reading.inputs["attention_mask"]  # [B, K, T]
        answers: list[tuple[Answer, AnswerMass]] = []
        for b, question in enumerate(questions):
            spans = reading.spans[b]
            scores = spans.logits.float()  # [K, S]
            best_per_block, best_span = scores.max(dim=1)  # [K], [K]
            # Question tokens in each row (truncation may shorten the question more for a longer block).
            question_lens = ((token_type_ids[b] == 0) & attention_mask[b].bool()).sum(dim=1) - 2  # [K]
            ids = block_ids[b].tolist()
            chars = _CharSpans(self.store.texts(ids), self.tokenizer, question_lens.tolist())
            evidence = self._evidence(
                ids, chars, logits[b].float(), best_per_block, spans.starts[best_span], spans.ends[best_span]
            )
            found = answer_marginals(
                scores, chars.of_candidates(spans.starts, spans.ends), self.marginal_spans, self.temperature
            )
            if found:  # the best span that reads as an answer, with its string's marginal
                best = min(found, key=lambda a: a.rank)
                z, probability, score = best.block, best.probability, float(scores[best.block, best.span])
                start, end = chars.offsets(z, int(spans.starts[best.span]), int(spans.ends[best.span]))
                pairs = best.pairs
            else:  # no span among the M reads as an answer (e.g. only "."): the best span, with probability 0
                z = int(best_per_block.argmax())
                probability, score, pairs = 0.0, evidence[z].span_score, ()
                start, end = evidence[z].span_start, evidence[z].span_end
            answer = Answer(question, chars.texts[z][start:end], score, ids[z], evidence, probability,
                            probability >= self.threshold, start, end)  # fmt: skip
            answers.append((answer, AnswerMass(scores.reshape(-1).cpu(), torch.tensor(pairs, dtype=torch.long))))
        return answers

    def _evidence(
        self,
        block_ids: list[int],
        chars: _CharSpans,
        retrieval_logits: torch.Tensor,
        span_scores: torch.Tensor,
        starts: torch.Tensor,
        ends: torch.Tensor,
    ) -> list[Evidence]:
        """Blocks read -> `Evidence`, mapping each best span from reader positions to block characters."""
        titles = self.store.titles(block_ids)
        probabilities = retrieval_logits.softmax(dim=0)
        evidence = []
        for i, block_id in enumerate(block_ids):
            start, end = chars.offsets(i, int(starts[i]), int(ends[i]))
            evidence.append(
                Evidence(
                    block_id=block_id,
                    title=titles[i],
                    text=chars.texts[i],
                    retrieval_score=float(retrieval_logits[i]),
                    retrieval_probability=float(probabilities[i]),
                    span_text=chars.texts[i][start:end],
                    span_start=start,
                    span_end=end,
                    span_score=float(span_scores[i]),
                )
            )
        return evidence


class _CharSpans:
    """Reader token spans of one question's blocks -> character spans of the blocks' original text."""

    def __init__(self, texts: list[str], tokenizer: RealmTokenizerFast, question_lens: list[int]) -> None:
        self.texts = texts
        self.question_lens = question_lens
        self._offsets = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]

    def offsets(self, block: int, start: int, end: int) -> tuple[int, int]:
        """Characters [start, end) of the reader span start..end (inclusive) of block `block`; (0, 0) if none."""
        # Reader position p holds block token p - (question_len + 2): after [CLS] question [SEP].
        first = start - self.question_lens[block] - 2
        last = end - self.question_lens[block] - 2
        offsets = self._offsets[block]
        if 0 <= first <= last < len(offsets):
            return offsets[first][0], offsets[last][1]
        return 0, 0  # the span is not inside this block (e.g. an empty block)

    def text(self, block: int, start: int, end: int) -> str:
        first, last = self.offsets(block, start, end)
        return self.texts[block][first:last]

    def of_candidates(self, starts: torch.Tensor, ends: torch.Tensor) -> Callable[[int, int], str]:
        """(block, span candidate) -> its text, for span candidates with token starts [S] and ends [S]."""
        first, last = starts.tolist(), ends.tolist()
        return lambda block, span: self.text(block, first[span], last[span])
