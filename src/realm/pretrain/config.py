"""`PretrainConfig`: every setting of `realm pretrain`, from a flat TOML file with `key=value` overrides.

    config = PretrainConfig.load("configs/pretrain_realm.toml", ["num_steps=1000", "device=cuda"])

Defaults are the paper's and the released code's REALM recipe (see ../shared notes, Sec. 1.2 and 1.5):
k = 8 candidates with the null block, the source block removed, salient span masking with at most 10
masks in a 96-token sentence, 288-token blocks, the per-token marginal loss, lr 3e-5 with BERT's AdamW
and linear warm-up/decay, refresh every 500 steps, 200k steps. The paper's batch is 512 sentences on 64
TPUs; set batch_size x processes x grad_accumulation to what your hardware holds.

The ICT warm start (`objective = "ict"`, configs/pretrain_ict.toml) reads the same file format; ORQA's
recipe is batch 4096, lr 1e-4, 64-token queries, the sentence removed from its block 90% of the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from realm.train.config import FlatTomlConfig, StepSchedule

OBJECTIVES = ("realm", "ict")
REFRESH_MODES = ("sync", "async", "external", "never")
MASKING = ("salient", "random_token", "random_span")


@dataclass(frozen=True)
class PretrainConfig(FlatTomlConfig, StepSchedule):
    """How to pre-train.

    Attributes:
        objective: "realm" (masked LM through retrieval) or "ict" (the Inverse Cloze Task warm start of
            the retriever; trains `embedder` only).
        embedder: the retriever's `RealmEmbedder` checkpoint to start from (`realm init` writes one; an
            ICT run's `embedder/`).
        encoder: the `RealmKnowledgeAugEncoder` checkpoint to start from (objective "realm").
        store: the block store: the knowledge corpus (Z), and by default where the sentences to mask come
            from.
        sentences: another block store to take the sentences to mask from (the paper's pre-training corpus
            X, e.g. CC-News, with Z = Wikipedia); "" = `store`. It must use the same tokenizer. With X = Z
            each sentence's own block is removed from its candidates; with X != Z there is none to remove.
        index: an index of `store` built by `embedder` (`realm index build`); "" builds it at the start.
        output_dir: checkpoints (`last/`, `final/`), `metrics.jsonl`, snapshots and refreshed indexes.
        share_embedders: one tower for queries and blocks (as the released checkpoints); false trains a
            separate document tower (saved as `block_embedder/`).
        num_candidates: C, candidate blocks per sentence including the null block; 1 = the null block
            only (plain MLM, the no-retrieval baseline).
        query_seq_len: tokens of a masked sentence (REALM 96) or an ICT query (64).
        block_seq_len: tokens of `[CLS] title [SEP] text [SEP]` for the document tower (288).
        joint_seq_len: tokens of `[CLS] sentence [SEP] text [SEP]` read by the encoder (96 + 288).
        freeze: parameters not to train: comma-separated prefixes of `RealmPretrainer` parameter names, e.g.
            "query_embedder.realm." (the retriever's BERT trunk: only its projection `cls.` trains, as the
            demo's retriever stage) or "encoder.realm.embeddings.,encoder.realm.encoder.layer.0." (the
            reader's word embeddings, tied to its MLM output, and its first layer). "" = train everything.
            A prefix no parameter has is an error. Cheaper steps on a small machine; saved weights are whole.
        loss: "per_token" (the released code's marginal, default) or "per_sequence" (the paper's Eq. 2).
        masking: "salient" (dates, numbers, named entities), "random_token" (BERT), "random_span".
        spacy_model: a spaCy model name for salient spans ("" = the built-in finder).
        max_masks: masked wordpieces per sentence at most (10).
        mask_rate: the share of tokens masked by "random_token" / "random_span".
        ict_remove_rate: ICT: how often the query sentence is removed from its block (0.9).
        batch_size: sentences per process per forward pass; the global batch of a step is
            batch_size x processes x grad_accumulation.
        grad_accumulation, lr, weight_decay, adam_eps, warmup_steps, warmup_fraction, num_steps, clip_norm,
            bf16: as in `FinetuneConfig`.
        refresh: "sync" (every `refresh_every` steps, all processes re-embed the corpus, then continue),
            "async" (a worker process re-embeds while training goes on; swapped at a step boundary),
            "external" (as async, but you run `realm pretrain-refresh` yourself, e.g. on other GPUs),
            "never" (a frozen index: the ablation).
        refresh_every: steps between refreshes (the paper: about 500).
        refresh_threads: CPU threads of the async worker (0: torch's default).
        index_chunk_size, index_batch_size, index_dtype: how refreshes embed the corpus
            (`IndexBuildConfig`).
        log_every: write a `metrics.jsonl` row every this many steps (1: every step;
            each row sums the steps since the last).
        dev_questions: a JSONL of questions with the title of their gold article ({"question", "title"}, e.g.
            the demo's `questions/dev.jsonl`); "" = none. With it, the query tower's gold-block recall@1/5/20
            against each new index (the first one and every refresh) goes into the next log row as
            `dev_recall@k`: does pre-training improve the retriever? Questions whose title is no block's
            title of `store` are dropped (and counted in the log).
        save_every, seed, device, progress: as in `FinetuneConfig`.
    """

    KIND: ClassVar[str] = "pretrain"
    FILE_NAME: ClassVar[str] = "pretrain_config.json"

    objective: str = "realm"
    embedder: str = ""
    encoder: str = ""
    store: str = ""
    sentences: str = ""
    index: str = ""
    output_dir: str = ""
    share_embedders: bool = True
    num_candidates: int = 8
    query_seq_len: int = 96
    block_seq_len: int = 288
    joint_seq_len: int = 384
    freeze: str = ""
    loss: str = "per_token"
    masking: str = "salient"
    spacy_model: str = ""
    max_masks: int = 10
    mask_rate: float = 0.15
    ict_remove_rate: float = 0.9
    batch_size: int = 8
    grad_accumulation: int = 1
    lr: float = 3e-5
    weight_decay: float = 0.01
    adam_eps: float = 1e-6
    warmup_steps: int | None = 10000
    warmup_fraction: float = 0.1
    num_steps: int = 200000
    clip_norm: float = 1.0
    bf16: bool = False
    refresh: str = "sync"
    refresh_every: int = 500
    refresh_threads: int = 0
    index_chunk_size: int = 4096
    index_batch_size: int = 64
    index_dtype: str = "float32"
    save_every: int = 1000
    log_every: int = 1
    dev_questions: str = ""
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"pretrain config: {message}")

        required = ["embedder", "store", "output_dir"] + (["encoder"] if self.objective == "realm" else [])
        for name in required:
            if not getattr(self, name):
                fail(f"{name} is required (set it in the TOML file or as {name}=...)")
        for name, allowed in (("objective", OBJECTIVES), ("refresh", REFRESH_MODES), ("masking", MASKING),
                              ("loss", ("per_token", "per_sequence")), ("index_dtype", ("float32", "float16"))):  # fmt: skip
            if getattr(self, name) not in allowed:
                fail(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        positive = ("num_candidates", "query_seq_len", "block_seq_len", "joint_seq_len", "max_masks", "batch_size",
                    "grad_accumulation", "num_steps", "refresh_every", "index_chunk_size", "index_batch_size",
                    "log_every")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                fail(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.joint_seq_len <= self.query_seq_len:
            fail(f"joint_seq_len ({self.joint_seq_len}) must exceed query_seq_len ({self.query_seq_len})")
        for name in ("mask_rate", "ict_remove_rate", "warmup_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                fail(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            fail(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.save_every < 0 or self.refresh_threads < 0:
            fail("save_every and refresh_threads must be >= 0")
        if self.lr <= 0 or self.weight_decay < 0 or self.clip_norm < 0 or self.adam_eps <= 0:
            fail("lr and adam_eps must be > 0, weight_decay and clip_norm >= 0")
