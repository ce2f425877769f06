"""The one BERT trunk every REALM model is built on.

Post-LayerNorm transformer with absolute position embeddings, exactly BERT (and the transformers port's
`RealmBertModel`), with attention computed by `torch.nn.functional.scaled_dot_product_attention`.
Module names follow the port so that its state-dict keys load unchanged.

Shapes: B batch, T tokens, H hidden, Nh heads, Dh head dim (H / Nh), I intermediate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from realm.config import RealmConfig
from realm.modeling.outputs import ModelOutput


def activation(name: str) -> nn.Module:
    """The port's `ACT2FN` for the activations REALM configs use."""
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")  # the port's "gelu_new": tanh approximation of GELU
    if name == "gelu":
        return nn.GELU()
    if name == "relu":
        return nn.ReLU()
    if name in ("silu", "swish"):
        return nn.SiLU()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unsupported hidden_act {name!r}")


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] of 1 (keep) / 0 (pad) -> additive mask [B, 1, 1, T] of 0 / finfo(dtype).min, as the port."""
    mask = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


@dataclass
class BertOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class RealmEmbeddings(nn.Module):
    """Word + absolute position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        # padding_idx is the config's pad_token_id (1 in every REALM config, not the tokenizer's [PAD]=0):
        # it only stops that row's gradient, and we keep the port's behaviour.
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)  # [B, T, H]
        seq_len = inputs_embeds.shape[1]
        if seq_len > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"sequence of {seq_len} tokens is longer than max_position_embeddings "
                f"({self.position_embeddings.num_embeddings})"
            )
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=inputs_embeds.device)[None]  # [1, T]
        if token_type_ids is None:
            token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class RealmSelfAttention(nn.Module):
    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # [B, Nh, T, Dh]

    def forward(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(hidden)), self._heads(self.value(hidden))
        dropout = self.dropout_prob if self.training else 0.0
        if output_attentions or head_mask is not None:
            # The fused kernel cannot return the probabilities or scale heads: spell attention out.
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask  # [B, Nh, T, T]
            probs = F.dropout(scores.softmax(dim=-1), p=dropout, training=self.training)
            if head_mask is not None:
                probs = probs * head_mask
            context = probs @ v  # [B, Nh, T, Dh]
        else:
            probs = None
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        b, _, t, _ = context.shape
        return context.transpose(1, 2).reshape(b, t, -1), probs  # [B, T, H]


class RealmSelfOutput(nn.Module):
    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class RealmAttention(nn.Module):
    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        self.self = RealmSelfAttention(config)
        self.output = RealmSelfOutput(config)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, head_mask: torch.Tensor | None, output_attentions: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        context, probs = self.self(hidden, mask, head_mask, output_attentions)
        return self.output(context, hidden), probs


class RealmIntermediate(nn.Module):
    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = activation(config.hidden_act)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden))  # [B, T, I]


class RealmOutput(nn.Module):
    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class RealmLayer(nn.Module):
    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        self.attention = RealmAttention(config)
        self.intermediate = RealmIntermediate(config)
        self.output = RealmOutput(config)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, head_mask: torch.Tensor | None, output_attentions: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, probs = self.attention(hidden, mask, head_mask, output_attentions)
        return self.output(self.intermediate(attended), attended), probs


class RealmEncoder(nn.Module):
    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(RealmLayer(config) for _ in range(config.num_hidden_layers))


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of hidden states [B, T, H] over the real tokens (attention_mask [B, T], 1 = real; None: all): [B, H]."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask[..., None].to(hidden.dtype)  # [B, T, 1]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class RealmPooler(nn.Module):
    """`tanh(dense(x))` of the [CLS] position (BERT, REALM) or, with `config.retriever_pooling == "mean"`, of the
    mean over the real tokens (a sentence-embedding model's own reading; see `RealmConfig`)."""

    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()
        self.mean = config.retriever_pooling == "mean"

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """What the pooler reads of hidden states [B, T, H] (attention_mask [B, T], 1 = real token): [B, H]."""
        return masked_mean(hidden, attention_mask) if self.mean else hidden[:, 0]

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, H] pooled vectors -> [B, H] pooler output."""
        return self.activation(self.dense(pooled))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(self.pool(hidden, attention_mask))  # [B, H]


class RealmBertModel(nn.Module):
    """BERT: embeddings -> `num_hidden_layers` post-LN transformer layers -> optional pooler ([CLS] or mean)."""

    def __init__(self, config: RealmConfig, add_pooling_layer: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embeddings = RealmEmbeddings(config)
        self.encoder = RealmEncoder(config)
        self.pooler = RealmPooler(config) if add_pooling_layer else None

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BertOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        hidden = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)  # [B, T, H]
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
        mask = extended_attention_mask(attention_mask, hidden.dtype)  # [B, 1, 1, T]
        head_masks = _per_layer_head_mask(head_mask, len(self.encoder.layer), hidden.dtype)

        all_hidden: list[torch.Tensor] = [hidden]
        all_probs: list[torch.Tensor] = []
        for layer, layer_head_mask in zip(self.encoder.layer, head_masks, strict=True):
            hidden, probs = layer(hidden, mask, layer_head_mask, output_attentions)
            all_hidden.append(hidden)
            if probs is not None:
                all_probs.append(probs)
        return BertOutput(
            last_hidden_state=hidden,
            pooler_output=self.pooler(hidden, attention_mask) if self.pooler is not None else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_probs) if output_attentions else None,
        )


def _per_layer_head_mask(
    head_mask: torch.Tensor | None, num_layers: int, dtype: torch.dtype
) -> list[torch.Tensor | None]:
    """The port's head-mask convention: [Nh] or [num_layers, Nh] of multipliers for the attention probabilities."""
    if head_mask is None:
        return [None] * num_layers
    if head_mask.dim() == 1:
        head_mask = head_mask[None].expand(num_layers, -1)
    return [m[None, :, None, None].to(dtype) for m in head_mask]  # each [1, Nh, 1, 1]
