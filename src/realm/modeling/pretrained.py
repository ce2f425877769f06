"""`RealmPreTrainedModel`: weight initialisation, `from_pretrained` and `save_pretrained` for every model class.

Checkpoints use the transformers port's state-dict key names, so the released `google/realm-*` files load
unchanged and files we write load in the port. Tensors the port ties (the encoder's decoder and word
embeddings, every `predictions.bias` and `predictions.decoder.bias`, a scorer's shared query tower) are one
tensor here too: a checkpoint needs to hold any one of their names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from realm.atomic import atomic_update, atomic_write, fault_point
from realm.config import RealmConfig
from realm.modeling.checkpoint import (
    SAFE_WEIGHTS_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    read_state_dict,
    resolve_weights,
    save_state_dict,
)

logger = logging.getLogger(__name__)

M = TypeVar("M", bound="RealmPreTrainedModel")


class RealmPreTrainedModel(nn.Module):
    """Base class: holds the config, initialises weights like BERT, loads and saves port-format checkpoints."""

    base_model_prefix = "realm"
    # Key prefixes a checkpoint may lack (heads the forward pass never uses, or a corpus index that can
    # come from elsewhere); a missing one is logged and left at its initial value.
    optional_key_prefixes: tuple[str, ...] = ()

    def __init__(self, config: RealmConfig) -> None:
        super().__init__()
        if not isinstance(config, RealmConfig):
            raise TypeError(f"config must be a RealmConfig, got {type(config).__name__}")
        self.config = config

    # -- initialisation ---------------------------------------------------------------------------

    def init_weights(self) -> None:
        """BERT initialisation: N(0, initializer_range) weights, zero biases, unit LayerNorms."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # -- convenience ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # -- loading ----------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls: type[M],
        name_or_path: str | os.PathLike[str],
        *,
        config: RealmConfig | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> M:
        """Load a model from a directory holding `config.json` and `model.safetensors` / `pytorch_model.bin`.

        Args:
            name_or_path: a local directory, or a hub id (needs `pip install 'realm-lm[hub]'`).
            config: use this config instead of the checkpoint's `config.json`.
            device, dtype: where and in which precision to put the weights.
            **kwargs: config fields to override (e.g. `reader_beam_size=2`); any other keyword goes to the
                model's constructor (e.g. `retriever=` for `RealmForOpenQA`).
        """
        config_fields = set(RealmConfig().to_dict())
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in config_fields}
        if config is None:
            config = RealmConfig.from_pretrained(name_or_path)
        for key, value in overrides.items():
            config.set(key, value)
        model = cls(config, **kwargs)
        weights = resolve_weights(name_or_path)
        model.load_checkpoint(weights)
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model.eval()

    def load_checkpoint(self, path: str | os.PathLike[str], prefix: str = "") -> None:
        """Load a port-format weights file into this model (shapes checked, tied names resolved).

        Args:
            prefix: load the part of a larger model saved under this prefix, e.g. `RealmEmbedder` from a
                `RealmForOpenQA` checkpoint with prefix "embedder.".
        """
        path = Path(path)
        source = f"{path} ({prefix}*)" if prefix else str(path)
        self.load_port_state_dict(read_state_dict(path, prefix), source=source)

    def load_port_state_dict(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Copy a port-format state dict into this model.

        Stale `position_ids` buffers of 2022 checkpoints are ignored; a bare BERT state dict (no `realm.`
        prefix) loads into the trunk as in the port. Raises `CheckpointError` naming `source`, the key and
        both shapes on any mismatch, and listing the keys that are missing.
        """
        state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
        state = self._add_base_prefix(state)
        targets = self.state_dict(keep_vars=True)
        missing: list[str] = []
        used: set[str] = set()
        for names in _alias_groups(targets):
            present = [n for n in names if n in state]
            if not present:
                if all(n.startswith(self.optional_key_prefixes) for n in names):
                    logger.warning("%s has no %s; it keeps its initial value", source, names[0])
                else:
                    missing.append(names[0])
                continue
            name = present[0]
            used.update(present)
            self._copy_into(name, targets[name], state[name], source)
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise CheckpointError(
                f"{source} is missing {len(missing)} key(s) {type(self).__name__} needs: {shown}"
            )
        unexpected = sorted(set(state) - used)
        if unexpected:
            logger.warning(
                "%s: %d key(s) not used by %s: %s", source, len(unexpected), type(self).__name__, unexpected[:10]
            )

    def _add_base_prefix(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        prefix = self.base_model_prefix + "."
        own = self.state_dict(keep_vars=True)
        if not any(k.startswith(prefix) for k in own) or any(k.startswith(prefix) for k in state):
            return state
        return {(prefix + k if prefix + k in own else k): v for k, v in state.items()}

    def _copy_into(self, name: str, target: torch.Tensor, value: torch.Tensor, source: str) -> None:
        if tuple(target.shape) != tuple(value.shape):
            raise CheckpointError(
                f"{source}: {name} has shape {tuple(value.shape)} in the checkpoint but "
                f"{tuple(target.shape)} in {type(self).__name__} (config: {self._shape_hint(name)})"
            )
        if isinstance(target, nn.Parameter):
            with torch.no_grad():
                target.copy_(value)
        else:
            # Buffers (the block embeddings) can be huge: take the loaded tensor instead of copying it.
            module_name, _, buffer_name = name.rpartition(".")
            module = self.get_submodule(module_name) if module_name else self
            module._buffers[buffer_name] = value.to(device=target.device, dtype=target.dtype)

    def _shape_hint(self, name: str) -> str:
        c = self.config
        return (
            f"vocab_size={c.vocab_size}, hidden_size={c.hidden_size}, intermediate_size={c.intermediate_size}, "
            f"retriever_proj_size={c.retriever_proj_size}, num_block_records={c.num_block_records}"
        )

    # -- saving -----------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike[str], safe_serialization: bool = True) -> Path:
        """Write `config.json` and `model.safetensors` (or `pytorch_model.bin`) into `save_directory`.

        The weights and `config.json` are written into a hidden copy of the directory that is swapped in
        one step (`realm.atomic.atomic_update`), so a save killed at any point leaves the previous pair
        intact, never new weights beside an old config. In safetensors, tensors shared under several names are written once, under the first
        name (`RealmPreTrainedModel.from_pretrained` and the port both re-tie them).
        """
        directory = Path(save_directory)
        config = self.config.copy(architectures=[type(self).__name__])
        state = self.state_dict()
        # Weights and config.json are published together (one directory swap): a kill at any moment leaves
        # the old pair or the new one, never new weights under an old config.
        with atomic_update(directory) as tmp:
            if safe_serialization:
                unique = {names[0]: state[names[0]] for names in _alias_groups(self.state_dict(keep_vars=True))}
                save_state_dict(unique, tmp / SAFE_WEIGHTS_NAME)
            else:
                atomic_write(tmp / WEIGHTS_NAME, lambda path: torch.save(state, path))
            fault_point("checkpoint weights written")
            config.save_pretrained(tmp)
        return directory


def _alias_groups(state: dict[str, torch.Tensor]) -> Iterable[list[str]]:
    """Names grouped by the tensor they refer to, in state-dict order."""
    groups: dict[int, list[str]] = {}
    for name, tensor in state.items():
        groups.setdefault(id(tensor), []).append(name)
    return list(groups.values())
