"""The heads that sit on the BERT trunk: masked-LM, retrieval projection and reader span scorer.

Shapes: B batch, T tokens, H hidden, V vocab, D retriever_proj_size, Hs span_hidden_size, R blocks read,
S span candidates.
"""

from __future__ import annotations

import torch
from torch import nn

from realm.config import RealmConfig
from realm.modeling.bert import activation


class RealmPredictionHeadTransform(nn.Module):
    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden)))


class RealmLMPredictionHead(nn.Module):
    """transform -> decoder (H -> V). `decoder.bias` is the same tensor as `bias`, as in BERT."""

    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.transform = RealmPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.bias = self.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))  # [..., V]


class RealmOnlyMLMHead(nn.Module):
    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        self.predictions = RealmLMPredictionHead(config)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden)


class RealmScorerProjection(nn.Module):
    """pooled [B, H] -> LayerNorm(dense(pooled)) [B, D].

    `predictions` is an MLM head the released embedder checkpoints carry but never use; it is kept so that
    they load and save unchanged.
    """

    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        self.predictions = RealmLMPredictionHead(config)
        self.dense = nn.Linear(config.hidden_size, config.retriever_proj_size)
        self.LayerNorm = nn.LayerNorm(config.retriever_proj_size, eps=config.layer_norm_eps)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(pooled))


def span_candidates(seq_len: int, max_span_width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """All spans of width 1..W over T positions, width by width (all width-1 spans first), as the port.

    Returns:
        starts, ends: [S] with S = W*T - W*(W-1)/2, inclusive ends.
    """
    starts = [torch.arange(seq_len - w + 1, device=device) for w in range(1, max_span_width + 1)]
    ends = [torch.arange(w - 1, seq_len, device=device) for w in range(1, max_span_width + 1)]
    return torch.cat(starts), torch.cat(ends)


def widen_spans(logits: torch.Tensor, width: int, seq_len: int, max_span_width: int) -> torch.Tensor:
    """Span scores over `width` positions [m, S_width] -> the layout of `seq_len` >= width positions [m, S],
    each width's spans that start too late to fit in `width` (they reach padding) at finfo.min."""
    if width == seq_len:
        return logits
    fill = torch.finfo(logits.dtype).min
    parts = logits.split([width - w + 1 for w in range(1, max_span_width + 1)], dim=1)  # per span width
    return torch.cat([torch.nn.functional.pad(p, (0, seq_len - width), value=fill) for p in parts], dim=1)


def mask_to_score(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """1 -> 0, 0 -> the most negative finite number of `dtype` (the port's masking constant)."""
    return (1.0 - mask.to(dtype)) * torch.finfo(dtype).min


class RealmReaderProjection(nn.Module):
    """Span scorer: logit(s, e) = w . LayerNorm(ReLU(start(h_s) + end(h_e))) + b, for spans inside the block."""

    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        self.max_span_width = config.max_span_width
        self.dense_intermediate = nn.Linear(config.hidden_size, config.span_hidden_size * 2)
        self.dense_output = nn.Linear(config.span_hidden_size, 1)
        self.layer_normalization = nn.LayerNorm(config.span_hidden_size, eps=config.reader_layer_norm_eps)
        self.relu = nn.ReLU()

    def forward(
        self, hidden: torch.Tensor, block_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            hidden: [R, T, H] reader trunk output.
            block_mask: [R, T], true where the token belongs to the evidence block.

        Returns:
            span logits [R, S] (spans leaving the block get finfo.min), starts [S], ends [S].
        """
        t = hidden.shape[1]
        starts, ends = span_candidates(t, self.max_span_width, hidden.device)
        start_proj, end_proj = self.dense_intermediate(hidden).chunk(2, dim=-1)  # 2 x [R, T, Hs]
        # start_proj[:, starts] + end_proj[:, ends], one width at a time: the spans of width w start at 0..T-w
        # and end at w-1..T-1, two contiguous slices (a gather over S indices cost ~4x the whole head).
        span_hidden = torch.cat(
            [start_proj[:, : t - w + 1] + end_proj[:, w - 1 :] for w in range(1, self.max_span_width + 1)], dim=1
        )  # [R, S, Hs]
        logits = self.dense_output(self.layer_normalization(self.relu(span_hidden))).squeeze(-1)  # [R, S]
        inside = block_mask[:, starts].bool() & block_mask[:, ends].bool()  # [R, S]
        return logits + mask_to_score(inside, logits.dtype), starts, ends
