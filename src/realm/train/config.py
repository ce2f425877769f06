"""The run configs' base: a flat TOML file with `key=value` overrides, read into a frozen dataclass.

    config = FinetuneConfig.load("configs/finetune_nq.toml", ["lr=3e-5", "num_steps=100"])

The TOML file is flat (one `key = value` per setting, no tables). An override's value is read as a TOML
value (`lr=3e-5`, `bf16=true`, `dev="dev.jsonl"`), and as a plain string when it is not one
(`device=cuda`, `output_dir=runs/nq`). Unknown keys, in the file or on the command line, are errors
that name the key. Relative paths are taken relative to the working directory, not to the file.
`FlatTomlConfig` is that reading and writing; `StepSchedule` the step count, warm-up and global batch both
loops share. `realm.finetune.config.FinetuneConfig` and `realm.pretrain.config.PretrainConfig` build on them.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from typing_extensions import Self

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib



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
