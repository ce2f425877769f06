"""The demo's retriever: the imported sentence encoder's own embedding, and what training it without labels did.

all-MiniLM-L6-v2 is a sentence-embedding model trained to be read by mean pooling; its vectors retrieve real
questions well zero-shot. REALM's embedder reads `LayerNorm(dense(pooler([CLS])))`, a head `init_from_bert`
leaves fresh. The demo therefore imports it with `retriever_pooling="mean"` and an identity head
(`realm.modeling.bert_import.identity_head`, projection size = hidden size 384): its dense retrieval *is* the
zero-shot mean pooling (centred by the LayerNorm), and the retriever stage trains nothing by default.

What we measured before choosing that (dev set of human-style questions, gold-article recall@1/5/20; README):
- Supervised training on the corpus's pseudo-questions (description questions, in-batch negatives) taught the
  trunk their form and forgot real questions (recall@1 0.77 -> 0.31 on the issue's held-out set); any supervised
  term, even at weight 0.01 beside distillation, lowered dev recall; a contrastive loss on the description
  questions with hard negatives from the zero-shot index, on a head over frozen mean-pooled features, moved dev
  recall within noise (0.690/0.890/0.943 against 0.676/0.900/0.938 before it).
- Distilling the mean-pooled vectors into the [CLS] head (`distill_head`, trunk frozen) reached 0.643/0.852/0.938
  against zero-shot's 0.671/0.905/0.943: [CLS] does not carry the sentence vector, and a 128-d projection alone
  loses recall@5 even when it reads the mean (0.667/0.871/0.952).

`distill_head` stays for embedders that must read [CLS] (`DemoConfig(retriever_pooling="cls",
retriever_steps=400)` reproduces the earlier demo): it trains only the head (`realm.pooler` + `cls`) so that the
cosine similarities of its outputs match the mean-pooled teacher's, scores the dev questions every `eval_every`
steps and keeps the best head, the starting one included, so the stage cannot lower dev recall.

Shapes: N blocks, M training texts, Q questions, B batch, H hidden size, D retriever_proj_size.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from realm.inputs import pad_sequences
from realm.modeling.bert import masked_mean
from realm.modeling.embedder import RealmEmbedder

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 20)


@torch.no_grad()  # not inference_mode: the features feed a trained head
def encoder_features(
    embedder: RealmEmbedder,
    sequences: Sequence[tuple[list[int], list[int]]],
    *,
    pad_id: int,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the head reads (the pooler's input: the last hidden state at [CLS], or the tokens' mean with mean
    pooling) and the mean over the real tokens scaled to unit length (the teacher), of each (ids, token types)
    sequence: two [len(sequences), H] tensors.

    Sequences are batched by length (less padding); the results are in input order.
    """
    from tqdm.auto import tqdm

    embedder.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    pooled = torch.empty(len(sequences), embedder.config.hidden_size)
    mean = torch.empty_like(pooled)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        chosen = order[start : start + batch_size]
        ids, types, mask = pad_sequences([sequences[i][0] for i in chosen], [sequences[i][1] for i in chosen],
                                         pad_id, embedder.device)  # fmt: skip
        hidden = embedder.realm(ids, attention_mask=mask, token_type_ids=types).last_hidden_state.float()  # [B, T, H]
        pooled[chosen] = embedder.realm.pooler.pool(hidden, mask).cpu()
        mean[chosen] = torch.nn.functional.normalize(masked_mean(hidden, mask), dim=-1).cpu()
    return pooled, mean


def head_scores(embedder: RealmEmbedder, pooled: torch.Tensor) -> torch.Tensor:
    """REALM's retrieval vector from the pooler's inputs [B, H] (`encoder_features`): [B, D], as the embedder
    computes it."""
    return embedder.cls(embedder.realm.pooler.project(pooled))


def recall_at(scores: torch.Tensor, gold: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Share of rows of `scores` [Q, N] whose `gold` [Q] column is among the top k, for each k."""
    top = torch.topk(scores, min(max(ks), scores.shape[1]), dim=1).indices  # [Q, k]
    hit = top == gold[:, None]
    return {f"recall@{k}": round(hit[:, :k].any(dim=1).float().mean().item(), 4) for k in ks}


def recall_score(recall: dict[str, float]) -> float:
    """One number to choose checkpoints by: the mean of recall@1, @5 and @20."""
    return sum(recall.values()) / max(1, len(recall))


@dataclass
class HeadTraining:
    """What `distill_head` did: the dev recall curve (step 0 is the starting head) and the step kept."""

    best_step: int
    best: dict[str, float]
    start: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)


def distill_head(
    embedder: RealmEmbedder,
    text_features: torch.Tensor,
    teacher: torch.Tensor,
    block_features: torch.Tensor,
    *,
    dev_features: torch.Tensor | None,
    dev_targets: torch.Tensor | None,
    steps: int,
    batch_size: int,
    lr: float,
    eval_every: int,
    seed: int = 0,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> HeadTraining:
    """Train the retrieval head (`realm.pooler` + `cls`) so that the cosine similarities of its outputs match the
    teacher's, then load the head that scored best on the dev questions (the starting one included).

    Args:
        text_features: [M, H] the head's inputs for the training texts (`encoder_features`); teacher: [M, H] their
            unit mean-pooled vectors.
        block_features: [N, H] the head's inputs for every block, to score the dev questions against.
        dev_features, dev_targets: [Qd, H], [Qd] real questions (their gold block) scored every `eval_every`
            steps by inner product, as the index scores (None: keep the last head; nothing to choose by).
        on_eval: called with each evaluation row (step, loss, recall@k).
    """
    from tqdm.auto import tqdm

    head = torch.nn.ModuleList([embedder.realm.pooler, embedder.cls])
    for parameter in embedder.parameters():
        parameter.requires_grad_(False)
    for parameter in head.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps))
    generator = torch.Generator().manual_seed(seed)
    text_features, teacher, block_features = text_features.float(), teacher.float(), block_features.float()

    def evaluate(step: int, loss: float | None) -> dict[str, Any]:
        with torch.no_grad():
            scores = head_scores(embedder, dev_features.float()) @ head_scores(embedder, block_features).T  # [Qd, N]
        row = {"step": step, "loss": loss, **recall_at(scores, dev_targets)}
        if on_eval is not None:
            on_eval(row)
        return row

    can_eval = dev_features is not None and dev_targets is not None and len(dev_targets) > 0
    history = [evaluate(0, None)] if can_eval else []
    best_state, best_step = copy.deepcopy(head.state_dict()), 0
    best_score = recall_score(_recall(history[0])) if can_eval else float("-inf")
    losses: list[float] = []
    bar = tqdm(range(1, steps + 1), desc="retriever", unit="step", disable=not progress)
    for step in bar:
        chosen = torch.randint(len(text_features), (min(batch_size, len(text_features)),), generator=generator)
        student = torch.nn.functional.normalize(head_scores(embedder, text_features[chosen]), dim=-1)  # [B, D]
        target = teacher[chosen]
        loss = torch.nn.functional.mse_loss(student @ student.T, target @ target.T)  # [B, B] cosine matrices
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.4f}", refresh=False)
        if can_eval and (step % eval_every == 0 or step == steps):
            history.append(evaluate(step, float(np.mean(losses[-eval_every:]))))
            if recall_score(_recall(history[-1])) > best_score:  # ties keep the earlier (less trained) one
                best_score, best_step = recall_score(_recall(history[-1])), step
                best_state = copy.deepcopy(head.state_dict())
    if not can_eval:
        best_state, best_step = copy.deepcopy(head.state_dict()), steps
    head.load_state_dict(best_state)
    for parameter in embedder.parameters():
        parameter.requires_grad_(True)
    best = next((_recall(row) for row in history if row["step"] == best_step), {})
    return HeadTraining(best_step, best, _recall(history[0]) if history else {}, history)


def _recall(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k.startswith("recall@")}
