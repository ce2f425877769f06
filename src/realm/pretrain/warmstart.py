"""A reader warm start: an MLM head (and upper layers) for an encoder that has none, before REALM pre-training.

REALM starts from BERT, whose MLM head already names tokens and whose layers already read a second segment.
A sentence-embedding model (the demo's all-MiniLM-L6-v2) has no MLM head: `realm init` gives it a fresh one,
and a few hundred REALM steps then go on learning a vocabulary head instead of learning to read what was
retrieved. This is BERT's own objective on the pre-training text, kept small enough for a CPU:

    [CLS] sentence with its salient span masked [SEP] the rest of its document [SEP]

(the document's other sentences, as BERT reads a sentence with its neighbours: no retrieval, no index), the
layers below `train_from` frozen, so their outputs are computed once and each step runs only the upper
layers and the head. The decoder stays tied to the (frozen) word embeddings; its bias and the head's
transform train. Give the result to every arm of a comparison, so that all of them start from it.

Shapes: N examples, T tokens (<= max_length), H hidden, M masked positions of a batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from realm.inputs import pad_sequences
from realm.modeling.bert import extended_attention_mask
from realm.modeling.knowledge_encoder import RealmKnowledgeAugEncoder
from realm.objectives import IGNORE_INDEX
from realm.pretrain.masking import SentenceMasker
from realm.train.optim import build_optimizer

logger = logging.getLogger(__name__)

__all__ = ["ContextExample", "ReaderWarmStartConfig", "context_examples", "warm_start_reader"]


@dataclass(frozen=True)
class ContextExample:
    """`[CLS] masked sentence [SEP] context [SEP]`: ids, token types (0 | 1) and labels (-100 unmasked)."""

    input_ids: list[int]
    token_type_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class ReaderWarmStartConfig:
    """How the reader is warm-started.

    Attributes:
        train_from: the first trained layer; the embeddings and layers below it stay frozen (their outputs
            are computed once). 0 trains every layer (and recomputes nothing less).
        steps, batch_size, lr, weight_decay, adam_eps, clip_norm: AdamW at a constant rate, BERT's weight decay
            (`realm.train.optim.build_optimizer`).
        dropout: the trained layers' dropout during the warm start (the model's config is not changed).
        seed: which examples each step draws.
    """

    train_from: int = 3
    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    adam_eps: float = 1e-8  # torch's default
    clip_norm: float = 1.0
    dropout: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ReaderWarmStartConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.train_from < 0 or self.lr <= 0:
            raise ValueError("ReaderWarmStartConfig: train_from must be >= 0 and lr > 0")


def context_examples(
    documents: Iterable[Sequence[str]], tokenizer: Any, masker: SentenceMasker, max_length: int, *,
    per_document: int = 1, seed: int = 0,
) -> tuple[list[ContextExample], dict[str, int]]:  # fmt: skip
    """Up to `per_document` examples of each document (a list of sentences): one of its sentences masked
    by `masker`, then the document's other sentences in order, cut to `max_length` tokens in all.

    Returns the examples and counts: documents with fewer than 2 sentences, sentences the masker skipped.
    """
    rng = np.random.default_rng(seed)
    sep_id = tokenizer.sep_token_id
    examples: list[ContextExample] = []
    counts = {"documents": 0, "single_sentence": 0, "unmaskable": 0}
    for sentences in documents:
        counts["documents"] += 1
        if len(sentences) < 2:
            counts["single_sentence"] += 1
            continue
        for j in rng.permutation(len(sentences))[:per_document].tolist():
            masked = masker(sentences[j], rng)
            if masked.skip is not None:
                counts["unmaskable"] += 1
                continue
            room = max(max_length - len(masked.input_ids) - 1, 0)
            rest = " ".join(list(sentences[:j]) + list(sentences[j + 1 :]))
            context = tokenizer(rest, add_special_tokens=False)["input_ids"][:room]
            examples.append(ContextExample(
                input_ids=[*masked.input_ids, *context, sep_id],
                token_type_ids=[0] * len(masked.input_ids) + [1] * (len(context) + 1),
                labels=[*masked.labels, *[IGNORE_INDEX] * (len(context) + 1)],
            ))  # fmt: skip
    return examples, counts


def warm_start_reader(
    encoder: RealmKnowledgeAugEncoder, examples: Sequence[ContextExample], config: ReaderWarmStartConfig,
    *, progress: bool = False,
) -> list[dict[str, float]]:  # fmt: skip
    """Train `encoder`'s layers from `config.train_from` up and its MLM head (transform, decoder bias) on
    `examples`, in place; everything below stays as it was. Returns a row per 25 steps (loss, accuracy of
    the masked tokens of those steps). The encoder is left in eval mode with its own dropout.
    """
    if not examples:
        raise ValueError("warm_start_reader needs at least one example")
    layers = encoder.realm.encoder.layer
    if config.train_from >= len(layers):
        raise ValueError(f"train_from={config.train_from}: the encoder has only {len(layers)} layers")
    pad_id = encoder.config.pad_token_id or 0
    device = next(encoder.parameters()).device
    trained = [*layers[config.train_from :], encoder.cls.predictions.transform]
    params = [p for module in trained for p in module.parameters()] + [encoder.cls.predictions.bias]
    for p in encoder.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)

    # The frozen part once: the input of layer `train_from` for every example, in eval mode.
    encoder.eval()
    states: list[torch.Tensor] = []  # each [T_i, H]
    with torch.no_grad():
        for start in range(0, len(examples), 32):
            batch = examples[start : start + 32]
            ids, types, mask = pad_sequences([e.input_ids for e in batch], [e.token_type_ids for e in batch], pad_id, device)
            hidden = encoder.realm(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
            below = hidden.hidden_states[config.train_from]  # [B, T, H]
            states += [below[r, : len(e.input_ids)].clone() for r, e in enumerate(batch)]

    optimizer = build_optimizer(encoder, config)  # over `params`, the only ones requiring grad
    dropouts = [m for module in trained for m in module.modules() if isinstance(m, torch.nn.Dropout)]
    saved_p = [m.p for m in dropouts]
    for m in dropouts:
        m.p = config.dropout
    for module in trained:
        module.train()
    rng = np.random.default_rng(config.seed)
    rows: list[dict[str, float]] = []
    loss_sum = correct = tokens = 0.0
    from tqdm.auto import tqdm

    try:
        for step in tqdm(range(1, config.steps + 1), desc="reader warm start", disable=not progress):
            pick = rng.choice(len(states), size=min(config.batch_size, len(states)), replace=False).tolist()
            width = max(len(states[i]) for i in pick)
            hidden = torch.zeros(len(pick), width, states[0].shape[-1], device=device)  # [B, T, H]
            keep = torch.zeros(len(pick), width, device=device)
            labels = torch.full((len(pick), width), IGNORE_INDEX, dtype=torch.long, device=device)
            for r, i in enumerate(pick):
                n = len(states[i])
                hidden[r, :n], keep[r, :n] = states[i], 1.0
                labels[r, :n] = torch.tensor(examples[i].labels, device=device)
            mask = extended_attention_mask(keep, hidden.dtype)  # [B, 1, 1, T]
            for layer in layers[config.train_from :]:
                hidden, _ = layer(hidden, mask, None, False)
            masked = labels != IGNORE_INDEX
            logits = encoder.cls(hidden[masked])  # [M, V]: only the masked positions
            loss = torch.nn.functional.cross_entropy(logits, labels[masked])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.clip_norm if config.clip_norm > 0 else float("inf"))
            optimizer.step()
            count = float(masked.sum())
            loss_sum += float(loss.detach()) * count
            correct += float((logits.argmax(-1) == labels[masked]).sum())
            tokens += count
            if step % 25 == 0 or step == config.steps:
                rows.append({"step": step, "loss": loss_sum / max(tokens, 1.0), "accuracy": correct / max(tokens, 1.0)})
                logger.info("reader warm start step %d: loss %.3f, accuracy %.3f", step, rows[-1]["loss"], rows[-1]["accuracy"])
                loss_sum = correct = tokens = 0.0
    finally:
        for m, p in zip(dropouts, saved_p, strict=True):
            m.p = p
        encoder.eval()
        for p in encoder.parameters():
            p.requires_grad_(True)
    return rows

