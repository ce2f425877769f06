"""The optimizer and learning-rate schedule both training loops use (BERT's: AdamW, linear warm-up and decay)."""

from __future__ import annotations

from typing import Any

import torch


def build_optimizer(model: torch.nn.Module, config: Any) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (config: lr, weight_decay, adam_eps); as BERT's optimizer, no
    weight decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            skip = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
            (no_decay if skip else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, eps=config.adam_eps)


def linear_schedule(warmup: int, total: int) -> Any:
    """Learning-rate factor at a step: linear warm-up to 1, then linear decay to 0 at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def optimizer_and_schedule(model: torch.nn.Module, config: Any) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """`build_optimizer` and its `linear_schedule` (config: num_warmup_steps, num_steps and the optimizer's)."""
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(config.num_warmup_steps, config.num_steps))
    return optimizer, scheduler
