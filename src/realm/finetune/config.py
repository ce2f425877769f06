"""`FinetuneConfig`: every setting of `realm finetune`, read from TOML with `key=value` overrides.

    config = FinetuneConfig.load("configs/finetune_nq.toml", ["lr=3e-5", "num_steps=100"])

See `realm.train.config` for the file format (flat TOML, overrides, unknown keys are errors).

Defaults are ORQA's fine-tuning recipe (`language/orqa/models/orqa_model.py`, `orqa_experiment.py`):
searcher beam 5000, reader beam 5, reader sequence 320, question 64, lr 1e-5, weight decay 0.01 (not on
biases and LayerNorms), clip 1.0, Adam eps 1e-6, linear warm-up then linear decay to 0, one question per
step (ORQA's input function does not batch). ORQA warms up for min(10000, max(100, num_steps / 10))
steps; set `warmup_steps` for that, or `warmup_fraction`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from realm.train.config import FlatTomlConfig, StepSchedule

CONFIG_FILE_NAME = "finetune_config.json"


@dataclass(frozen=True)
class FinetuneConfig(FlatTomlConfig, StepSchedule):
    """How to fine-tune a `RealmForOpenQA` checkpoint on an Open-QA training set.

    Attributes:
        model: the `RealmForOpenQA` checkpoint to start from (only its `embedder.` and `reader.` weights are
            read; a `block_emb` in it is ignored: `index` replaces it).
        store: the block store; `index`: its embeddings (frozen: the document tower is not trained).
        sparse: a BM25 index of the store (`realm index build-sparse`) to choose the K candidates with dense +
            BM25 hybrid retrieval ("" for dense only); refused when built from another store.
        fusion, depth, weight: the hybrid's fusion ("weighted" or "rrf"), hits taken from each index
            (raised to K when K is larger), BM25's weight (`realm.index.hybrid.HybridIndex`).
        train: training questions (NQ-open JSONL); `dev`: questions to evaluate on ("" for none).
        output_dir: where `last/`, `best/`, `metrics.jsonl` (and `tensorboard/`) go.
        searcher_beam_size: K, blocks retrieved per question for the retriever loss (ORQA: 5000).
        reader_beam_size: R, the top blocks read (ORQA: 5); also the blocks read at evaluation.
        max_span_width: longest answer span in wordpieces; None keeps the model config's (ORQA: 10).
        reader_seq_len: tokens of `[CLS] question [SEP] block [SEP]` (ORQA: 320).
        drop_unread: before training, drop the questions none of whose R read blocks contains an answer (only
            with `train_query_tower` False: the frozen tower retrieves the same blocks at every step, so such a
            question's reader loss is always 0 and its retriever loss trains nothing; dropping them fills
            every batch with questions the reader learns from). The count is logged and in `metrics.jsonl`; when
            none is readable, a warning says so and all are kept.
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
    sparse: str = ""
    fusion: str = "weighted"
    depth: int = 100
    weight: float = 0.5
    train: str = ""
    dev: str = ""
    output_dir: str = ""
    searcher_beam_size: int = 5000
    reader_beam_size: int = 5
    max_span_width: int | None = None
    reader_seq_len: int = 320
    train_query_tower: bool = True
    drop_unread: bool = False
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
                    "batch_size", "grad_accumulation", "num_steps", "log_every", "eval_batch_size", "depth")  # fmt: skip
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
        if self.drop_unread and self.train_query_tower:
            raise ValueError(
                "finetune config: drop_unread needs train_query_tower=false (a trained query tower retrieves "
                "other blocks as it learns, so which questions are readable changes during training)"
            )
        if self.fusion not in ("rrf", "weighted") or self.weight < 0:
            raise ValueError(
                f'finetune config: fusion must be "weighted" or "rrf" and weight >= 0, got {self.fusion!r}, {self.weight}'
            )
        if self.max_span_width is not None and self.max_span_width < 1:
            raise ValueError(f"finetune config: max_span_width must be >= 1, got {self.max_span_width}")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"finetune config: warmup_fraction must be in [0, 1], got {self.warmup_fraction}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"finetune config: warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr <= 0 or self.weight_decay < 0 or self.clip_norm < 0 or self.adam_eps <= 0:
            raise ValueError("finetune config: lr and adam_eps must be > 0, weight_decay and clip_norm >= 0")


