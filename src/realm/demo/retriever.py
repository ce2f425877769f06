"""Warm-starting the retriever without forgetting: the embedder's BERT trunk stays as imported, and only its
projection (`cls.dense` + `cls.LayerNorm`, fresh and random after `init_from_bert`) is trained, shared by the
query and block towers, with a softmax over EVERY block of the corpus (each one a negative, the hardest
included). A dev set of real questions is scored every `eval_every` steps and the best projection is kept; the
starting one counts, so the stage cannot lower dev recall.

Why not the whole embedder: trained end to end on the corpus's own pseudo-questions (description questions,
in-batch negatives), the trunk learns their form and forgets what made it retrieve real questions (recall@1 on
human-written questions fell from 0.77 to 0.31 in the demo; see issue 12). With the trunk frozen, its pooled
outputs are computed once, so each step is a few small matrix products and the whole corpus fits in the
softmax.

Shapes: N blocks, Q questions, B batch, H hidden size, D retriever_proj_size.
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
from realm.modeling.embedder import RealmEmbedder
from realm.objectives import in_batch_softmax_loss

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 20)


@torch.no_grad()  # not inference_mode: the features feed a trained projection
def pooled_features(
    embedder: RealmEmbedder,
    sequences: Sequence[tuple[list[int], list[int]]],
    *,
    pad_id: int,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "features",
) -> torch.Tensor:
    """The trunk's pooled output ([CLS] pooler) of each (ids, token types) sequence, [len(sequences), H].

    Sequences are batched by length (less padding); the result is in input order.
    """
    from tqdm.auto import tqdm

    embedder.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    out = torch.empty(len(sequences), embedder.config.hidden_size)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        chosen = order[start : start + batch_size]
        ids, types, mask = pad_sequences([sequences[i][0] for i in chosen], [sequences[i][1] for i in chosen],
                                         pad_id, embedder.device)  # fmt: skip
        out[chosen] = embedder.realm(ids, attention_mask=mask, token_type_ids=types).pooler_output.float().cpu()
    return out


def recall_at(scores: torch.Tensor, gold: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Share of rows of `scores` [Q, N] whose `gold` [Q] column is among the top k, for each k."""
    top = torch.topk(scores, min(max(ks), scores.shape[1]), dim=1).indices  # [Q, k]
    hit = top == gold[:, None]
    return {f"recall@{k}": round(hit[:, :k].any(dim=1).float().mean().item(), 4) for k in ks}


def recall_score(recall: dict[str, float]) -> float:
    """One number to choose checkpoints by: the mean of recall@1, @5 and @20."""
    return sum(recall.values()) / max(1, len(recall))


@dataclass
class ProjectionTraining:
    """What `train_projection` did: the dev recall curve (step 0 is the starting projection), the step kept."""

    best_step: int
    best: dict[str, float]
    start: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)


def train_projection(
    embedder: RealmEmbedder,
    query_features: torch.Tensor,
    targets: torch.Tensor,
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
) -> ProjectionTraining:
    """Train `embedder.cls` (the projection both towers share) on (query, block) pairs of pooled features,
    then load the projection that scored best on the dev questions (the starting one included).

    Args:
        query_features: [Q, H] pooled query outputs; targets: [Q] the block index of each query's positive.
        block_features: [N, H] pooled outputs of every block (the softmax runs over all of them).
        dev_features, dev_targets: [Qd, H], [Qd] real questions scored every `eval_every` steps (None: keep
            the last projection; nothing to choose by).
        on_eval: called with each evaluation row (step, loss, recall@k).
    """
    from tqdm.auto import tqdm

    projection = embedder.cls
    for parameter in embedder.parameters():
        parameter.requires_grad_(False)
    for parameter in projection.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(projection.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    query_features, block_features = query_features.float(), block_features.float()

    def evaluate(step: int, loss: float | None) -> dict[str, Any]:
        with torch.no_grad():
            scores = projection(dev_features.float()) @ projection(block_features).T  # [Qd, N]
        row = {"step": step, "loss": loss, **recall_at(scores, dev_targets)}
        if on_eval is not None:
            on_eval(row)
        return row

    can_eval = dev_features is not None and dev_targets is not None and len(dev_targets) > 0
    history = [evaluate(0, None)] if can_eval else []
    best_state, best_step = copy.deepcopy(projection.state_dict()), 0
    best_score = recall_score(_recall(history[0])) if can_eval else float("-inf")
    losses: list[float] = []
    bar = tqdm(range(1, steps + 1), desc="retriever", unit="step", disable=not progress)
    for step in bar:
        chosen = torch.randint(len(targets), (batch_size,), generator=generator)
        query = projection(query_features[chosen])  # [B, D]
        blocks = projection(block_features)  # [N, D]
        loss, _ = in_batch_softmax_loss(query, blocks, targets[chosen])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", refresh=False)
        if can_eval and (step % eval_every == 0 or step == steps):
            history.append(evaluate(step, float(np.mean(losses[-eval_every:]))))
            if recall_score(_recall(history[-1])) > best_score:  # ties keep the earlier (less trained) one
                best_score, best_step = recall_score(_recall(history[-1])), step
                best_state = copy.deepcopy(projection.state_dict())
    if not can_eval:
        best_state, best_step = copy.deepcopy(projection.state_dict()), steps
    projection.load_state_dict(best_state)
    for parameter in embedder.parameters():
        parameter.requires_grad_(True)
    best = next((_recall(row) for row in history if row["step"] == best_step), {})
    return ProjectionTraining(best_step, best, _recall(history[0]) if history else {}, history)


def _recall(row: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k.startswith("recall@")}
