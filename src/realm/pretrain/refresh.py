"""Index refresh during pre-training: re-embed the corpus with the current document tower and swap it in.

The document tower changes every step, but the index that selects candidates was built from an older
copy of it; REALM refreshes it every few hundred steps (the paper: about every 500). The files, under the
run's output directory:

    snapshots/step-00000500/   the document tower at step 500 (a `RealmEmbedder` checkpoint)
    index/step-00000500/       the corpus embedded by that snapshot (`realm.index.build.build_index`)
    index/LATEST.json          {"step": 500, "index": "step-00000500", "embedder": "snapshots/..."}

Every directory is written whole under a temporary name and renamed; `LATEST.json` is rewritten
atomically only once its index is complete. A trainer therefore never sees half an index: it reads the
pointer at a step boundary, opens the index it names, checks that it was built from this store by that
snapshot's weights (a mismatched or stale index is refused) and swaps it in.

Two ways to refresh (`PretrainConfig.refresh`):
    sync     every `refresh_every` steps the trainer's processes stop, embed the corpus together (each
             takes a share of the chunks) and continue with the new index. Exactly reproducible.
    async    the trainer only writes a snapshot every `refresh_every` steps and goes on; a separate
             process (`refresh_worker`, started by the trainer, or `realm pretrain-refresh` run by hand,
             e.g. under torchrun on other GPUs: `external`) embeds the newest snapshot and publishes it;
             the trainer swaps at the first step boundary after. Training never waits, at the price of a
             staler index and a swap step that depends on timing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from realm.atomic import atomic_directory, atomic_write_text
from realm.corpus import BlockStore
from realm.distributed import DistributedContext
from realm.index import Index, open_index
from realm.index.build import IndexBuildConfig, build_index, check_index
from realm.modeling.embedder import RealmEmbedder

logger = logging.getLogger(__name__)

SNAPSHOTS = "snapshots"
INDEXES = "index"
LATEST = "LATEST.json"
DONE = "TRAINING_DONE"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True)
class PublishedIndex:
    """What `LATEST.json` names: the index built at `step` by the snapshot `embedder`."""

    step: int
    index: Path
    embedder: Path


class RefreshFiles:
    """The snapshots and indexes of one run directory (see the module doc)."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.snapshots = self.run_dir / SNAPSHOTS
        self.indexes = self.run_dir / INDEXES

    def save_snapshot(self, step: int, embedder: RealmEmbedder) -> Path:
        """Write the document tower of `step` (atomically; main process only)."""
        final = self.snapshots / step_dir(step)
        with atomic_directory(final) as tmp:
            embedder.save_pretrained(tmp)
        return final

    def newest_snapshot(self) -> int | None:
        steps = _steps_in(self.snapshots)
        return steps[-1] if steps else None

    def build(
        self,
        step: int,
        store: BlockStore,
        config: IndexBuildConfig,
        *,
        device: Any = None,
        context: DistributedContext | None = None,
        progress: bool = False,
    ) -> PublishedIndex:
        """Embed the corpus with snapshot `step` (from every process of `context`) and publish it."""
        context = context or DistributedContext.current()
        embedder = self.snapshots / step_dir(step)
        out = self.indexes / step_dir(step)
        build_index(
            store, embedder, out, config, store_fingerprint=store.fingerprint, special_ids=store.special_ids,
            device=device, context=context, progress=progress, provenance={"snapshot_step": step, "store": str(store.path)},
            poll_seconds=0.2,
        )  # fmt: skip
        published = PublishedIndex(step, out, embedder)
        if context.is_main:
            self.publish(published)
        context.barrier()
        return published

    def publish(self, published: PublishedIndex) -> None:
        """Point `LATEST.json` at a complete index (atomic rename)."""
        record = {
            "step": published.step,
            "index": str(published.index.relative_to(self.indexes)),
            "embedder": str(published.embedder.relative_to(self.run_dir)),
        }
        atomic_write_text(self.indexes / LATEST, json.dumps(record, indent=2) + "\n")

    def latest(self) -> PublishedIndex | None:
        path = self.indexes / LATEST
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        return PublishedIndex(int(record["step"]), self.indexes / record["index"], self.run_dir / record["embedder"])

    def published(self, step: int) -> PublishedIndex:
        """The index built from snapshot `step` (e.g. the one a checkpoint was trained against)."""
        found = PublishedIndex(step, self.indexes / step_dir(step), self.snapshots / step_dir(step))
        if not (found.index / "manifest.json").is_file():
            raise FileNotFoundError(
                f"{found.index}: the index of step {step} is missing; it was deleted or never finished"
            )
        return found

    def open(self, published: PublishedIndex, store: BlockStore, *, current_step: int | None = None) -> Index:
        """Open a published index after checking it: built from `store` by its snapshot, not older than
        the index in use (`current_step`)."""
        if current_step is not None and published.step < current_step:
            raise ValueError(
                f"{published.index} is stale: built at step {published.step}, older than the index in use "
                f"(step {current_step})"
            )
        embedder = published.embedder if (published.embedder / "config.json").is_file() else None
        manifest = check_index(published.index, store, store_dir=store.path, embedder_path=embedder)
        if manifest.extra.get("snapshot_step", published.step) != published.step:
            raise ValueError(
                f"{published.index} says it was built at step {manifest.extra['snapshot_step']}, not {published.step}"
            )
        return open_index(published.index)

    def prune(self, keep_steps: Sequence[int]) -> None:
        """Delete snapshots and indexes older than every step in `keep_steps` (main process only).

        Newer ones may be in the making by an asynchronous worker and are left alone; the steps kept are
        the index in use and the one the saved checkpoint needs to resume.
        """
        oldest = min(keep_steps)
        for folder in (self.snapshots, self.indexes):
            for step in _steps_in(folder):
                if step < oldest:
                    shutil.rmtree(folder / step_dir(step), ignore_errors=True)

    def mark_done(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / DONE).write_text("done\n")

    @property
    def done(self) -> bool:
        return (self.run_dir / DONE).is_file()


def _steps_in(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    steps = []
    for entry in folder.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir():
            steps.append(int(match.group(1)))
    return sorted(steps)


# -- the asynchronous worker ------------------------------------------------------------------------


def refresh_worker(
    run_dir: str | os.PathLike[str],
    store_dir: str | os.PathLike[str],
    config: IndexBuildConfig,
    *,
    device: Any = None,
    poll_seconds: float = 1.0,
    progress: bool = False,
) -> int:
    """Embed each newest snapshot of `run_dir` and publish it, until the trainer marks the run done.

    Run it in one process or under torchrun (the ranks share each build). Snapshots written while a
    build runs are skipped in favour of the newest: the trainer wants the freshest index, not every one.

    Returns:
        how many indexes it published.
    """
    files = RefreshFiles(run_dir)
    store = BlockStore.open(store_dir)
    context = DistributedContext.current()
    latest = files.latest()
    built = latest.step if latest is not None else -1
    published = 0
    while True:
        decision: list[Any] = [files.newest_snapshot(), files.done]
        if context.is_distributed:
            dist.broadcast_object_list(decision, src=0)
        newest, done = decision
        if newest is not None and newest > built:
            logger.info("refresh: embedding the corpus with the snapshot of step %d", newest)
            files.build(newest, store, config, device=device, context=context, progress=progress)
            built, published = newest, published + 1
        elif done:
            return published
        else:
            time.sleep(poll_seconds)


def start_worker(
    run_dir: Path, store_dir: str, config: IndexBuildConfig, device: str, threads: int | None = None
) -> subprocess.Popen:
    """Start `refresh_worker` in a child process (`realm pretrain-refresh`); its log goes to
    `<run_dir>/refresh.log`."""
    command = [
        sys.executable, "-m", "realm.cli", "-v", "pretrain-refresh", "--run-dir", str(run_dir), "--store", store_dir,
        "--device", device, "--chunk-size", str(config.chunk_size), "--batch-size", str(config.batch_size),
        "--max-length", str(config.max_length), "--dtype", config.storage_dtype,
    ]  # fmt: skip
    env = dict(os.environ)
    # The worker is a job of its own, not a rank of the trainer's process group.
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID"):  # fmt: skip
        env.pop(key, None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "refresh.log", "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
