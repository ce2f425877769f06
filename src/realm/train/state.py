"""Fine-tuning checkpoints, RNG states and the data order: what makes a killed run resume exactly.

A checkpoint directory (`last/` for resuming, `best/` for the best dev EM) is a `RealmForOpenQA`
checkpoint: `config.json` (with `num_block_records=0`: the block embeddings are the index's, not the
checkpoint's) and `model.safetensors` holding the `embedder.` and `reader.` weights. It loads with
`RealmForOpenQA.from_pretrained(dir, retriever=..., index=...)` and `Pipeline.from_pretrained(dir, store,
index)`. `finetune_config.json` records the run's settings. `last/` adds `optimizer.pt` and
`trainer_state.pt` (step, scheduler, every process's torch / numpy / python RNG states, the best score,
the data position), both read back with `torch.load(weights_only=True)`, and `trainer_state.json`.

Directories are written whole under a temporary name and renamed into place; the previous one is moved
aside first and deleted after, so a kill at any moment leaves a complete checkpoint under `last/` or,
between the two renames, under `.last.old/` (which `find_checkpoint` falls back to).

The data order is a pure function of (seed, step): the training set is shuffled once per epoch with a
generator seeded by (seed, epoch), the epochs are laid end to end, and step s takes global positions
[s G, (s + 1) G) for a global batch G. Micro-batch m of process p takes its `batch_size` slice of that.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from realm.atomic import atomic_directory
from realm.config import RealmConfig
from realm.distributed import DistributedContext, init_distributed, rank_device
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.openqa import save_openqa
from realm.modeling.reader import RealmReader

logger = logging.getLogger(__name__)

LAST_DIR = "last"
BEST_DIR = "best"
OPTIMIZER_NAME = "optimizer.pt"
TRAINER_STATE_NAME = "trainer_state.pt"
TRAINER_JSON_NAME = "trainer_state.json"


# -- data order -----------------------------------------------------------------------------------


def global_batch_indices(seed: int, step: int, global_batch_size: int, num_examples: int) -> np.ndarray:
    """Example indices of optimizer step `step` ([G] int64), epochs of per-epoch shuffles laid end to end."""
    positions = np.arange(step * global_batch_size, (step + 1) * global_batch_size, dtype=np.int64)
    epochs = positions // num_examples
    out = np.empty_like(positions)
    for epoch in np.unique(epochs).tolist():
        order = np.random.default_rng([seed, epoch]).permutation(num_examples)
        chosen = epochs == epoch
        out[chosen] = order[positions[chosen] % num_examples]
    return out


def process_slice(
    indices: np.ndarray, micro_step: int, rank: int, batch_size: int, world_size: int
) -> np.ndarray:
    """The `batch_size` examples process `rank` reads in micro-batch `micro_step` of a global batch.

    Micro-batch m covers global positions [m B W, (m + 1) B W); process p takes [p B, (p + 1) B) of it, so
    the processes' slices are disjoint and together the whole global batch.
    """
    start = micro_step * batch_size * world_size + rank * batch_size
    return indices[start : start + batch_size]


# -- RNG states -----------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture_rng() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and python RNG states, as tensors and plain values only."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},  # fmt: skip
        "python": {"version": version, "state": list(python_state), "gauss": python_gauss},
    }


def gather_rng_states(context: DistributedContext) -> list[dict[str, Any]]:
    """Every process's `capture_rng()`, in rank order (every process must call it)."""
    rng = capture_rng()
    if not context.is_distributed:
        return [rng]
    states: list[Any] = [None] * context.world_size
    dist.all_gather_object(states, rng)
    return states


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# -- model directories ----------------------------------------------------------------------------


def find_checkpoint(output_dir: Path, name: str = LAST_DIR) -> Path | None:
    """`output_dir/last` if complete, else the `.last.old` a kill between two renames left, else None."""
    for candidate in (output_dir / name, output_dir / f".{name}.old"):
        if (candidate / TRAINER_STATE_NAME).is_file():
            return candidate
    return None


def resume_point(output_dir: Path, resume: bool, kind: str) -> Path | None:
    """The checkpoint to continue from (`--resume`), or None to start afresh; a fresh start into a
    directory that already holds a `kind` checkpoint is refused rather than overwriting it."""
    found = find_checkpoint(output_dir)
    if found is not None and not resume:
        raise FileExistsError(
            f"{output_dir} already holds a {kind} checkpoint; continue it with --resume or choose another output_dir"
        )
    return found if resume else None


def save_training_checkpoint(
    directory: Path,
    embedder: RealmEmbedder,
    reader: RealmReader,
    model_config: RealmConfig,
    finetune_config: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer_state: dict[str, Any],
) -> None:
    """Write `last/` atomically: model, optimizer, scheduler, trainer state (step, RNGs of every process,
    best score, data position)."""
    with atomic_directory(directory) as tmp:
        save_openqa(tmp, embedder, reader, model_config)
        write_training_state(tmp, finetune_config, optimizer, scheduler, trainer_state)


def write_training_state(
    directory: Path,
    run_config: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    trainer_state: dict[str, Any],
) -> None:
    """Beside a checkpoint's weights: the run's config, `optimizer.pt`, `trainer_state.pt` (with the
    scheduler) and a readable `trainer_state.json` (all but the RNG states). `load_training_checkpoint`
    reads them back."""
    run_config.save(directory)
    torch.save(optimizer.state_dict(), directory / OPTIMIZER_NAME)
    torch.save({**trainer_state, "scheduler": scheduler.state_dict()}, directory / TRAINER_STATE_NAME)
    summary = {k: v for k, v in trainer_state.items() if k != "rng"}
    (directory / TRAINER_JSON_NAME).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def save_model_checkpoint(
    directory: Path, embedder: RealmEmbedder, reader: RealmReader, model_config: RealmConfig, finetune_config: Any,
    info: dict[str, Any],
) -> None:  # fmt: skip
    """Write `best/` atomically: the model, the run's config, and `info` (step and scores) as JSON."""
    with atomic_directory(directory) as tmp:
        save_openqa(tmp, embedder, reader, model_config)
        finetune_config.save(tmp)
        (tmp / TRAINER_JSON_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def load_training_checkpoint(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(optimizer state dict, trainer state) of a `last/` directory, read with `weights_only=True`."""
    optimizer = torch.load(directory / OPTIMIZER_NAME, map_location="cpu", weights_only=True)
    state = torch.load(directory / TRAINER_STATE_NAME, map_location="cpu", weights_only=True)
    return optimizer, state


# -- the start of a run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStart:
    """Where a training run stands before it builds anything: its process, device, output and resume point."""

    context: DistributedContext
    device: torch.device
    output_dir: Path
    checkpoint: Path | None


def start_run(config: Any, resume: bool, kind: str) -> RunStart:
    """Join the process group, pick this process's device, find the checkpoint to resume (or refuse an output
    directory that holds one without `resume`) and seed every RNG with seed + rank.

    Args:
        config: the run's config (`device`, `output_dir`, `seed`).
        kind: "fine-tuning" or "pre-training", for the messages.
    """
    context = init_distributed(config.device)
    device = rank_device(config.device, context)
    output_dir = Path(config.output_dir)
    checkpoint = resume_point(output_dir, resume, kind)
    seed_everything(config.seed + context.rank)
    return RunStart(context, device, output_dir, checkpoint)


def resume_training(
    checkpoint: Path,
    config: Any,
    data_order_keys: tuple[str, ...],
    context: DistributedContext,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Load a `last/` checkpoint's optimizer, scheduler and this process's RNG state; return its trainer state.

    A resumed run must read the examples the killed run would have: a checkpoint written with other
    `data_order_keys` settings or another global batch size is refused; other changed settings are logged.
    """
    optimizer_state, state = load_training_checkpoint(checkpoint)
    saved = json.loads((checkpoint / config.FILE_NAME).read_text())
    global_batch = config.global_batch_size(context.world_size)
    changed = [k for k in data_order_keys if saved.get(k) != getattr(config, k)]
    if changed or state["global_batch_size"] != global_batch:
        raise ValueError(
            f"{checkpoint} was written by a run with other {', '.join(changed) or 'global batch size'} "
            f"(global batch {state['global_batch_size']}, now {global_batch}); resume with the same settings"
        )
    others = sorted(k for k, v in config.to_dict().items() if k in saved and saved[k] != v)
    if others:
        logger.warning("resuming with changed settings: %s", ", ".join(others))
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(state["scheduler"])
    if len(state["rng"]) == context.world_size:
        restore_rng(state["rng"][context.rank])
    else:
        logger.warning("the checkpoint has RNG states of %d processes, not %d: reseeding", len(state["rng"]), context.world_size)
    return state
