"""Inference settings: length buckets (no compute on padding) and the fast mode (int8 / bfloat16 on CPU).

Length buckets are exact: rows are sorted by length, cut into buckets of `bucket_rows`, and each bucket is
trimmed to its own longest row, so padding is not computed; the attention mask already kept padding out
of every real token's result, so outputs are those of one padded call up to float rounding. They are on
whether or not the fast mode is.

The fast mode trades a little precision for speed, per machine:
- int8: dynamic quantisation of the reader trunk's attention projections and feed-forward input layers
  (`quantize_trunk`; weights int8 per output channel, activations quantised per call; the feed-forward
  output layers stay float32), CPU only. The reader is most of a question's work (K blocks of up to
  `reader_seq_len` tokens against one short question). The query tower stays float32: quantised, it moved the
  top-5 blocks (overlap 0.77 with float32 on 20 dev questions of the demo) for a small share of the time. The
  span scorer head stays float32 too. An index can be embedded in int8 on request
  (`IndexBuildConfig(compute_dtype="int8")`), not by default.
- bfloat16: `torch.autocast` where the hardware has it: a CPU with AVX512-BF16 or AMX-BF16 (`realm doctor`
  lists the flags), or a GPU that supports bf16 (else float16 on a GPU).

The fast mode is opt-in: it changes some answers (about 12-15% of the demo's questions, as many right as
before), so its numbers are no longer the port's. Its int8 reader keeps the quality bounds on the demo
(`benchmarks/bench_e2e.py`, `benchmarks/int8_layers.py`: gold recall@5 and EM within 0.5 points of float32,
top-5 overlap >= 0.99; measured figures in `INT8_LAYERS`' comment and the README); bf16 was slower than
float32 on this project's CPU (AVX512-BF16 without AMX), top-5 overlap 0.905.

Shapes: n rows, L tokens, H hidden.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Choice = Literal["auto", "on", "off"]

# CPU flags (as /proc/cpuinfo names them) that decide the fast bfloat16 / int8 paths on CPU (`realm doctor`).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class InferenceConfig:
    """How the pipeline's models run.

    Attributes:
        fast: turn on the fast mode's parts below that are not "off" ("auto": where the hardware has it).
        int8: dynamic int8 linear layers in the reader's trunk (CPU only; "auto" = on for a CPU under `fast`).
        bf16: bfloat16 autocast ("auto" = on under `fast` when the CPU has AVX512-BF16/AMX or the GPU bf16).
        bucket_rows: rows per length bucket (0: one padded call, as before).
    """

    fast: bool = False
    int8: Choice = "off"
    bf16: Choice = "off"
    bucket_rows: int = 32

    def __post_init__(self) -> None:
        for name in ("int8", "bf16"):
            if getattr(self, name) not in ("auto", "on", "off"):
                raise ValueError(f"InferenceConfig.{name} must be 'auto', 'on' or 'off', not {getattr(self, name)!r}")
        if self.bucket_rows < 0:
            raise ValueError(f"InferenceConfig.bucket_rows must be >= 0, got {self.bucket_rows}")

    def uses_int8(self, device: torch.device) -> bool:
        return self.fast and device.type == "cpu" and self.int8 != "off"

    def uses_bf16(self, device: torch.device) -> bool:
        if not self.fast or self.bf16 == "off":
            return False
        return self.bf16 == "on" or has_fast_bf16(device)


FAST = InferenceConfig(fast=True, int8="auto", bf16="off")  # `--fast`: the int8 reader of `INT8_LAYERS`


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, bool] | None:
    """Each of `CPU_FLAGS` -> whether the first CPU's `flags` line lists it; None if there is no such file."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present = set(value.split())
            return {flag: flag in present for flag in CPU_FLAGS}
    return None


def has_fast_bf16(device: torch.device) -> bool:
    """The device computes bfloat16 natively: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = cpu_flags() or {}
    return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


# The linear layers `--fast` makes int8: the attention projections and the feed-forward's first layer, i.e.
# every linear layer but the feed-forward's output (`output.dense` of a layer, whose input is the GELU's output
# with its few large activations; int8 per tensor there cost the most answers). Measured on the demo's 210 dev
# questions (`benchmarks/int8_layers.py`): all six per layer, per-tensor weights: EM 7.14 -> 4.76, 1.9x the
# questions/s; per-channel weights: 5.71; these four per layer, per-channel: EM 7.14 (= float32), 1.6x; on the
# 87 test questions EM 11.49 (= float32), 1.8x, where all six gave 10.34.
INT8_LAYERS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
               "intermediate.dense")  # fmt: skip


def quantize_trunk(trunk: nn.Module) -> nn.Module:
    """The trunk's `INT8_LAYERS` -> dynamic int8 linear layers with per-channel weights, in place (CPU); the
    feed-forward output layers stay float32. Returns the trunk."""
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao on every call
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        chosen = {name: per_channel_dynamic_qconfig for name, module in trunk.named_modules()
                  if isinstance(module, nn.Linear) and name.endswith(INT8_LAYERS)}  # fmt: skip
        return quantize_dynamic(trunk, chosen, dtype=torch.qint8, inplace=True)


def autocast(config: InferenceConfig, device: torch.device) -> AbstractContextManager[object]:
    """The autocast context of this config on this device (a no-op unless bf16 is used)."""
    if config.uses_bf16(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def run_bucketed(
    fn: Callable[..., Tensor],
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor,
    rows: int,
    pad_to: int | None = None,
    *,
    extra: Tensor | None = None,
    widen: Callable[[Tensor, int], Tensor] | None = None,
    min_width: int = 1,
) -> Tensor:
    """`fn(ids, mask, types[, extra])` over right-padded rows [n, L], in length buckets, results in the input order.

    Args:
        fn: a forward of [m, l] inputs -> [m, ...] (per row, independent of the other rows).
        rows: rows per bucket (0: one call over all rows).
        pad_to: per-token outputs [m, l, H] are zero-padded back to this length (the caller's L).
        extra: a fourth [n, L] input, cut as the others (the reader's block mask).
        widen: (a bucket's output, its width l) -> the output as if computed over all L positions (instead of
            `pad_to`; span scores: `realm.modeling.heads.widen_spans`).
        min_width: no bucket is trimmed below this many positions (the reader needs T >= max_span_width).
    Returns:
        [n, ...] the rows' outputs.
    """
    n, full = input_ids.shape
    more = () if extra is None else (extra,)
    if rows <= 0 or n == 0:
        return fn(input_ids, attention_mask, token_type_ids, *more)
    lengths = attention_mask.sum(dim=1)  # [n]
    order = torch.argsort(lengths, stable=True)
    parts = []
    for start in range(0, n, rows):
        idx = order[start : start + rows]
        width = min(max(int(lengths[idx].max()), min_width, 1), full)
        out = fn(*(x[idx, :width] for x in (input_ids, attention_mask, token_type_ids, *more)))
        if widen is not None:
            out = widen(out, width)
        elif pad_to is not None and width < pad_to:
            out = F.pad(out, (0, 0, 0, pad_to - width))  # [m, pad_to, H]
        parts.append(out)
    return torch.cat(parts)[torch.argsort(order)]


def bucketed_span_logits(
    fn: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor],
    input_ids: Tensor,
    attention_mask: Tensor,
    token_type_ids: Tensor,
    block_mask: Tensor,
    rows: int,
    max_span_width: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """A reader's span logits over right-padded rows [n, T] in length buckets, in the layout of all T positions.

    Args:
        fn: (ids, mask, types, block mask) [m, l] -> span logits [m, S_l] (the trunk and the span scorer).
        rows: rows per bucket (0: one call). Each bucket's spans reaching past its width reach padding: they
            get finfo.min, what the span scorer gives them in one padded call.
    Returns:
        span logits [n, S], span starts [S], ends [S] (`realm.modeling.heads.span_candidates` of T).
    """
    from realm.modeling.heads import span_candidates, widen_spans

    t = input_ids.shape[1]
    logits = run_bucketed(
        fn, input_ids, attention_mask, token_type_ids, rows, extra=block_mask, min_width=max_span_width,
        widen=lambda out, width: widen_spans(out, width, t, max_span_width),
    )  # [n, S]  # fmt: skip
    starts, ends = span_candidates(t, max_span_width, input_ids.device)
    return logits, starts, ends
