"""`pretrain(config)`: the training loop of `realm pretrain`, one code path for 1..N processes.

Run it in one process or under `torchrun --nproc_per_node N` (DistributedDataParallel; gloo on CPU, nccl
on GPU). Step s reads the global batch of examples s G .. (s + 1) G - 1 (G = batch_size x processes x
grad_accumulation); example i is a pure function of (seed, i) (`realm.pretrain.examples`), and process p
takes its slice of each micro-batch, so N processes compute the update one process computes with the
same global batch, and a resumed run reads exactly the examples the killed run would have.

What the objective changes (model, data, what a loss is a mean over, the log row, the index and its refresh)
is a strategy object, `realm.pretrain.strategies`: "realm" (`RealmPretrainer`: masked sentence -> retrieve
-> marginal MLM, with index refresh; MLM-only is num_candidates = 1) and "ict" (`ICTModel`, the retriever's
warm start, no index). The loop below is the same for every objective.

Output directory:
    last/             resume point: embedder/, encoder/ (realm), block_embedder/ (unshared towers),
                      optimizer.pt, trainer_state.pt (+ .json), pretrain_config.json
    final/            the result: embedder/ (RealmEmbedder), encoder/ (RealmKnowledgeAugEncoder) and
                      openqa/ (RealmForOpenQA, the reader initialised from the encoder) for `realm finetune`
    metrics.jsonl     a row every log_every steps: loss, retrieval utility, MLM accuracy (marginal and
                      null-only), staleness, skipped-sentence counts, time per part
    snapshots/, index/  the refreshes (see `realm.pretrain.refresh`)
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from realm.atomic import atomic_directory
from realm.corpus import BlockStore
from realm.distributed import DistributedContext, wrap_ddp
from realm.pretrain.config import PretrainConfig
from realm.pretrain.refresh import RefreshFiles
from realm.pretrain.strategies import EMBEDDER, NUM_TOTALS, objective_for
from realm.train.metrics import MetricsLog
from realm.train.optim import optimizer_and_schedule
from realm.train.state import (
    LAST_DIR,
    gather_rng_states,
    process_slice,
    resume_training,
    start_run,
    write_training_state,
)

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
# Changing these changes which examples later steps read: a resumed run must keep them.
DATA_ORDER_KEYS = ("seed", "store", "sentences", "objective", "masking", "spacy_model", "max_masks", "mask_rate",
                   "query_seq_len", "ict_remove_rate")  # fmt: skip


@dataclass
class PretrainResult:
    """What a `pretrain` call did: the steps done (in total), the output directory, the last logged row."""

    step: int
    output_dir: Path
    last_metrics: dict[str, Any] | None

    @property
    def final_dir(self) -> Path:
        return self.output_dir / FINAL_DIR

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"


def pretrain(config: PretrainConfig, *, resume: bool = False, stop_after: int | None = None) -> PretrainResult:
    """Pre-train as `config` says; see the module doc.

    Args:
        resume: continue from `output_dir/last` if it exists (else start afresh). Without it, an output
            directory that already holds a checkpoint is refused.
        stop_after: stop (after saving `last/`) once this many steps are done, as a kill would, without
            changing the schedule; `resume=True` continues the same run.
    """
    run = start_run(config, resume, "pre-training")
    store = BlockStore.open(config.store)
    tokenizer = store.load_tokenizer()
    trainer = _Trainer(config, run.context, run.device, store, tokenizer, run.checkpoint)
    try:
        return trainer.run(stop_after)
    finally:
        trainer.close()


class _Trainer:
    """The state of one run: model, optimizer, data, index; `run` is the loop."""

    def __init__(
        self, config: PretrainConfig, context: DistributedContext, device: torch.device, store: BlockStore,
        tokenizer: Any, checkpoint: Path | None,
    ) -> None:  # fmt: skip
        self.config, self.context, self.device, self.store = config, context, device, store
        self.tokenizer = tokenizer
        self.output_dir = Path(config.output_dir)
        self.pad_id = store.special_ids[2]
        self.files = RefreshFiles(self.output_dir)
        self.worker = None
        self._counted: Counter[str] = Counter()
        self.objective = objective_for(config.objective)
        self.model, self.generator, self.collate = self.objective.build(self, checkpoint)
        self.model.to(device)
        self.optimizer, self.scheduler = optimizer_and_schedule(self.model, config)
        self.step, self.index_step = 0, 0
        # The index step the `last/` on disk was trained against: its index is kept for resuming.
        self.saved_index_step: int | None = None
        if checkpoint is not None:
            state = resume_training(checkpoint, config, DATA_ORDER_KEYS, context, self.optimizer, self.scheduler)
            self.step, self.index_step = int(state["step"]), int(state["index_step"])
            self.saved_index_step = self.index_step
            logger.info("resuming %s at step %d", checkpoint, self.step)
        self.objective.start(self, resumed=checkpoint is not None)
        self.ddp: Any = wrap_ddp(self.model, context, device)

    # -- the loop -----------------------------------------------------------------------------------

    def run(self, stop_after: int | None) -> PretrainResult:
        config, context = self.config, self.context
        metrics = MetricsLog(self.output_dir, self.step, enabled=context.is_main)
        if context.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            config.save(self.output_dir)
        from tqdm.auto import tqdm

        bar = tqdm(total=config.num_steps, initial=self.step, unit="step", desc=f"pretrain ({config.objective})",
                   disable=not (config.progress and context.is_main))  # fmt: skip
        window = _Window()
        last_row = None
        self.model.train()
        while self.step < config.num_steps and (stop_after is None or self.step < stop_after):
            self._train_step(window)
            self.step += 1
            bar.update(1)
            self.objective.after_step(self, window)
            if self.step % config.log_every == 0 or self.step == config.num_steps:
                last_row = self._log(window, metrics)
                bar.set_postfix(loss=f"{last_row['loss']:.3f}", refresh=False)
                window = _Window()
            if (config.save_every and self.step % config.save_every == 0) or self.step in (config.num_steps, stop_after):
                self._save_last()
        bar.close()
        metrics.close()
        if self.step >= config.num_steps:
            self._save_final()
        return PretrainResult(self.step, self.output_dir, last_row)

    def _train_step(self, window: _Window) -> None:
        config, context = self.config, self.context
        global_batch = config.global_batch_size(context.world_size)
        positions = torch.arange(self.step * global_batch, (self.step + 1) * global_batch).numpy()
        started = time.perf_counter()
        batches = []
        for micro in range(config.grad_accumulation):
            mine = process_slice(positions, micro, context.rank, config.batch_size, context.world_size).tolist()
            batch = self.collate([self.generator.example(i) for i in mine], self.pad_id)
            batches.append({k: v.to(self.device) for k, v in batch.items()})
        window.add_time("data", time.perf_counter() - started)
        # Each micro-batch's loss is weighted by its share of the step's predictions over ALL processes
        # (masked tokens for REALM, queries for ICT), so that DDP's gradient average over W processes and
        # the sum over micro-batches give the gradient of the global batch's mean loss, as one process
        # would compute it.
        counts = torch.tensor([float(self.objective.predictions(b)) for b in batches], dtype=torch.float64)
        total = counts.sum().clone()
        if context.is_distributed:
            dist.all_reduce(total)
        self.optimizer.zero_grad(set_to_none=True)
        for micro, batch in enumerate(batches):
            last_micro = micro == config.grad_accumulation - 1
            sync = self.ddp.no_sync() if context.is_distributed and not last_micro else nullcontext()
            with sync:
                started = time.perf_counter()
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.bf16):
                    out = self.ddp(**batch)
                window.add_time("forward", time.perf_counter() - started)
                started = time.perf_counter()
                weight = float(counts[micro] * context.world_size / max(float(total), 1.0))
                (out.loss * weight).backward()
                window.add_time("backward", time.perf_counter() - started)
            window.add(self.objective.totals(out, float(counts[micro])))
        started = time.perf_counter()
        max_norm = config.clip_norm if config.clip_norm > 0 else math.inf
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        window.grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
        window.lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        window.add_time("optimizer", time.perf_counter() - started)
        timings = getattr(self.model, "timings", None)
        if timings:
            for part, seconds in timings.items():
                window.add_time(part, seconds)
            timings.clear()
        window.steps += 1

    def _log(self, window: _Window, metrics: MetricsLog) -> dict[str, Any]:
        context = self.context
        totals = torch.tensor(window.totals, dtype=torch.float64)
        skips: list[Any] = [dict(getattr(self.generator, "counters", {}))]
        if context.is_distributed:
            dist.all_reduce(totals)
            gathered: list[Any] = [None] * context.world_size
            dist.all_gather_object(gathered, skips[0])
            skips = gathered
        counters: Counter[str] = Counter()
        for c in skips:
            counters.update(c)
        # The generators count since the start of this process; the row reports this window.
        counters, self._counted = counters - self._counted, counters
        row = {**self.objective.row(totals.tolist()), **window.timing()}
        row.update({"step": self.step, "lr": window.lr, "grad_norm": window.grad_norm})
        row.update(self.objective.log_fields(self, counters))
        metrics.write({"kind": "train", **row})
        return row

    # -- checkpoints --------------------------------------------------------------------------------

    def _save_last(self) -> None:
        context = self.context
        states = gather_rng_states(context)
        if context.is_main:
            state = {
                "step": self.step, "index_step": self.index_step, "rng": states, "world_size": context.world_size,
                "global_batch_size": self.config.global_batch_size(context.world_size), "seed": self.config.seed,
            }  # fmt: skip
            with atomic_directory(self.output_dir / LAST_DIR) as tmp:
                self.objective.save_towers(self.model, tmp)
                write_training_state(tmp, self.config, self.optimizer, self.scheduler, state)
            self.saved_index_step = self.index_step
        context.barrier()

    def _save_final(self) -> None:
        if self.context.is_main:
            with atomic_directory(self.output_dir / FINAL_DIR) as tmp:
                self.objective.save_towers(self.model, tmp)
                self.tokenizer.save_pretrained(tmp / EMBEDDER)
                self.objective.save_final(self, tmp)
        self.context.barrier()

    def close(self) -> None:
        self.objective.close(self)
        if self.worker is not None:
            self.files.mark_done()
            try:
                self.worker.wait(timeout=5)
            except Exception:
                self.worker.terminate()
                self.worker.wait()


class _Window:
    """Sums over the steps since the last log row (what the sums mean is the objective's)."""

    def __init__(self) -> None:
        self.totals = [0.0] * NUM_TOTALS
        self.times: dict[str, float] = {}
        self.steps = 0
        self.grad_norm = 0.0
        self.lr = 0.0
        self.started = time.perf_counter()

    def add_time(self, part: str, seconds: float) -> None:
        self.times[part] = self.times.get(part, 0.0) + seconds

    def add(self, values: list[float]) -> None:
        for i, value in enumerate(values):
            self.totals[i] += value

    def timing(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.started
        timing = {f"time_{k}": v / max(self.steps, 1) for k, v in sorted(self.times.items())}
        return {"steps_per_s": self.steps / max(elapsed, 1e-9), **timing}
