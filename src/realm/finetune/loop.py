"""`finetune(config)`: the training loop of `realm finetune`, one code path for 1..N processes.

Run it in one process, or under `torchrun --nproc_per_node N` (DistributedDataParallel over the query
tower and reader: gloo on CPU, nccl on GPU). Each optimizer step reads a global batch of
batch_size x processes x grad_accumulation questions; every process takes a disjoint slice, so N
processes compute the same update as one process with the same global batch.

Per step: forward/backward of each micro-batch (`OpenQAFinetuner`, optionally under bf16 autocast; the
gradient all-reduce happens once, on the last micro-batch), gradient clipping, AdamW, linear warm-up
then linear decay. Every `log_every` steps a row goes to `metrics.jsonl` (and TensorBoard when
installed); every `eval_every` steps the main process evaluates on the dev set with `realm.eval.evaluate`
(EM, recall@k) and keeps the best in `best/`; every `save_every` steps `last/` is written for `--resume`.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from realm.config import RealmConfig
from realm.corpus import BlockStore
from realm.distributed import DistributedContext, wrap_ddp
from realm.eval import QAExample, read_qa_jsonl
from realm.eval.evaluate import evaluate
from realm.finetune.config import FinetuneConfig
from realm.finetune.step import EncodedQuestions, OpenQAFinetuner, encode_questions
from realm.index import open_index
from realm.index.build import check_index
from realm.index.hybrid import with_sparse
from realm.inputs import collate_questions
from realm.modeling.openqa import load_towers
from realm.pipeline import Pipeline
from realm.tokenization import RealmTokenizerFast
from realm.train.metrics import METRICS_NAME, MetricsLog
from realm.train.optim import optimizer_and_schedule
from realm.train.state import (
    BEST_DIR,
    LAST_DIR,
    gather_rng_states,
    global_batch_indices,
    process_slice,
    resume_training,
    save_model_checkpoint,
    save_training_checkpoint,
    start_run,
)
from realm.verify import record_index_embedder

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 20, 100)
# Changing these changes which questions later steps read: a resumed run must keep them.
DATA_ORDER_KEYS = ("seed", "train", "drop_unread")


@dataclass
class FinetuneResult:
    """What a `finetune` call did.

    Attributes:
        step: optimizer steps done (in total, counting a resumed run's earlier ones).
        best: the best evaluation ({"step", "exact_match", "recall@5", ...}), None without a dev set.
        output_dir: holds `last/`, `best/` and `metrics.jsonl`.
    """

    step: int
    best: dict[str, Any] | None
    output_dir: Path

    @property
    def last_dir(self) -> Path:
        return self.output_dir / LAST_DIR

    @property
    def best_dir(self) -> Path:
        return self.output_dir / BEST_DIR

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / METRICS_NAME


def finetune(config: FinetuneConfig, *, resume: bool = False, stop_after: int | None = None) -> FinetuneResult:
    """Fine-tune `config.model` on `config.train`; see the module doc.

    Args:
        resume: continue from `output_dir/last` if it exists (else start afresh). Without it, an output
            directory that already holds a checkpoint is refused.
        stop_after: stop (after saving `last/`) once this many steps are done, as a kill would, without
            changing the schedule; `resume=True` continues the same run.
    """
    run = start_run(config, resume, "fine-tuning")
    context, device, output_dir, checkpoint = run.context, run.device, run.output_dir, run.checkpoint

    store = BlockStore.open(config.store)
    tokenizer = RealmTokenizerFast.from_pretrained(store.path / "tokenizer")
    index_manifest = check_index(config.index, store, store_dir=config.store)
    index = with_sparse(
        open_index(config.index), config.sparse or None, store, fusion=config.fusion, depth=config.depth,
        weight=config.weight,
    )  # fmt: skip
    model_config = _model_config(config, len(tokenizer))
    record_index_embedder(model_config, index_manifest.extra)  # the query tower will move away from it
    embedder, reader = load_towers(checkpoint or config.model, model_config, device)
    finetuner = OpenQAFinetuner(
        embedder, reader, store, index, tokenizer,
        config.searcher_beam_size, config.reader_beam_size, config.reader_seq_len,
    )  # fmt: skip
    train = _read_train(config.train)
    encoded = encode_questions(
        tokenizer, [e.question for e in train], [e.answers for e in train], config.question_max_length
    )
    dev = read_qa_jsonl(config.dev)[: config.eval_examples or None] if config.dev else []
    unanswerable = sum(not any(answers) for answers in encoded.answer_ids)
    if unanswerable:
        logger.warning("%d of %d training questions have no answer with wordpieces: their loss is always 0",
                       unanswerable, len(train))  # fmt: skip

    if not config.train_query_tower:
        finetuner.embedder.requires_grad_(False)
    questions_given = len(train)
    if config.drop_unread:
        keep = _readable(finetuner, encoded, train, tokenizer.pad_token_id, device, config.eval_batch_size)
        readable_count = len(keep)
        if keep:
            train = [train[i] for i in keep]
            encoded = EncodedQuestions([encoded.question_ids[i] for i in keep], [encoded.answer_ids[i] for i in keep])
            logger.info("drop_unread: %d of %d training questions have an answer in the %d blocks read; training on those",
                        len(train), questions_given, config.reader_beam_size)  # fmt: skip
        else:  # dropping is a speed-up: it never decides whether a run happens
            logger.warning(
                "drop_unread: none of the %d training questions has an answer in the %d blocks read: the reader "
                "will learn nothing (read more blocks, reader_beam_size, or retrieve better); training on all",
                questions_given, config.reader_beam_size,
            )  # fmt: skip
    trainable = [p for p in finetuner.parameters() if p.requires_grad]
    optimizer, scheduler = optimizer_and_schedule(finetuner, config)
    step, best = 0, None
    if checkpoint is not None:
        state = resume_training(checkpoint, config, DATA_ORDER_KEYS, context, optimizer, scheduler)
        step, best = int(state["step"]), state.get("best")
        logger.info("resuming %s at step %d", checkpoint, step)
    model: Any = wrap_ddp(finetuner, context, device)

    metrics = MetricsLog(output_dir, step, enabled=context.is_main)
    if context.is_main:
        config.save(_mkdir(output_dir))
    if config.drop_unread and step == 0:
        metrics.write({"kind": "data", "questions": questions_given, "readable": readable_count})
    global_batch = config.global_batch_size(context.world_size)
    logger.info(
        "fine-tuning on %d questions: %d steps of %d (= %d per process x %d processes x %d accumulated)",
        len(train), config.num_steps, global_batch, config.batch_size, context.world_size, config.grad_accumulation,
    )  # fmt: skip

    def evaluate_and_keep_best() -> None:
        nonlocal best
        if context.is_main:
            summary = _evaluate(finetuner, dev, config)
            score = {"step": step, "exact_match": summary.exact_match, "f1": summary.f1,
                     **{f"recall@{k}": v for k, v in summary.recall.items()}}  # fmt: skip
            improved = best is None or _rank(score) > _rank(best)
            if improved:
                best = score
                save_model_checkpoint(output_dir / BEST_DIR, embedder, reader, model_config, config, score)
            metrics.write({"kind": "eval", **score, "best": improved})
        context.barrier()

    from tqdm.auto import tqdm

    bar = tqdm(total=config.num_steps, initial=step, unit="step", desc="finetune",
               disable=not (config.progress and context.is_main))  # fmt: skip
    if config.eval_at_start and step == 0 and dev:
        evaluate_and_keep_best()
    window_start, window_steps, smoothed = time.perf_counter(), 0, None
    finetuner.train()
    while step < config.num_steps and (stop_after is None or step < stop_after):
        indices = global_batch_indices(config.seed, step, global_batch, len(encoded))
        totals = torch.zeros(5, dtype=torch.float64, device=device)  # summed over the questions read here
        optimizer.zero_grad(set_to_none=True)
        for micro in range(config.grad_accumulation):
            mine = process_slice(indices, micro, context.rank, config.batch_size, context.world_size).tolist()
            input_ids, attention_mask = collate_questions([encoded.question_ids[i] for i in mine], tokenizer.pad_token_id)
            last_micro = micro == config.grad_accumulation - 1
            sync = model.no_sync() if context.is_distributed and not last_micro else nullcontext()
            with sync:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                    out = model(input_ids.to(device), attention_mask.to(device), [encoded.answer_ids[i] for i in mine],
                                [train[i].question for i in mine])  # fmt: skip
                (out.loss / config.grad_accumulation).backward()
            totals += torch.stack([
                (out.retriever_loss + out.reader_loss).sum(), out.retriever_loss.sum(), out.reader_loss.sum(),
                out.answer_retrieved.sum(), out.answer_read.sum(),
            ]).detach().double()  # fmt: skip
        if context.is_distributed:
            dist.all_reduce(totals)
        totals = (totals / global_batch).tolist()
        max_norm = config.clip_norm if config.clip_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        step += 1
        window_steps += 1
        smoothed = totals[0] if smoothed is None else 0.9 * smoothed + 0.1 * totals[0]
        bar.update(1)
        bar.set_postfix(loss=f"{smoothed:.3f}", refresh=False)

        if step % config.log_every == 0 or step == config.num_steps:
            now = time.perf_counter()
            metrics.write({
                "kind": "train", "step": step, "loss": totals[0], "retriever_loss": totals[1],
                "reader_loss": totals[2], "answer_retrieved": totals[3], "answer_read": totals[4],
                "grad_norm": grad_norm, "lr": lr, "steps_per_s": window_steps / max(now - window_start, 1e-9),
            })  # fmt: skip
            window_start, window_steps = now, 0
        paused = time.perf_counter()  # evaluation and saving do not count in steps/s
        if dev and ((config.eval_every and step % config.eval_every == 0) or step == config.num_steps):
            evaluate_and_keep_best()
            finetuner.train()
        if (config.save_every and step % config.save_every == 0) or step in (config.num_steps, stop_after):
            _save_last(output_dir, finetuner, model_config, config, optimizer, scheduler, step, best, context)
        window_start += time.perf_counter() - paused
    bar.close()
    metrics.close()
    return FinetuneResult(step, best, output_dir)


# -- pieces ---------------------------------------------------------------------------------------


def _readable(finetuner: OpenQAFinetuner, encoded: EncodedQuestions, train: list[QAExample], pad_id: int,
              device: torch.device, batch_size: int) -> list[int]:  # fmt: skip
    """Indices of the questions with an answer in the blocks a step reads (`OpenQAFinetuner.answer_readable`)."""
    keep: list[int] = []
    finetuner.eval()
    for start in range(0, len(encoded), batch_size):
        rows = range(start, min(start + batch_size, len(encoded)))
        input_ids, attention_mask = collate_questions([encoded.question_ids[i] for i in rows], pad_id)
        readable = finetuner.answer_readable(input_ids.to(device), attention_mask.to(device),
                                             [encoded.answer_ids[i] for i in rows], [train[i].question for i in rows])  # fmt: skip
        keep += [i for i, ok in zip(rows, readable.tolist(), strict=True) if ok]
    return keep


def _model_config(config: FinetuneConfig, vocab_size: int) -> RealmConfig:
    """The init checkpoint's config with the run's beam sizes, reader length and span width."""
    model_config = RealmConfig.from_pretrained(config.model)
    model_config.set("searcher_beam_size", config.searcher_beam_size)
    model_config.set("reader_beam_size", config.reader_beam_size)
    model_config.set("reader_seq_len", config.reader_seq_len)
    if config.max_span_width is not None:
        model_config.set("max_span_width", config.max_span_width)
    longest = max(config.reader_seq_len, config.question_max_length)
    if longest > model_config.max_position_embeddings:
        raise ValueError(
            f"reader_seq_len / question_max_length ({longest}) exceed the model's max_position_embeddings "
            f"({model_config.max_position_embeddings}); lower them"
        )
    if vocab_size > model_config.vocab_size:
        raise ValueError(
            f"the store's tokenizer has {vocab_size} tokens but {config.model} only {model_config.vocab_size}: "
            "the store was built with another tokenizer than the model's"
        )
    return model_config


def _read_train(path: str) -> list[QAExample]:
    examples = read_qa_jsonl(path)
    if not examples:
        raise ValueError(f"{path}: no training questions")
    return examples


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _rank(score: dict[str, Any]) -> tuple[float, float]:
    return score["exact_match"], score.get("recall@5", 0.0)


def _evaluate(finetuner: OpenQAFinetuner, examples: list[QAExample], config: FinetuneConfig) -> Any:
    """EM / recall@k of the current towers with `realm.eval.evaluate` (the `Pipeline` `realm ask` uses)."""
    pipeline = Pipeline(
        finetuner.embedder, finetuner.reader, finetuner.store, finetuner.index, tokenizer=finetuner.tokenizer,
        k=config.reader_beam_size, max_question_length=config.question_max_length,
    )  # fmt: skip
    _, summary = evaluate(pipeline, examples, recall_ks=RECALL_KS, batch_size=config.eval_batch_size, progress=False)
    return summary


def _save_last(
    output_dir: Path, finetuner: OpenQAFinetuner, model_config: RealmConfig, config: FinetuneConfig,
    optimizer: Any, scheduler: Any, step: int, best: dict[str, Any] | None, context: DistributedContext,
) -> None:  # fmt: skip
    states = gather_rng_states(context)
    if context.is_main:
        global_batch = config.global_batch_size(context.world_size)
        trainer_state = {
            "step": step, "best": best, "rng": states, "world_size": context.world_size,
            "global_batch_size": global_batch, "seed": config.seed, "position": step * global_batch,
        }  # fmt: skip
        save_training_checkpoint(
            output_dir / LAST_DIR, finetuner.embedder, finetuner.reader, model_config, config, optimizer, scheduler,
            trainer_state,
        )  # fmt: skip
    context.barrier()
