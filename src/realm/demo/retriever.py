"""Warm-starting the retriever: the shared query/block `RealmEmbedder` trained on (question, its block) pairs
with the in-batch softmax of ICT / ORQA pre-training (every other block of the batch is a negative).

Shapes: B pairs, Q question tokens, L block tokens, D retriever_proj_size.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from realm.inputs import pad_sequences
from realm.modeling.embedder import RealmEmbedder
from realm.pretrain.ict import in_batch_softmax_loss

logger = logging.getLogger(__name__)


def train_retriever(
    embedder: RealmEmbedder,
    questions: list[list[int]],
    blocks: list[tuple[list[int], list[int]]],
    *,
    pad_id: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train `embedder` in place on pairs (questions[i] with special tokens, blocks[i] = (ids, token types)).

    AdamW with linear warm-up (10%) and decay; returns the loss of every step.
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(embedder.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup))
    )
    embedder.train()
    device = embedder.device
    losses: list[float] = []
    order = rng.permutation(len(questions))
    bar = tqdm(range(steps), desc="retriever", unit="step", disable=not progress)
    for step in bar:
        start = (step * batch_size) % max(1, len(order) - batch_size + 1)
        chosen = order[start : start + batch_size].tolist()
        q_ids, q_types, q_mask = pad_sequences([questions[i] for i in chosen], [[0] * len(questions[i]) for i in chosen], pad_id, device)
        b_ids, b_types, b_mask = pad_sequences([blocks[i][0] for i in chosen], [blocks[i][1] for i in chosen], pad_id, device)
        query = embedder(q_ids, attention_mask=q_mask, token_type_ids=q_types).projected_score  # [B, D]
        block = embedder(b_ids, attention_mask=b_mask, token_type_ids=b_types).projected_score  # [B, D]
        loss, _ = in_batch_softmax_loss(query, block, torch.arange(len(chosen), device=device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(embedder.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", refresh=False)
    embedder.eval()
    return losses
