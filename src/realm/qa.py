"""The one retrieve and the one read: every caller that goes from a question to blocks, or from blocks to
spans, goes through here (`Pipeline`, `RealmForOpenQA`, fine-tuning's `OpenQAFinetuner`, and pre-training's
`RealmPretrainer`, which retrieves here and reads with its own knowledge-augmented encoder).

    Retrieve.  q = Embed(question)                                                          [B, D]
               candidates = index.search(q, k, texts)   the ONE place blocks are chosen    [B, K]
               [each question's source block dropped]   (pre-training: never read the answer's own block)
               [the null block put first]               (pre-training: the "no retrieval" candidate)
               retrieval_logits = q . e_k               e_k from the index's own scores (inference),
                                                        from its stored vectors (fine-tuning, gradient
                                                        into q), or from a tower (pre-training, gradient
                                                        into both towers)                    [B, K]
    Read.      `[CLS] question [SEP] block [SEP]` for each (question, block) -> reader trunk  [B, R, T, H]
               -> span logits + retrieval logit (joint scores), the prediction, and with answers the
               ORQA losses                                                                   [B][R, S]

The index sees the questions' strings when the caller has them (`texts`) and the index asks for them
(`Index.wants_texts`, a sparse or hybrid index); dense indexes never see them. See `realm.index.base`.

Shapes: the README's glossary (B questions, Q question tokens, K retrieved, R read, T reader tokens, H hidden,
S span candidates, A gold spans per block, D projection).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from realm.index.base import MISSING_ID, Index
from realm.modeling.inference import run_bucketed
from realm.modeling.outputs import RealmReaderOutput
from realm.modeling.reader import predict_spans
from realm.retrieval import ReaderInputs, RealmRetriever, stack_reader_inputs

NULL_BLOCK = -1  # the id of the null block among retrieved candidates (pre-training)

Timer = Callable[[str], AbstractContextManager[Any]]


@dataclass
class Retrieval:
    """The blocks retrieved for B questions, best first.

    Attributes:
        block_ids: [B, K] int64 on the CPU; `NULL_BLOCK` (-1) marks the null block.
        retrieval_logits: [B, K] float32 q . e_k (the paper's relevance score f(x, z)); softmax over K gives
            p(z | x). Differentiable in the query (and in the block tower when it re-embeds the blocks).
        question_ids: [B, Q] the token ids the questions were embedded from (right-padded), on the CPU.
    """

    block_ids: Tensor
    retrieval_logits: Tensor
    question_ids: Tensor


def retrieval_logits(query: Tensor, blocks: Tensor) -> Tensor:
    """q . e for each retrieved block: query [B, D], blocks [B, K, D] -> [B, K], in float32 (outside autocast:
    the softmax over thousands of blocks needs the precision)."""
    with torch.autocast(query.device.type, enabled=False):
        return torch.einsum("bd,bkd->bk", query.float(), blocks.float())  # [B, K]


def retrieve(
    embedder: torch.nn.Module,
    index: Index,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    token_type_ids: Tensor | None = None,
    *,
    k: int,
    texts: Sequence[str] | None = None,
    exclude: Sequence[int] | None = None,
    null_block: bool = False,
    embed_blocks: Callable[[Tensor], Tensor] | None = None,
    timer: Timer | None = None,
    bucket_rows: int = 0,
) -> Retrieval:
    """Embed the questions, search the index, and score the blocks found.

    Args:
        embedder: the query tower (`RealmEmbedder`).
        index: any `realm.index.Index`; `index.search` is the only place candidates are chosen.
        input_ids, attention_mask, token_type_ids: [B, Q] questions (`[CLS] ... [SEP]`); types default to 0.
        k: blocks returned per question, the null block included (at most the index size).
        texts: the questions' strings, handed to `index.search` when the index asks for them
            (`Index.wants_texts`: a sparse or hybrid index).
        exclude: per question a block id never to return (its source block; -1 for none). One more block
            is searched for, so that K blocks remain once it is dropped.
        null_block: put the null block (id -1) first; the index then supplies k - 1 blocks. With k = 1
            nothing is searched.
        embed_blocks: block ids [B, K] -> embeddings [B, K, D] to score against (the index's stored vectors,
            or a document tower re-embedding them). None: the search's own scores are the logits (inference:
            no gradient, no second product).
        timer: a context manager factory timing the parts "search" and "reembed" (pre-training's logs).
        bucket_rows: embed the questions in length buckets of this many rows (0: one padded call;
            `realm.modeling.inference.run_bucketed`).
    Raises:
        RuntimeError: the index returned fewer usable blocks than asked (an approximate index searching too
            little of itself).
    """
    timed = timer or (lambda part: nullcontext())
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(input_ids)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    query = run_bucketed(
        lambda ids, mask, types: embedder(ids, attention_mask=mask, token_type_ids=types).projected_score,
        input_ids, attention_mask, token_type_ids, bucket_rows,
    )  # [B, D]  # fmt: skip
    with timed("search"):
        block_ids, scores = search_blocks(index, query, k, texts=texts, exclude=exclude, null_block=null_block)
    if embed_blocks is None:
        logits = scores.to(query.device)  # [B, K]
    else:
        with timed("reembed"):
            blocks = embed_blocks(block_ids)  # [B, K, D]
        logits = retrieval_logits(query, blocks.to(query.device))  # [B, K]
    return Retrieval(block_ids, logits, input_ids.cpu())


@torch.no_grad()
def search_blocks(
    index: Index,
    query: Tensor,
    k: int,
    *,
    texts: Sequence[str] | None = None,
    exclude: Sequence[int] | None = None,
    null_block: bool = False,
) -> tuple[Tensor, Tensor]:
    """Candidate choice, the one call of `index.search`: block ids [B, K] (CPU) and the search's scores.

    Args: as `retrieve`; `query` [B, D] (no gradient flows from here). The null block's score is not
    defined: with `null_block` the scores cover the K - 1 searched blocks only.
    """
    batch = query.shape[0]
    wanted = k - int(null_block)  # blocks the index must supply
    if wanted == 0:
        block_ids, scores = torch.empty((batch, 0), dtype=torch.long), torch.empty((batch, 0))
    else:
        extra = int(exclude is not None)  # room for the excluded block
        # Only an index that asks for the strings gets them: an Index written to the two-argument contract works.
        text_args = {"texts": texts} if texts is not None and index.wants_texts else {}
        found = index.search(query.detach().float(), wanted + extra, **text_args)  # [B, K']
        block_ids, scores = _usable(found.ids.cpu(), found.scores, wanted, exclude)  # [B, K - null]
    if null_block:
        block_ids = torch.cat([torch.full((batch, 1), NULL_BLOCK, dtype=torch.long), block_ids], dim=1)  # [B, K]
    return block_ids, scores


def _usable(ids: Tensor, scores: Tensor, wanted: int, exclude: Sequence[int] | None) -> tuple[Tensor, Tensor]:
    """The first `wanted` hits of each row that are real blocks and not the row's excluded block."""
    if exclude is None:
        if bool((ids[:, :wanted] == MISSING_ID).any()):
            raise RuntimeError(
                f"the index found fewer than {wanted} blocks for a question (an approximate index with a small "
                "nprobe?); ask for fewer blocks or search more of the index"
            )
        return ids[:, :wanted], scores[:, :wanted]
    keep_ids, keep_scores = [], []
    for row, (row_ids, source) in enumerate(zip(ids.tolist(), exclude, strict=True)):
        cols = [c for c, i in enumerate(row_ids) if i != source and i != MISSING_ID][:wanted]
        if len(cols) < wanted:
            raise RuntimeError(
                f"the index returned {len(cols)} usable blocks for a question, fewer than the {wanted} asked for "
                "(an approximate index searching too little?)"
            )
        keep_ids.append([row_ids[c] for c in cols])
        keep_scores.append(scores[row, cols])
    return torch.tensor(keep_ids, dtype=torch.long), torch.stack(keep_scores)


@dataclass
class SpanScores:
    """One question's joint span scores over the blocks read.

    Attributes:
        logits: [R, S] span logit + the block's retrieval logit (spans leaving the block get finfo.min).
        starts, ends: [S] the span candidates' first and last (inclusive) token positions.
    """

    logits: Tensor
    starts: Tensor
    ends: Tensor


@dataclass
class Reading:
    """What `read` returns for B questions.

    Attributes:
        inputs: the reader inputs of every block passed in, right-padded to one T: `input_ids`,
            `token_type_ids`, `attention_mask`, `special_tokens_mask`, `block_mask`, each [B, K', T].
        encoded: per question, the port's reader inputs with the answers located in them (`ReaderInputs`).
        spans: per question, the joint span scores of its R blocks read.
        outputs: per question, the reader's prediction (and, with answers, its losses).
    """

    inputs: dict[str, Tensor]
    encoded: list[ReaderInputs]
    spans: list[SpanScores]
    outputs: list[RealmReaderOutput]


def read(
    reader: torch.nn.Module,
    retriever: RealmRetriever,
    block_ids: Tensor,
    question_ids: Sequence[Any],
    retrieval_logits: Tensor,
    *,
    max_length: int,
    answer_ids: Sequence[Any] | None = None,
    has_answers: Sequence[Any] | None = None,
    num_read: int | None = None,
    bucket_rows: int = 0,
) -> Reading:
    """Build the (question, block) reader inputs, run the trunk over the first R blocks in one call, score spans.

    Args:
        reader: `RealmReader`.
        retriever: the `RealmRetriever` over the blocks `block_ids` name.
        block_ids: [B, K'] blocks to build reader inputs for (K' >= R).
        question_ids: per question its ids ([1, Q] or [Q], tensor or list; special tokens and padding dropped).
        retrieval_logits: [B, K] (K >= R), added to the span logits; all K enter the retriever loss.
        max_length: T at most (`reader_seq_len`).
        answer_ids: per question its answers' ids; the losses are computed when given.
        has_answers: per question [K] the retriever loss's positives; default the retriever's own labels of
            the K' blocks encoded.
        num_read: R, the first blocks read (default all K').
        bucket_rows: run the trunk over the B x R rows in length buckets of this many rows (0: one padded call).
    """
    batch = block_ids.shape[0]
    encoded = [
        retriever(
            block_ids[b].cpu(), question_ids[b], None if answer_ids is None else answer_ids[b], max_length=max_length
        )
        for b in range(batch)
    ]
    inputs = stack_reader_inputs([e.concat_inputs for e in encoded], retriever.tokenizer.pad_token_id, reader.device)
    r = block_ids.shape[1] if num_read is None else min(num_read, block_ids.shape[1])
    t, n = inputs["input_ids"].shape[2], batch * r
    # All B x R rows in one bucketed call: the span scorer too (per question, its ~30 small ops cost more than
    # their arithmetic on a loaded CPU).
    span_logits, starts, ends = reader.span_logits(
        *(inputs[name][:, :r].reshape(n, t) for name in ("input_ids", "attention_mask", "token_type_ids", "block_mask")),
        bucket_rows,
    )  # [B*R, S], [S], [S]
    joint = span_logits.view(batch, r, -1) + retrieval_logits[:, :r, None]  # [B, R, S]
    spans, outputs = [], []
    for b in range(batch):
        logits = joint[b]  # [R, S]
        spans.append(SpanScores(logits, starts, ends))
        labels = {}
        if answer_ids is not None:
            positives = encoded[b].has_answers if has_answers is None else has_answers[b]
            labels = dict(
                has_answers=torch.as_tensor(positives, dtype=torch.bool).to(reader.device),  # [K]
                start_positions=torch.tensor(encoded[b].start_pos, dtype=torch.long, device=reader.device),  # [R, A]
                end_positions=torch.tensor(encoded[b].end_pos, dtype=torch.long, device=reader.device),  # [R, A]
            )
        outputs.append(predict_spans(logits, starts, ends, t, retrieval_logits[b], **labels))
    return Reading(inputs, encoded, spans, outputs)
