"""Checkpoint files: the weights file of a checkpoint (found by `realm.files.resolve_file`), reading it
safely, writing it atomically.

Reading never unpickles arbitrary objects: `pytorch_model.bin` goes through `torch.load(weights_only=True)`.
Writing is atomic (`realm.atomic`): a crash never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from realm.atomic import atomic_write
from realm.files import resolve_file

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
WEIGHTS_NAME = "pytorch_model.bin"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model asked for."""


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over a module's tensors (names, dtypes, shapes and values, in name order).

    Independent of the file the weights came from, so an embedder saved alone and the same embedder inside
    a `RealmForOpenQA` checkpoint have one fingerprint (recorded in every index `realm index build` writes).
    """
    digest = hashlib.sha256(b"realm-module-v1\n")
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\t{tensor.dtype}\t{tuple(tensor.shape)}\n".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def check_vocabulary(store_vocab_size: int, store: Any, config: Any, model: Any) -> None:
    """Refuse a store whose token ids can reach past the model's vocabulary (an IndexError deep inside
    the embedding lookup otherwise)."""
    if store_vocab_size > config.vocab_size:
        raise ValueError(
            f"the store {store} was tokenized with a {store_vocab_size:,}-wordpiece vocabulary but the model "
            f"{model} has {config.vocab_size:,} wordpieces; use a model trained with the store's tokenizer, or "
            f"rebuild the store with the model's tokenizer (realm blocks build --tokenizer {model})"
        )


def resolve_weights(name_or_path: str | os.PathLike[str]) -> Path:
    """The weights file of a checkpoint: `model.safetensors` if present, else `pytorch_model.bin`."""
    for filename in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME):
        path = resolve_file(name_or_path, filename, optional=True)
        if path is not None:
            return path
    raise FileNotFoundError(f"{name_or_path} holds neither {SAFE_WEIGHTS_NAME} nor {WEIGHTS_NAME}")


def read_state_dict(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Read a safetensors or `pytorch_model.bin` file; the latter with `weights_only=True` (no pickled code).

    Args:
        prefix: read only the keys that start with it, and strip it (e.g. "embedder." to take the
            embedder out of a RealmForOpenQA checkpoint without reading its 6.8 GB `block_emb`).
    """
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        except Exception as err:  # safetensors raises its own error types (header, offsets, truncation)
            raise CheckpointError(
                f"{path} is truncated or damaged and cannot be read as safetensors ({err}); "
                "restore or re-download the checkpoint"
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot be read as a weights-only PyTorch checkpoint ({err})") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """Write tensors to a safetensors file (atomically), with the metadata transformers expects."""
    from safetensors.torch import save_file

    contiguous = {k: v.detach().contiguous() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata={"format": "pt"}))
