"""`FinetuneConfig`: every setting of `realm finetune`, read from TOML with `key=value` overrides.

    config = FinetuneConfig.load("configs/finetune_nq.toml", ["lr=3e-5", "num_steps=100"])

The TOML file is flat (one `key = value` per setting, no tables). An override's value is read as a TOML
value (`lr=3e-5`, `bf16=true`, `dev="dev.jsonl"`), and as a plain string when it is not one
(`device=cuda`, `output_dir=runs/nq`). Unknown keys, in the file or on the command line, are errors
that name the key. Relative paths are taken relative to the working directory, not to the file.

Defaults are ORQA's fine-tuning recipe (`language/orqa/models/orqa_model.py`, `orqa_experiment.py`):
searcher beam 5000, reader beam 5, reader sequence 320, question 64, lr 1e-5, weight decay 0.01 (not on
biases and LayerNorms), clip 1.0, Adam eps 1e-6, linear warm-up then linear decay to 0, one question per
step (ORQA's input function does not batch). ORQA warms up for min(10000, max(100, num_steps / 10))
steps; set `warmup_steps` for that, or `warmup_fraction`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from typing_extensions import Self

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_FILE_NAME = "finetune_config.json"


class FlatTomlConfig:
    """Reading and writing of a frozen dataclass of settings: a flat TOML file plus `key=value` overrides.

    Subclasses set `KIND` (named in error messages) and `FILE_NAME` (the JSON copy saved with checkpoints).
    """

    KIND: ClassVar[str] = "config"
    FILE_NAME: ClassVar[str] = "config.json"

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> Self:
        """Build from a dict, checking that every key is known and every value has the field's type."""
        return cls(**_checked(cls, values, source))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> Self:
        """Read a flat TOML file (optional) and apply `key=value` overrides, in order.

        Raises:
            ValueError: an unknown key or a value of the wrong type (naming the key and where it came
                from), a malformed override or TOML file, a missing required setting.
        """
        values: dict[str, Any] = {}
        if path is not None:
            try:
                with open(path, "rb") as f:
                    values = tomllib.load(f)
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"{path}: invalid TOML: {err}") from None
            tables = [k for k, v in values.items() if isinstance(v, dict)]
            if tables:
                raise ValueError(f"{path}: the {cls.KIND} config is flat; move the keys of [{tables[0]}] to the top")
            values = _checked(cls, values, str(path))
        values.update(_checked(cls, parse_overrides(overrides), "command line"))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write `FILE_NAME` into `directory` (it travels with every checkpoint)."""
        path = Path(directory) / self.FILE_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path


class StepSchedule:
    """What a training loop derives from `batch_size`, `grad_accumulation`, `num_steps`, `warmup_steps`
    and `warmup_fraction`."""

    batch_size: int
    grad_accumulation: int
    num_steps: int
    warmup_steps: int | None
    warmup_fraction: float

    @property
    def num_warmup_steps(self) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, self.num_steps)
        return round(self.warmup_fraction * self.num_steps)

    def global_batch_size(self, world_size: int) -> int:
        """Examples per optimizer step over all processes."""
        return self.batch_size * world_size * self.grad_accumulation


@dataclass(frozen=True)
class FinetuneConfig(FlatTomlConfig, StepSchedule):
    """How to fine-tune a `RealmForOpenQA` checkpoint on an Open-QA training set.

    Attributes:
        model: the `RealmForOpenQA` checkpoint to start from (only its `embedder.` and `reader.` weights are
            read; a `block_emb` in it is ignored: `index` replaces it).
        store: the block store; `index`: its embeddings (frozen: the document tower is not trained).
        train: training questions (NQ-open JSONL); `dev`: questions to evaluate on ("" for none).
        output_dir: where `last/`, `best/`, `metrics.jsonl` (and `tensorboard/`) go.
        searcher_beam_size: K, blocks retrieved per question for the retriever loss (ORQA: 5000).
        reader_beam_size: R, the top blocks read (ORQA: 5); also the blocks read at evaluation.
        max_span_width: longest answer span in wordpieces; None keeps the model config's (ORQA: 10).
        reader_seq_len: tokens of `[CLS] question [SEP] block [SEP]` (ORQA: 320).
        train_query_tower: train the query tower with the reader (ORQA, REALM); False trains the reader only,
            keeping retrieval as the starting checkpoint's (few training questions can undo what it knows).
        question_max_length: question tokens including [CLS] and [SEP] (ORQA: 64).
        batch_size: questions per process per forward pass. The global batch of one optimizer step is
            batch_size x processes x grad_accumulation.
        grad_accumulation: forward/backward passes per optimizer step.
        lr, weight_decay, adam_eps: AdamW (no weight decay on biases and LayerNorm weights).
        warmup_steps: linear warm-up steps; None means round(warmup_fraction x num_steps).
        warmup_fraction: used when warmup_steps is None.
        num_steps: optimizer steps; the learning rate decays linearly to 0 at this step.
        clip_norm: global gradient norm clip (0 turns it off).
        bf16: run the forward passes under bfloat16 autocast.
        eval_every: evaluate on `dev` every this many steps (0: only at the end); the best EM (ties:
            recall@5) is kept in `best/`.
        eval_at_start: also evaluate before the first step (the curve's starting point).
        eval_examples: evaluate on the first this many dev questions (0: all).
        eval_batch_size: questions per evaluation batch.
        save_every: write `last/` every this many steps (0: only at the end).
        log_every: write a `metrics.jsonl` row (and TensorBoard scalars) every this many steps.
        seed: data order and RNGs; the data order is a function of (seed, step) only.
        device: "cpu", "cuda" (each torchrun process takes its local GPU), ...
        progress: show a progress bar (main process only).
    """

    KIND: ClassVar[str] = "finetune"
    FILE_NAME: ClassVar[str] = CONFIG_FILE_NAME

    model: str = ""
    store: str = ""
    index: str = ""
    train: str = ""
    dev: str = ""
    output_dir: str = ""
    searcher_beam_size: int = 5000
    reader_beam_size: int = 5
    max_span_width: int | None = None
    reader_seq_len: int = 320
    train_query_tower: bool = True
    question_max_length: int = 64
    batch_size: int = 1
    grad_accumulation: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.01
    adam_eps: float = 1e-6
    warmup_steps: int | None = None
    warmup_fraction: float = 0.1
    num_steps: int = 1000
    clip_norm: float = 1.0
    bf16: bool = False
    eval_every: int = 1000
    eval_at_start: bool = False
    eval_examples: int = 0
    eval_batch_size: int = 16
    save_every: int = 1000
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("model", "store", "index", "train", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"finetune config: {name} is required (set it in the TOML file or as {name}=...)")
        positive = ("searcher_beam_size", "reader_beam_size", "reader_seq_len", "question_max_length",
                    "batch_size", "grad_accumulation", "num_steps", "log_every", "eval_batch_size")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"finetune config: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "save_every", "eval_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"finetune config: {name} must be >= 0, got {getattr(self, name)}")
        if self.reader_beam_size > self.searcher_beam_size:
            raise ValueError(
                f"finetune config: reader_beam_size ({self.reader_beam_size}) must not exceed "
                f"searcher_beam_size ({self.searcher_beam_size}): the blocks read are the top retrieved"
            )
        if self.max_span_width is not None and self.max_span_width < 1:
            raise ValueError(f"finetune config: max_span_width must be >= 1, got {self.max_span_width}")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"finetune config: warmup_fraction must be in [0, 1], got {self.warmup_fraction}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"finetune config: warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr <= 0 or self.weight_decay < 0 or self.clip_norm < 0 or self.adam_eps <= 0:
            raise ValueError("finetune config: lr and adam_eps must be > 0, weight_decay and clip_norm >= 0")


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`["lr=3e-5", "device=cuda"]` -> `{"lr": 3e-05, "device": "cuda"}` (values parsed as TOML if they are)."""
    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value (e.g. lr=3e-5)")
        try:
            values[key] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = raw.strip()
    return values


def _checked(cls: Any, values: dict[str, Any], source: str) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(fields))}"
            raise ValueError(f"{source}: unknown {cls.KIND} config key {key!r}{hint}")
        checked[key] = _check_type(key, value, hints[key], f"{source}: {cls.KIND}")
    return checked


def _check_type(key: str, value: Any, hint: Any, source: str) -> Any:
    """The value if it fits the field's type (ints are accepted for floats); else a ValueError naming key."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None or (isinstance(value, str) and value.lower() == "none" and type(None) in allowed):
        if type(None) in allowed:
            return None
    for kind in allowed:
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool) and isinstance(value, kind):
            return value
    names = " or ".join("none" if k is type(None) else k.__name__ for k in allowed)
    raise ValueError(f"{source} config key {key!r} must be {names}, got {value!r}")
