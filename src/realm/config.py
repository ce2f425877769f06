"""`RealmConfig`: the model hyper-parameters, read and written as the transformers port's `config.json`.

The defaults are those of the released `google/realm-*` checkpoints. Keys we do not model (for example
`searcher_seq_len`, which every hub config still carries, or `transformers_version`) are kept in
`extra`, readable as attributes and written back unchanged, so a config survives a round trip.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realm.files import resolve_file
from realm.schema import Field, SchemaError, check_value

CONFIG_NAME = "config.json"
MODEL_TYPE = "realm"
SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu", "gelu_pytorch_tanh", "relu", "silu", "swish", "tanh")

# Keys every transformers config.json may carry that say nothing about the model itself.
_BOOKKEEPING_KEYS = ("model_type",)

# What each known key must hold. A wrong type or an impossible value is refused when the config is built
# (e.g. "hidden_size": "384", "num_hidden_layers": 6.5 or -1), naming the key, the value and the type.
_POSITIVE = ("vocab_size", "hidden_size", "retriever_proj_size", "num_hidden_layers", "num_attention_heads",
             "num_candidates", "intermediate_size", "max_position_embeddings", "type_vocab_size",
             "span_hidden_size", "max_span_width", "reader_beam_size", "reader_seq_len", "searcher_beam_size")  # fmt: skip
_FIELDS: dict[str, Field] = {
    **{name: Field("int", minimum=1) for name in _POSITIVE},
    "num_block_records": Field("int", minimum=0),
    "hidden_act": Field("str", choices=SUPPORTED_ACTIVATIONS),
    "hidden_dropout_prob": Field("float", minimum=0),
    "attention_probs_dropout_prob": Field("float", minimum=0),
    "initializer_range": Field("float", minimum=0),
    "layer_norm_eps": Field("float", minimum=0),
    "reader_layer_norm_eps": Field("float", minimum=0),
    **{name: Field("int", minimum=0, nullable=True) for name in ("pad_token_id", "bos_token_id", "eos_token_id")},
    "tie_word_embeddings": Field("bool"),
    "position_embedding_type": Field("str"),
    "architectures": Field("list", nullable=True, items=Field("str")),
    "retriever_pooling": Field("str", choices=("cls", "mean")),
}

# realm-lm's own keys (the port has no such setting): written to config.json only when they differ from the
# default, so a checkpoint that does not use them stays byte-for-byte a port config.
_EXTENSION_DEFAULTS = {"retriever_pooling": "cls"}


@dataclass(init=False)
class RealmConfig:
    """Hyper-parameters of every REALM model class (same names and defaults as the transformers port).

    Unknown keyword arguments are kept in `extra` and can be read as attributes
    (`config.searcher_seq_len`), as the port's `PretrainedConfig` allows.

    One key is ours: `retriever_pooling` chooses what the embedders' pooler reads, the [CLS] position ("cls",
    BERT's and REALM's) or the mean of the real tokens' last hidden states ("mean", how sentence-embedding models
    such as all-MiniLM-L6-v2 are trained to be read). The port ignores the key and always reads [CLS], so a
    "mean" checkpoint gives other numbers under the port; it is written only when "mean".
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    retriever_proj_size: int = 128
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_candidates: int = 8
    intermediate_size: int = 3072
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    span_hidden_size: int = 256
    max_span_width: int = 10
    reader_layer_norm_eps: float = 1e-3
    reader_beam_size: int = 5
    reader_seq_len: int = 320
    num_block_records: int = 13353718
    searcher_beam_size: int = 5000
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    tie_word_embeddings: bool = True
    position_embedding_type: str = "absolute"
    architectures: list[str] | None = None
    retriever_pooling: str = "cls"
    extra: dict[str, Any] = field(default_factory=dict)

    def __init__(self, **kwargs: Any) -> None:
        # A hand-written __init__ so that unknown keys land in `extra` instead of raising, as in the port.
        known = {f.name: f for f in dataclasses.fields(self)}
        extra = dict(kwargs.pop("extra", None) or {})
        for name, f in known.items():
            if name == "extra":
                continue
            if name in kwargs:
                value = kwargs.pop(name)
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = f.default
            object.__setattr__(self, name, value)
        model_type = kwargs.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"model_type is {model_type!r}; a RealmConfig needs model_type {MODEL_TYPE!r}")
        extra.update(kwargs)
        object.__setattr__(self, "extra", extra)
        self._validate()

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: expose unknown config keys as attributes.
        if name != "extra" and "extra" in self.__dict__ and name in self.__dict__["extra"]:
            return self.__dict__["extra"][name]
        raise AttributeError(f"'RealmConfig' object has no attribute {name!r}")

    def _validate(self) -> None:
        for name, spec in _FIELDS.items():
            check_value("config", name, getattr(self, name), spec)
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if getattr(self, name) >= 1:
                raise SchemaError(f"config: {name} is {getattr(self, name)}; expected a probability in [0, 1)")
        for name in ("layer_norm_eps", "reader_layer_norm_eps"):
            if getattr(self, name) <= 0:
                raise SchemaError(f"config: {name} is {getattr(self, name)}; expected a number > 0")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.position_embedding_type != "absolute":
            raise NotImplementedError(
                f"position_embedding_type={self.position_embedding_type!r}: realm-lm implements the absolute "
                "position embeddings every released REALM checkpoint uses"
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not one of {SUPPORTED_ACTIVATIONS}")

    @property
    def model_type(self) -> str:
        return MODEL_TYPE

    # -- (de)serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The port's `config.json` content: known fields, then the kept unknown keys."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name == "architectures" and value is None:
                continue
            if _EXTENSION_DEFAULTS.get(f.name, object()) == value:
                continue
            out[f.name] = value
        out["model_type"] = MODEL_TYPE
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RealmConfig:
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> RealmConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no config file at {path}") from None
        except (ValueError, RecursionError) as err:  # not JSON, or not UTF-8
            raise ValueError(f"{path}: not valid JSON ({err}); restore the checkpoint's config.json") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (ValueError, NotImplementedError, TypeError) as err:
            message = str(err).removeprefix("config: ")
            raise type(err)(f"{path}: {message}; fix config.json (the checkpoint's config)") from None

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> Path:
        """Write `config.json` into `save_directory` (atomically) and return its path."""
        from realm.atomic import atomic_write_text

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(directory / CONFIG_NAME, self.to_json_string())

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str], **overrides: Any) -> RealmConfig:
        """Read `config.json` from a directory, a file, or (with `huggingface_hub`) a hub id."""

        path = Path(name_or_path)
        config_file = path if path.is_file() else resolve_file(name_or_path, CONFIG_NAME)
        config = cls.from_json_file(config_file)
        for key, value in overrides.items():
            config.set(key, value)
        return config

    def set(self, key: str, value: Any) -> None:
        """Set a field, or an extra key when the name is not a field."""
        if key in {f.name for f in dataclasses.fields(self)} and key != "extra":
            old = getattr(self, key)
            object.__setattr__(self, key, value)
            try:
                self._validate()
            except (ValueError, NotImplementedError):
                object.__setattr__(self, key, old)
                raise
        else:
            self.extra[key] = value

    def copy(self, **changes: Any) -> RealmConfig:
        data = self.to_dict()
        data.update(changes)
        return RealmConfig.from_dict(data)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
