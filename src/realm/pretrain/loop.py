"""`pretrain(config)`: the training loop of `realm pretrain`, one code path for 1..N processes.

Run it in one process or under `torchrun --nproc_per_node N` (DistributedDataParallel; gloo on CPU, nccl
on GPU). Step s reads the global batch of examples s G .. (s + 1) G - 1 (G = batch_size x processes x
grad_accumulation); example i is a pure function of (seed, i) (`realm.pretrain.examples`), and process p
takes its slice of each micro-batch, so N processes compute the update one process computes with the
same global batch, and a resumed run reads exactly the examples the killed run would have.

objective = "realm": `RealmPretrainer` (masked sentence -> retrieve -> marginal MLM) with index refresh
(`realm.pretrain.refresh`); objective = "ict": `ICTModel` (the retriever's warm start, no index).

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

import json
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
from realm.config import RealmConfig
from realm.corpus import BlockStore
from realm.distributed import DistributedContext, init_distributed, rank_device
from realm.index.build import IndexBuildConfig
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.knowledge_encoder import RealmKnowledgeAugEncoder
from realm.objectives import IGNORE_INDEX, retrieval_utility
from realm.pretrain.config import PretrainConfig
from realm.pretrain.refresh import PublishedIndex, RefreshFiles, start_worker
from realm.pretrain.step import RealmPretrainer
from realm.train.metrics import MetricsLog
from realm.train.optim import build_optimizer, linear_schedule
from realm.train.state import (
    LAST_DIR,
    gather_rng_states,
    load_training_checkpoint,
    process_slice,
    restore_rng,
    resume_point,
    seed_everything,
    write_training_state,
)

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
EMBEDDER, BLOCK_EMBEDDER, ENCODER, OPENQA = "embedder", "block_embedder", "encoder", "openqa"
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
    context = init_distributed(config.device)
    device = rank_device(config.device, context)
    output_dir = Path(config.output_dir)
    checkpoint = resume_point(output_dir, resume, "pre-training")
    seed_everything(config.seed + context.rank)
    store = BlockStore.open(config.store)
    tokenizer = store.load_tokenizer()
    trainer = _Trainer(config, context, device, store, tokenizer, checkpoint)
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
        self.model, self.generator, self.collate = self._build(tokenizer, checkpoint)
        self.model.to(device)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(config.num_warmup_steps, config.num_steps)
        )
        self.step, self.index_step = 0, 0
        # The index step the `last/` on disk was trained against: its index is kept for resuming.
        self.saved_index_step: int | None = None
        if checkpoint is not None:
            self._resume(checkpoint)
            logger.info("resuming %s at step %d", checkpoint, self.step)
        if config.objective == "realm":
            self._open_first_index(resumed=checkpoint is not None)
            if config.refresh == "async" and context.is_main:
                build = self._index_build_config()
                self.worker = start_worker(self.output_dir, config.store, build, config.device, config.refresh_threads or None)
        self.ddp: Any = self.model
        if context.is_distributed:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )

    # -- set-up -------------------------------------------------------------------------------------

    def _build(self, tokenizer: Any, checkpoint: Path | None) -> tuple[torch.nn.Module, Any, Any]:
        config = self.config
        embedder_path = checkpoint / EMBEDDER if checkpoint else Path(config.embedder)
        embedder = RealmEmbedder.from_pretrained(embedder_path)
        _check_vocab(embedder.config, len(tokenizer), embedder_path)
        if config.objective == "ict":
            from realm.pretrain.ict import ICTConfig, ICTExampleGenerator, ICTModel, collate_ict

            ict = ICTConfig(query_seq_len=config.query_seq_len, block_seq_len=config.block_seq_len,
                            remove_rate=config.ict_remove_rate)  # fmt: skip
            return ICTModel(embedder), ICTExampleGenerator(self.store, tokenizer, ict, seed=config.seed), collate_ict

        from realm.pretrain.examples import ExampleGenerator, collate_masked
        from realm.pretrain.masking import MaskingConfig

        block_embedder = embedder
        if not config.share_embedders:
            block_path = checkpoint / BLOCK_EMBEDDER if checkpoint else Path(config.embedder)
            block_embedder = RealmEmbedder.from_pretrained(block_path)
        encoder_path = checkpoint / ENCODER if checkpoint else Path(config.encoder)
        encoder = RealmKnowledgeAugEncoder.from_pretrained(encoder_path)
        _check_vocab(encoder.config, len(tokenizer), encoder_path)
        longest = max(config.joint_seq_len, config.block_seq_len)
        if longest > encoder.config.max_position_embeddings:
            raise ValueError(
                f"joint_seq_len / block_seq_len ({longest}) exceed the model's max_position_embeddings "
                f"({encoder.config.max_position_embeddings}); lower them"
            )
        model = RealmPretrainer(
            embedder, block_embedder, encoder, self.store, num_candidates=config.num_candidates,
            block_seq_len=config.block_seq_len, joint_seq_len=config.joint_seq_len, loss=config.loss,
        )  # fmt: skip
        masking = MaskingConfig(
            strategy=config.masking, spacy_model=config.spacy_model or None, query_seq_len=config.query_seq_len,
            max_masks=config.max_masks, mask_rate=config.mask_rate,
        )  # fmt: skip
        sentences = self.store
        if config.sentences and Path(config.sentences).resolve() != Path(config.store).resolve():
            sentences = BlockStore.open(config.sentences)
            if sentences.tokenizer_fingerprint != self.store.tokenizer_fingerprint:
                raise ValueError(f"{config.sentences} was tokenized with another tokenizer than {config.store}")
        generator = ExampleGenerator(sentences, tokenizer, masking, seed=config.seed)
        if sentences is self.store:
            return model, generator, collate_masked

        def collate_without_sources(examples: list[Any], pad_id: int) -> dict[str, torch.Tensor]:
            # The sentences are not blocks of the knowledge corpus: no candidate is their source.
            batch = collate_masked(examples, pad_id)
            batch["source_block"] = torch.full_like(batch["source_block"], -1)
            return batch

        return model, generator, collate_without_sources

    def _index_build_config(self) -> IndexBuildConfig:
        c = self.config
        return IndexBuildConfig(chunk_size=c.index_chunk_size, batch_size=c.index_batch_size,
                                max_length=c.block_seq_len, storage_dtype=c.index_dtype)  # fmt: skip

    def _open_first_index(self, resumed: bool) -> None:
        """The index to start with: the checkpoint's, or the given one, or one built now from the
        document tower's initial weights (snapshot 0)."""
        if resumed:
            published = self.files.published(self.index_step)
        elif self.config.index:
            embedder = Path(self.config.embedder)
            published = PublishedIndex(0, Path(self.config.index), embedder)
        else:
            if self.context.is_main:
                self.files.save_snapshot(0, self.model.block_embedder)
            self.context.barrier()
            published = self.files.build(0, self.store, self._index_build_config(), device=self.config.device,
                                         context=self.context, progress=self.config.progress)  # fmt: skip
        self.model.set_index(self.files.open(published, self.store))
        self.index_step = published.step

    def _resume(self, checkpoint: Path) -> None:
        optimizer_state, state = load_training_checkpoint(checkpoint)
        saved = json.loads((checkpoint / PretrainConfig.FILE_NAME).read_text())
        global_batch = self.config.global_batch_size(self.context.world_size)
        changed = [k for k in DATA_ORDER_KEYS if saved.get(k) != getattr(self.config, k)]
        if changed or state["global_batch_size"] != global_batch:
            raise ValueError(
                f"{checkpoint} was written by a run with other {', '.join(changed) or 'global batch size'} "
                f"(global batch {state['global_batch_size']}, now {global_batch}); resume with the same settings"
            )
        self.optimizer.load_state_dict(optimizer_state)
        self.scheduler.load_state_dict(state["scheduler"])
        if len(state["rng"]) == self.context.world_size:
            restore_rng(state["rng"][self.context.rank])
        self.step, self.index_step = int(state["step"]), int(state["index_step"])
        self.saved_index_step = self.index_step

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
            if config.objective == "realm":
                self._maybe_refresh(window)
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
        counts = torch.tensor([float(_predictions(b, config.objective)) for b in batches], dtype=torch.float64)
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
            window.add_output(out, config.objective, float(counts[micro]))
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

    def _maybe_refresh(self, window: _Window) -> None:
        """Sync: rebuild now, every refresh_every steps. Async: snapshot every refresh_every steps, and swap
        in whatever the worker published since the last step."""
        config, context = self.config, self.context
        if config.refresh == "never" or self.step >= config.num_steps:
            return
        started = time.perf_counter()
        due = self.step % config.refresh_every == 0
        if config.refresh == "sync":
            if due:
                if context.is_main:
                    self.files.save_snapshot(self.step, self.model.block_embedder)
                context.barrier()
                published = self.files.build(self.step, self.store, self._index_build_config(),
                                             device=config.device, context=context, progress=False)  # fmt: skip
                self._swap(published)
        else:
            if due and context.is_main:
                self.files.save_snapshot(self.step, self.model.block_embedder)
            decision: list[Any] = [self.files.latest() if context.is_main else None]
            if context.is_distributed:
                dist.broadcast_object_list(decision, src=0)
            published = decision[0]
            if published is not None and published.step > self.index_step:
                self._swap(published)
        window.add_time("refresh", time.perf_counter() - started)

    def _swap(self, published: PublishedIndex) -> None:
        self.model.set_index(self.files.open(published, self.store, current_step=self.index_step))
        logger.info("step %d: swapped in the index of step %d", self.step, published.step)
        self.index_step = published.step
        if self.context.is_main:
            kept = [self.index_step] if self.saved_index_step is None else [self.index_step, self.saved_index_step]
            self.files.prune(kept)

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
        row = window.row(totals.tolist(), self.config.objective)
        row.update({"step": self.step, "lr": window.lr, "grad_norm": window.grad_norm})
        if self.config.objective == "realm":
            row.update({"index_step": self.index_step, "staleness": self.step - self.index_step})
            row["examples"] = counters.pop("examples", 0)
            row["skipped"] = dict(sorted(counters.items()))
        metrics.write({"kind": "train", **row})
        return row

    # -- checkpoints --------------------------------------------------------------------------------

    def _save_towers(self, directory: Path) -> None:
        model = self.model
        if self.config.objective == "ict":
            model.embedder.save_pretrained(directory / EMBEDDER)
            return
        model.query_embedder.save_pretrained(directory / EMBEDDER)
        if not model.shares_embedders:
            model.block_embedder.save_pretrained(directory / BLOCK_EMBEDDER)
        model.encoder.save_pretrained(directory / ENCODER)

    def _save_last(self) -> None:
        context = self.context
        states = gather_rng_states(context)
        if context.is_main:
            state = {
                "step": self.step, "index_step": self.index_step, "rng": states, "world_size": context.world_size,
                "global_batch_size": self.config.global_batch_size(context.world_size), "seed": self.config.seed,
            }  # fmt: skip
            with atomic_directory(self.output_dir / LAST_DIR) as tmp:
                self._save_towers(tmp)
                write_training_state(tmp, self.config, self.optimizer, self.scheduler, state)
            self.saved_index_step = self.index_step
        context.barrier()

    def _save_final(self) -> None:
        if self.context.is_main:
            with atomic_directory(self.output_dir / FINAL_DIR) as tmp:
                self._save_towers(tmp)
                self.tokenizer.save_pretrained(tmp / EMBEDDER)
                if self.config.objective == "realm":
                    self.tokenizer.save_pretrained(tmp / ENCODER)
                    from realm.modeling.bert_import import openqa_from_pretrained

                    openqa_from_pretrained(tmp / EMBEDDER, tmp / ENCODER, tmp / OPENQA)
        self.context.barrier()

    def close(self) -> None:
        if self.config.objective == "realm" and self.context.is_main and self.step >= self.config.num_steps:
            self.files.mark_done()
        if self.worker is not None:
            self.files.mark_done()
            try:
                self.worker.wait(timeout=5)
            except Exception:
                self.worker.terminate()
                self.worker.wait()


class _Window:
    """Sums over the steps since the last log row."""

    def __init__(self) -> None:
        self.totals = [0.0] * 6
        self.times: dict[str, float] = {}
        self.steps = 0
        self.grad_norm = 0.0
        self.lr = 0.0
        self.started = time.perf_counter()

    def add_time(self, part: str, seconds: float) -> None:
        self.times[part] = self.times.get(part, 0.0) + seconds

    def add_output(self, out: Any, objective: str, count: float) -> None:
        if objective == "realm":
            values = [out.loss.detach() * count, count, out.marginal_log_likelihood, out.null_log_likelihood,
                      out.correct, out.null_correct]  # fmt: skip
        else:
            values = [out.loss.detach() * count, count, out.accuracy * count, 0, 0, 0]
        for i, value in enumerate(values):
            self.totals[i] += float(value)

    def row(self, totals: list[float], objective: str) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.started
        timing = {f"time_{k}": v / max(self.steps, 1) for k, v in sorted(self.times.items())}
        base = {"steps_per_s": self.steps / max(elapsed, 1e-9), **timing}
        if objective == "ict":
            n = max(totals[1], 1.0)
            return {"loss": totals[0] / n, "accuracy": totals[2] / n, **base}
        n = max(totals[1], 1.0)
        return {
            "loss": totals[0] / n,
            "retrieval_utility": retrieval_utility(totals[2], totals[3], totals[1]),
            "mlm_accuracy": totals[4] / n,
            "null_mlm_accuracy": totals[5] / n,
            "masked_tokens": totals[1],
            **base,
        }


def _predictions(batch: dict[str, torch.Tensor], objective: str) -> int:
    """What a batch's loss is a mean over: masked tokens (REALM) or queries (ICT)."""
    if objective == "realm":
        return int((batch["labels"] != IGNORE_INDEX).sum())
    return int(next(iter(batch.values())).shape[0])


def _check_vocab(model_config: RealmConfig, vocab_size: int, path: Path) -> None:
    if vocab_size > model_config.vocab_size:
        raise ValueError(
            f"the store's tokenizer has {vocab_size} tokens but {path} only {model_config.vocab_size}: the store "
            "was built with another tokenizer than the model's"
        )
