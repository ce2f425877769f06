"""Does REALM pre-training help on real text? REALM against the null-block-only baseline on the demo's Wikipedia.

The corpus is the demo's (`realm demo`): one block per article, `[CLS] title [SEP]` + the lead's first 64
wordpieces. The knowledge corpus Z is those blocks. The sentences to mask (X) are the lead's sentences that
did NOT fit in its block: a block is only the lead's start, so the rest of the lead is text no block
contains (X != Z, as the paper's CC-News setting), and a masked entity or date of it is often stated in the
article's own block (its title, a date in the first sentence) or in another article's. Whole articles are
held out: their later sentences are never trained on and are the test set, while their blocks stay in Z
(knowledge the model can read, never sentences it could memorise). Salient spans are masked (dates,
numbers, capitalised entity runs: `realm.pretrain.masking.find_salient_spans`).

Both arms start from one reader warm start (`realm.pretrain.warmstart`, cached in WORK/data/reader): the
demo's encoder is all-MiniLM-L6-v2, a sentence-embedding model without an MLM head, so its fresh head and its
layers from `--warm-from` up are first trained on the training articles' leads, a salient-masked sentence
read with the rest of its lead (`--warm-per-document` sentences of each lead, `--warm-steps` steps; BERT's
objective on the pre-training text; no retrieval, no held-out article). Its held-out accuracy, with retrieval
and with the null block alone, is scored as step 0, and so is the most retrieval can give: its accuracy when
it reads each sentence's own article's block, and how often the retriever ranks that block high.

Two arms, same sentences, steps and seeds (`realm.pretrain.pretrain` both):
    realm   C candidates: the null block + the top C - 1 of the index, the query tower the demo's retriever
            (`retriever/embedder`), frozen by the config (its index then stays exact: no refresh).
    null    C = 1: the null block alone, i.e. plain masked-LM training of the same encoder.
Then, per run: held-out masked-token accuracy (`realm.pretrain.evaluate.masked_accuracy`; the index of the
run's final document tower, the starting one when that tower did not change), and for the realm arm the dev
questions' gold-article recall@k (`src/realm/demo/questions/dev.jsonl`, the questions whose article is in the
corpus) before and after.

Why these sentences: with the leads' in-block sentences and their source block removed (the paper's X = Z)
or with every sentence beyond the blocks, the masked answer is in one of the top 3 retrieved blocks for
about one mask in ten (measured: the README's section on it); `--sentences stated` (the default) keeps the
sentences beyond the blocks whose every salient span is stated in their article's own block.

    python benchmarks/pretrain_wiki.py                      # warm start, 3 seeds x 2 arms x 60 steps
    python benchmarks/pretrain_wiki.py --seeds 0 --checkpoint last   # score runs stopped early, at last/
    python benchmarks/pretrain_wiki.py --quick --demo-cache DIR --output out.json   # the smoke test
Writes benchmarks/results/pretrain_wiki.json (and each run's metrics.jsonl and curves under --work-dir).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realm.corpus import BlockStore
from realm.corpus.blocks import BlockBuilder, BuildConfig
from realm.corpus.documents import Document
from realm.corpus.sentences import split_sentences
from realm.demo import data
from realm.eval.plots import plot_run
from realm.index import open_index
from realm.index.build import IndexBuildConfig, build_index
from realm.inputs import pad_sequences
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.knowledge_encoder import RealmKnowledgeAugEncoder
from realm.pretrain import PretrainConfig, RealmPretrainer, pretrain
from realm.pretrain.evaluate import block_recall, gold_recall, masked_accuracy
from realm.pretrain.examples import MaskedExample
from realm.pretrain.masking import MaskingConfig, SentenceMasker, find_salient_spans
from realm.pretrain.refresh import RefreshFiles
from realm.pretrain.warmstart import ReaderWarmStartConfig, context_examples, warm_start_reader
from realm.tokenization import RealmTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "pretrain_wiki.toml"
RESULT = ROOT / "benchmarks" / "results" / "pretrain_wiki.json"
DEV = ROOT / "src" / "realm" / "demo" / "questions" / "dev.jsonl"
EVAL_SEED = 1234
QUESTION_LENGTH = 32  # the demo's question_max_length


# -- data ----------------------------------------------------------------------------------------


def stated_in(span: str, block: str) -> bool:
    """Is `span` a whole-word, case-insensitive substring of `block`?"""
    return re.search(r"(?<!\w)" + re.escape(span.lower()) + r"(?!\w)", block.lower()) is not None


def prepare(work: Path, demo: Path, corpus_json: Path, articles: int, heldout: float, block_tokens: int,
            sentences: str) -> dict:  # fmt: skip
    """The corpus Z, the training and held-out sentence stores, the dev questions; cached in `work/data`.

    `sentences`: "stated" keeps the sentences beyond the block whose every salient span is stated in the
    article's own block (title or text), so that the answer of any mask is there to be read; "all" keeps
    every sentence beyond the block.
    """
    out = work / "data"
    key = {"corpus": str(corpus_json), "articles": articles, "heldout": heldout, "block_tokens": block_tokens,
           "sentences": sentences}  # fmt: skip
    done = out / "done.json"
    if done.is_file() and json.loads(done.read_text())["key"] == key:
        return json.loads(done.read_text())
    shutil.rmtree(out, ignore_errors=True)
    tokenizer = RealmTokenizerFast.from_pretrained(demo / "init" / "model" / "encoder")
    everything = data.read_articles(corpus_json)
    dev_titles = tuple(sorted({r["title"] for r in data.human_questions(None, DEV)}))
    chosen = data.choose_subset(everything, articles, dev_titles)
    builder = BlockBuilder(tokenizer, BuildConfig(max_block_tokens=block_tokens, filter_pages=False))
    documents = (Document(a.title, a.extract, "summaries_en-us.json", i + 1) for i, a in enumerate(chosen))
    first: dict[int, Any] = {}
    beyond: dict[int, list[str]] = {}
    for block in builder.build(documents):
        if block.doc_id not in first:
            first[block.doc_id] = block
        else:  # the lead beyond its block: the sentences to mask
            beyond.setdefault(block.doc_id, []).extend(split_sentences(block.text))
    counts = {"sentences_beyond_blocks": sum(len(v) for v in beyond.values()), "kept": 0}
    kept: dict[str, list[Document]] = {"train": [], "heldout": []}
    for doc_id, lines in beyond.items():
        # A block's doc_id is its document's position in the input (0-based), as in realm.demo.run.
        article, own = chosen[int(doc_id)], first[doc_id].title + " " + first[doc_id].text
        if sentences == "stated":
            lines = [x for x in lines if (spans := find_salient_spans(x)) and all(stated_in(x[a:b], own) for a, b, _ in spans)]
        counts["kept"] += len(lines)
        if lines:
            split = "heldout" if data.is_held_out(article.title, heldout) else "train"
            kept[split].append(Document(article.title, " ".join(lines), "beyond", int(doc_id)))
    BlockStore.create(out / "store", [first[d] for d in sorted(first)], tokenizer, max_block_tokens=block_tokens)
    for split, docs in kept.items():
        if not docs:
            raise SystemExit(f"{corpus_json}: no {split} sentences beyond the blocks (--sentences {sentences}, "
                             f"{articles} articles, --heldout {heldout}): use more articles")
        BlockStore.create(out / f"sentences_{split}", list(builder.build(iter(docs))), tokenizer,
                          max_block_tokens=block_tokens)  # fmt: skip
    gold = {chosen[int(first[d].doc_id)].title: i for i, d in enumerate(sorted(first))}
    dev = data.human_questions(set(gold), DEV)
    (out / "gold.json").write_text(json.dumps(gold))
    (out / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dev))
    info = {"key": key, "blocks": len(first), **counts, "train_articles": len(kept["train"]),
            "heldout_articles": len(kept["heldout"]), "dev_questions": len(dev)}  # fmt: skip
    done.write_text(json.dumps(info, indent=1))
    return info


def heldout_examples(store: BlockStore, tokenizer: Any, limit: int, max_masks: int,
                     gold: dict[str, int]) -> tuple[list[MaskedExample], list[int]]:  # fmt: skip
    """Every maskable held-out sentence once (its span drawn with a fixed seed), the first `limit` of them
    (the same examples for every arm and seed), and each one's article's block in Z (`gold`: title -> block;
    used only to diagnose, never given to a model)."""
    masker = SentenceMasker(tokenizer, MaskingConfig(max_masks=max_masks))
    examples, own = [], []
    titles = store.titles(range(len(store)))
    for block, text in enumerate(store.texts(range(len(store)))):
        for j, sentence in enumerate(split_sentences(text)):
            masked = masker(sentence, np.random.default_rng([EVAL_SEED, block, j]))
            if masked.skip is None:
                examples.append(MaskedExample(masked.input_ids, masked.labels, -1))
                own.append(gold[titles[block]])
    order = np.random.default_rng(EVAL_SEED).permutation(len(examples))[:limit]
    return [examples[i] for i in order], [own[i] for i in order]


@torch.no_grad()
def own_block_accuracy(encoder_dir: Path, store: BlockStore, examples: list[MaskedExample], own: list[int],
                       max_length: int) -> float:  # fmt: skip
    """Masked-token accuracy of a reader given each held-out sentence's own article's block (and nothing
    else): the most that retrieving the right block lets it reach."""
    encoder = RealmKnowledgeAugEncoder.from_pretrained(encoder_dir).eval()
    _, sep_id, pad_id = store.special_ids
    correct = total = 0
    for start in range(0, len(examples), 16):
        batch = examples[start : start + 16]
        rows = [(e.input_ids + list(t)[: max_length - len(e.input_ids) - 1] + [sep_id])
                for e, t in zip(batch, store.token_ids(own[start : start + 16]), strict=True)]  # fmt: skip
        types = [[0] * len(e.input_ids) + [1] * (len(r) - len(e.input_ids)) for e, r in zip(batch, rows, strict=True)]
        ids, types, mask = pad_sequences(rows, types, pad_id, torch.device("cpu"))
        logits = encoder(ids, attention_mask=mask, token_type_ids=types).logits  # [B, T, V]
        for r, e in enumerate(batch):
            labels = torch.tensor(e.labels)
            at = (labels != -100).nonzero().flatten()
            correct += int((logits[r, at].argmax(-1) == labels[at]).sum())
            total += len(at)
    return correct / max(total, 1)


def warm_start(work: Path, demo: Path, corpus_json: Path, articles: int, heldout: float, config: PretrainConfig,
               warm: ReaderWarmStartConfig, per_document: int) -> tuple[Path, dict]:  # fmt: skip
    """The reader both arms start from (`realm.pretrain.warmstart`): the demo's fresh MLM head and upper
    layers trained on the training articles' leads (up to `per_document` sentences of each lead masked in
    turn, the rest of its lead as context; held-out articles never), cached in `work/data/reader`."""
    out = work / "data" / "reader"
    key = {"corpus": str(corpus_json), "articles": articles, "heldout": heldout, "max_length": config.joint_seq_len,
           "query_seq_len": config.query_seq_len, "max_masks": config.max_masks, "per_document": per_document,
           **warm.__dict__}  # fmt: skip
    done = out / "done.json"
    if done.is_file() and json.loads(done.read_text())["key"] == key:
        return out / "encoder", json.loads(done.read_text())
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    source = demo / "init" / "model" / "encoder"
    tokenizer = RealmTokenizerFast.from_pretrained(source)
    dev_titles = tuple(sorted({r["title"] for r in data.human_questions(None, DEV)}))
    chosen = data.choose_subset(data.read_articles(corpus_json), articles, dev_titles)
    documents = [split_sentences(a.extract) for a in chosen if not data.is_held_out(a.title, heldout)]
    masker = SentenceMasker(tokenizer, MaskingConfig(query_seq_len=config.query_seq_len, max_masks=config.max_masks))
    examples, counts = context_examples(documents, tokenizer, masker, config.joint_seq_len, per_document=per_document,
                                        seed=warm.seed)  # fmt: skip
    encoder = RealmKnowledgeAugEncoder.from_pretrained(source)
    rows = warm_start_reader(encoder, examples, warm)
    encoder.save_pretrained(out / "encoder")
    tokenizer.save_pretrained(out / "encoder")
    info = {"key": key, "examples": len(examples), **counts, "log": rows,
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    done.write_text(json.dumps(info, indent=1))
    return out / "encoder", info


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Do two modules hold identical tensors (a frozen tower after training: its index needs no rebuild)?"""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- runs ----------------------------------------------------------------------------------------


def index_of(embedder_dir: Path, store: BlockStore, out: Path, block_tokens: int) -> Any:
    if not (out / "manifest.json").exists():
        build_index(store, embedder_dir, out, IndexBuildConfig(chunk_size=4096, batch_size=64, max_length=block_tokens),
                    store_fingerprint=store.fingerprint, special_ids=store.special_ids, progress=False)  # fmt: skip
    return open_index(out)


def evaluate_run(final: Path, candidates: int, store: BlockStore, examples: list, dev: list, gold: dict,
                 tokenizer: Any, config: PretrainConfig, scratch: Path, any_index: Any,
                 encoder_dir: Path | None = None) -> dict:  # fmt: skip
    """Held-out masked accuracy of the towers in `final` (embedder/, block_embedder/ when the towers are not
    shared, encoder/ or `encoder_dir`), and the dev recall of its retriever (C > 1)."""
    embedder = RealmEmbedder.from_pretrained(final / "embedder")
    unshared = (final / "block_embedder").is_dir()
    block_dir = final / ("block_embedder" if unshared else "embedder")
    block_embedder = RealmEmbedder.from_pretrained(block_dir) if unshared else embedder
    encoder = RealmKnowledgeAugEncoder.from_pretrained(encoder_dir or final / "encoder")
    model = RealmPretrainer(embedder, block_embedder, encoder, store, num_candidates=candidates,
                            block_seq_len=config.block_seq_len, joint_seq_len=config.joint_seq_len)  # fmt: skip
    # C = 1 searches nothing: any index of the store will do. A checkpoint the last refresh was built from
    # (a run stopped at a refresh step) reads that refresh's index: the same vectors, without re-embedding.
    published = RefreshFiles(scratch).latest() if candidates > 1 else None
    step = json.loads((final / "trainer_state.json").read_text())["step"] if (final / "trainer_state.json").is_file() else -1
    if candidates == 1 or same_weights(block_embedder, RealmEmbedder.from_pretrained(Path(config.embedder))):
        index = any_index  # C = 1 searches nothing; a frozen document tower's index is the one it started with
    elif published is not None and published.step == step:
        index = open_index(published.index)
    else:
        index = index_of(block_dir, store, scratch / "final_index", config.block_seq_len)
    model.set_index(index)
    score = masked_accuracy(model, examples, exclude_source=False).to_dict()
    if candidates > 1 and dev:
        score["dev_recall"] = gold_recall(embedder, tokenizer, index, dev, gold, max_length=QUESTION_LENGTH)
    return score


def run_arm(args: argparse.Namespace, arm: str, seed: int, paths: dict[str, Path]) -> tuple[Path, PretrainConfig]:
    run_dir = args.work_dir / f"{arm}-seed{seed}"
    overrides = [*args.set, f"seed={seed}", f"num_steps={args.steps}", f"output_dir={run_dir}",
                 f"embedder={paths['embedder']}", f"encoder={paths['encoder']}", f"store={paths['store']}",
                 f"sentences={paths['sentences']}", f"progress={str(args.progress).lower()}"]  # fmt: skip
    if arm == "null":
        overrides += ["num_candidates=1", "refresh=never"]
    else:  # the warm start's index of the store: built once, not once per run
        overrides += [f"index={paths['index']}", f"dev_questions={paths['dev']}"]
    config = PretrainConfig.load(args.config, overrides)
    if args.checkpoint == "final" and not (run_dir / "final").is_dir():
        pretrain(config, resume=True)
    return run_dir, config


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps, one seed, a small corpus: the smoke test")
    parser.add_argument("--demo-cache", type=Path, default=data_default_cache(), help="a `realm demo` cache (read only)")
    parser.add_argument("--corpus-json", type=Path, help="default: DEMO/wheels/summaries_en-us.json")
    parser.add_argument("--work-dir", type=Path, default=Path.home() / ".cache" / "realm" / "pretrain_wiki")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--articles", type=int, default=3000)
    parser.add_argument("--heldout", type=float, default=0.2, help="share of articles held out")
    parser.add_argument("--sentences", choices=("stated", "all"), default="stated",
                        help="stated: only sentences whose salient spans are all stated in their article's block")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=("realm", "null"), default=["realm", "null"],
                        help="train (and score) only these arms; the summary needs both")
    parser.add_argument("--eval-sentences", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], help="PretrainConfig overrides key=value (both arms)")
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument("--checkpoint", choices=("final", "last"), default="final",
                        help="last: train nothing, score each run's last/ checkpoint (runs stopped early; both arms "
                             "must have stopped at the same step)")
    parser.add_argument("--redraw", action="store_true", help="only draw the summary figure of --output again")
    parser.add_argument("--warm-steps", type=int, default=900, help="reader warm-start steps (shared by both arms)")
    parser.add_argument("--warm-per-document", type=int, default=3,
                        help="warm-start examples per training lead (each a different sentence masked)")
    parser.add_argument("--warm-from", type=int, default=3, help="first encoder layer the warm start trains")
    parser.add_argument("--warm-lr", type=float, default=3e-4)
    args = parser.parse_args(argv)
    if args.redraw:
        print(draw_summary(json.loads(args.output.read_text()), args.output.with_suffix(".png")))
        return 0
    if args.quick:
        args.articles, args.steps, args.seeds, args.eval_sentences = min(args.articles, 300), 4, args.seeds[:1], 40
        args.set = ["refresh_every=2", "batch_size=2", "save_every=0", "log_every=1", *args.set]
        args.warm_steps, args.warm_from = 3, 1
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    started = time.perf_counter()
    demo = args.demo_cache
    corpus = args.corpus_json or demo / "wheels" / "summaries_en-us.json"
    base = PretrainConfig.load(args.config, ["embedder=x", "encoder=x", "store=x", "output_dir=x", *args.set])
    info = prepare(args.work_dir, demo, corpus, args.articles, args.heldout, base.block_seq_len, args.sentences)
    # The retriever is copied once: the demo's cache may be rebuilt while we run.
    embedder = args.work_dir / "data" / "embedder"
    if not embedder.is_dir():
        shutil.copytree(demo / "retriever" / "embedder", embedder)
    warm = ReaderWarmStartConfig(train_from=args.warm_from, steps=args.warm_steps, lr=args.warm_lr)
    reader, warm_info = warm_start(args.work_dir, demo, corpus, args.articles, args.heldout, base, warm,
                                   args.warm_per_document)  # fmt: skip
    print(f"reader warm start: {warm_info['examples']} examples, {warm.steps} steps, {warm_info['seconds']} s, "
          f"last rows {warm_info['log'][-2:]}", flush=True)  # fmt: skip
    paths = {"embedder": embedder, "encoder": reader,
             "store": args.work_dir / "data" / "store", "sentences": args.work_dir / "data" / "sentences_train"}  # fmt: skip
    store = BlockStore.open(paths["store"])
    tokenizer = store.load_tokenizer()
    gold = json.loads((args.work_dir / "data" / "gold.json").read_text())
    examples, own = heldout_examples(BlockStore.open(args.work_dir / "data" / "sentences_heldout"), tokenizer,
                                     args.eval_sentences, base.max_masks, gold)  # fmt: skip
    dev = [json.loads(line) for line in (args.work_dir / "data" / "dev.jsonl").read_text().splitlines()]
    paths["index"], paths["dev"] = args.work_dir / "data" / "index_before", args.work_dir / "data" / "dev.jsonl"
    before_index = index_of(embedder, store, paths["index"], base.block_seq_len)
    retriever = RealmEmbedder.from_pretrained(embedder)  # the starting query tower, for the figures before training
    before = gold_recall(retriever, tokenizer, before_index, dev, gold,
                         max_length=QUESTION_LENGTH) if dev else {}  # fmt: skip
    # Step 0: the warm start itself, read through the initial retriever (C candidates) and the null block alone.
    start_scores = {}
    start = PretrainConfig.load(args.config, [f"embedder={embedder}", "encoder=x", "store=x", "output_dir=x", *args.set])
    for arm, candidates in (("realm", base.num_candidates), ("null", 1)):
        cached = args.work_dir / "data" / "reader" / f"heldout_score_{arm}.json"
        if not cached.is_file():
            score = evaluate_run(args.work_dir / "data", candidates, store, examples, [], gold, tokenizer, start,
                                 args.work_dir / "data", before_index, encoder_dir=reader)  # fmt: skip
            cached.write_text(json.dumps(score))
        start_scores[arm] = json.loads(cached.read_text())
    # What retrieval can give the reader: how often the masked sentence, as the query, finds its own article's
    # block (the one block sure to state the masked words), and the warm start's accuracy when reading it.
    found = block_recall(retriever, before_index, [e.input_ids for e in examples], own,
                         store.special_ids[2], ks=(1, 2, 4, 8))  # fmt: skip
    diagnosis = {"own_block_retrieved": {k.replace("recall@", "top"): v for k, v in found.items()},
                 "own_block_accuracy": own_block_accuracy(reader, store, examples, own, base.joint_seq_len)}  # fmt: skip
    print(f"held-out sentences: own article's block retrieved {diagnosis['own_block_retrieved']}; the warm start "
          f"reading that block alone: accuracy {diagnosis['own_block_accuracy']:.4f}", flush=True)  # fmt: skip
    print(f"step 0 (warm start): held-out accuracy {start_scores['realm']['accuracy']:.4f} with C = {base.num_candidates}, "
          f"{start_scores['null']['accuracy']:.4f} with the null block alone", flush=True)  # fmt: skip
    runs: dict[str, list[dict]] = {"realm": [], "null": []}
    for seed in args.seeds:
        for arm in args.arms:
            run_dir, config = run_arm(args, arm, seed, paths)
            cached = run_dir / f"heldout_score_{args.checkpoint}.json"  # a rerun (more seeds, a killed run) keeps finished scores
            if cached.is_file():
                score = json.loads(cached.read_text())
            else:
                score = evaluate_run(run_dir / args.checkpoint, config.num_candidates, store, examples, dev, gold, tokenizer,
                                     config, run_dir, before_index)  # fmt: skip
                cached.write_text(json.dumps(score))
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            train = [r for r in rows if r.get("kind") == "train"]
            score_step = json.loads((run_dir / args.checkpoint / "trainer_state.json").read_text())["step"] \
                if args.checkpoint == "last" else args.steps
            train = [r for r in train if r["step"] <= score_step]
            score.update(seed=seed, run_dir=str(run_dir), step=score_step, last_train_row=train[-1] if train else None)
            if arm == "realm" and train:
                utility = [r["retrieval_utility"] for r in train]
                fifth = max(1, len(utility) // 5)
                score["utility_first_fifth"] = statistics.fmean(utility[:fifth])
                score["utility_last_fifth"] = statistics.fmean(utility[-fifth:])
            runs[arm].append(score)
            try:
                plot_run(run_dir)
            except ImportError:  # matplotlib is optional: the numbers do not need it
                pass
            print(f"{arm} seed {seed}: held-out accuracy {score['accuracy']:.4f} (null block {score['null_accuracy']:.4f})"
                  + (f", dev recall@5 {score['dev_recall']['recall@5']:.3f}" if "dev_recall" in score else ""), flush=True)  # fmt: skip
    if set(args.arms) != {"realm", "null"}:
        return 0
    realm_acc = [r["accuracy"] for r in runs["realm"]]
    null_acc = [r["accuracy"] for r in runs["null"]]
    gaps = [a - b for a, b in zip(realm_acc, null_acc, strict=True)]
    after = [r["dev_recall"]["recall@5"] for r in runs["realm"] if "dev_recall" in r]
    result = {
        "realm_accuracy": statistics.fmean(realm_acc), "null_accuracy": statistics.fmean(null_acc),
        "gap": summary(gaps), "spread": {"realm": summary(realm_acc), "null": summary(null_acc)},
        "seeds": args.seeds, "steps": runs["realm"][0]["step"], "planned_steps": args.steps,
        "retrieval_utility": statistics.fmean(r["last_train_row"]["retrieval_utility"] for r in runs["realm"]),
        "retrieval_utility_first_fifth": statistics.fmean(r["utility_first_fifth"] for r in runs["realm"]),
        "retrieval_utility_last_fifth": statistics.fmean(r["utility_last_fifth"] for r in runs["realm"]),
        "heldout_utility": statistics.fmean(r["retrieval_utility"] for r in runs["realm"]),
        "recall_at_5_before": before.get("recall@5"), "recall_at_5_after": statistics.fmean(after) if after else None,
        "dev_recall_before": before, "dev_questions": len(dev), "heldout_sentences": len(examples),
        "data": info, "config": base.to_dict(),
        "warm_start": {**{k: v for k, v in warm_info.items() if k != "key"}, "config": warm.__dict__,
                       "heldout_realm": start_scores["realm"], "heldout_null": start_scores["null"],
                       "heldout_own_block": diagnosis["own_block_accuracy"]},
        "heldout_own_block_retrieved": diagnosis["own_block_retrieved"],
        "runs": runs, "seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
        "command": " ".join(["python", "benchmarks/pretrain_wiki.py", *(argv if argv is not None else sys.argv[1:])]),
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    try:
        draw_summary(result, args.output.with_suffix(".png"))
    except ImportError:
        pass
    print(json.dumps({k: result[k] for k in ("realm_accuracy", "null_accuracy", "gap", "retrieval_utility",
                                             "recall_at_5_before", "recall_at_5_after", "seconds")}, indent=1))  # fmt: skip
    return 0


def draw_summary(result: dict, out: Path) -> Path:
    """One figure of the experiment: training curves of both arms per seed, dev recall at each index, and
    the held-out accuracies (matplotlib, the `plot` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rows(run: dict) -> list[dict]:  # up to the scored checkpoint (a stopped run may have logged more)
        lines = Path(run["run_dir"], "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r.get("kind") == "train" and r["step"] <= run.get("step", r["step"])]

    figure, axes = plt.subplots(2, 2, figsize=(11, 7))
    (acc, utility), (recall, bars) = axes
    for i, (realm, null) in enumerate(zip(result["runs"]["realm"], result["runs"]["null"], strict=True)):
        r, n = rows(realm), rows(null)
        color = f"C{i}"
        acc.plot([x["step"] for x in r], [x["mlm_accuracy"] for x in r], color=color, label=f"REALM, seed {realm['seed']}")
        acc.plot([x["step"] for x in n], [x["mlm_accuracy"] for x in n], color=color, linestyle="--",
                 label=f"null block only, seed {null['seed']}")  # fmt: skip
        utility.plot([x["step"] for x in r], [x["retrieval_utility"] for x in r], color=color, label=f"seed {realm['seed']}")
        points = [(x["step"], x["dev_recall@5"]) for x in r if "dev_recall@5" in x]
        points.append((realm.get("step", result["steps"]), realm["dev_recall"]["recall@5"]))
        recall.plot([p[0] for p in points], [p[1] for p in points], color=color, marker="o", label=f"seed {realm['seed']}")
    utility.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    acc.set(title="masked-token accuracy, training batches", xlabel="step", ylabel="accuracy")
    utility.set(title="retrieval utility (training batches)", xlabel="step", ylabel="nats per masked token")
    recall.set(title="dev questions: gold-article recall@5 (each index; last: scored tower)", xlabel="step",
               ylabel="recall@5")  # fmt: skip
    seeds = [r["seed"] for r in result["runs"]["realm"]]
    width = 0.38
    bars.bar([i - width / 2 for i in range(len(seeds))], [r["accuracy"] for r in result["runs"]["realm"]], width,
             label="REALM")  # fmt: skip
    bars.bar([i + width / 2 for i in range(len(seeds))], [r["accuracy"] for r in result["runs"]["null"]], width,
             label="null block only")  # fmt: skip
    warm = result.get("warm_start", {})
    if "heldout_realm" in warm:  # step 0: the shared warm start, read with retrieval and with the null block
        bars.axhline(warm["heldout_realm"]["accuracy"], color="C0", linestyle=":", label="step 0, with retrieval")
        bars.axhline(warm["heldout_null"]["accuracy"], color="C1", linestyle=":", label="step 0, null block only")
    bars.set(title=f"held-out masked-token accuracy ({result['heldout_sentences']} sentences)", xlabel="seed",
             ylabel="accuracy", xticks=range(len(seeds)), xticklabels=[str(s) for s in seeds])  # fmt: skip
    for axis in (acc, utility, recall, bars):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def data_default_cache() -> Path:
    from realm.demo.run import default_cache_dir

    return default_cache_dir()


if __name__ == "__main__":
    raise SystemExit(main())
