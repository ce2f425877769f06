"""`realm demo`, `realm ask`, `realm serve`, `realm evaluate`: questions -> answers with evidence."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

DEMO_CREDIT = "Text: Wikipedia (CC BY-SA 4.0); weights: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0)."


def _demo(args: argparse.Namespace) -> int:
    import time

    from realm.demo import DemoConfig, run_demo

    started = time.perf_counter()
    fields = dict(cache_dir=args.cache_dir, wheels_dir=args.wheels, corpus_json=args.corpus_json, bert_dir=args.bert_dir,
                  seed=args.seed, threads=args.threads)  # fmt: skip
    if args.subset is not None:
        fields["subset"] = args.subset
    config = DemoConfig.quick(**fields) if args.quick else DemoConfig(**fields)
    print(f"realm demo: REALM on {'a subset of ' if config.subset else ''}~10,000 Wikipedia lead sections "
          f"(Level 4 Vital Articles), all-MiniLM-L6-v2 weights; cache {config.cache}; "
          f"{config.threads or os.cpu_count()} threads")  # fmt: skip

    def stage_done(report) -> None:
        state = "cached" if report.skipped else "done"
        shown = {k: v for k, v in report.info.items() if k not in ("seconds", "ignored", "wheels")}
        print(f"  {report.name:<10} {state:>6} {report.seconds:7.1f} s  {json.dumps(shown)[:150]}", flush=True)

    def stage_estimate(estimate) -> None:
        print(f"  {estimate.name:<10} starting, {estimate.describe()}", flush=True)

    result = run_demo(config, progress=not args.no_progress, on_stage=stage_done, on_estimate=stage_estimate)
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
        _print_answer(answer, result.pipeline.threshold)
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
        _print_answer(result.pipeline.ask(question)[0], result.pipeline.threshold)
    return 0


def _answer_line(answer, threshold: float) -> str:
    """`A: text  (p=0.62, block 3)`, or the best guess marked "not sure" below the threshold."""
    if answer.sure:
        return f"A: {answer.text}   (p={answer.probability:.2f}, block {answer.block_id})"
    return (f"A: not sure (p={answer.probability:.2f} < {threshold:.2f}); best guess: {answer.text}   "
            f"(block {answer.block_id})")  # fmt: skip


def _print_answer(answer, threshold: float) -> None:
    print(f"Q: {answer.question}\n{_answer_line(answer, threshold)}")
    for rank, ev in enumerate(answer.evidence[:3], 1):
        marked = ev.text[: ev.span_start] + "[[" + ev.span_text + "]]" + ev.text[ev.span_end :]
        print(f"  {rank}. p={ev.retrieval_probability:.2f} {ev.title}: {marked[:160]}")


def _bundle_dir(args: argparse.Namespace) -> Path | None:
    """The bundle a command answers with: --bundle, else the last demo's when no --model/--store/--index."""
    paths = {"--model": args.model, "--store": args.store, "--index": args.index}
    given = [name for name, value in paths.items() if value]
    if args.bundle and given:
        raise ValueError(f"give either --bundle or --model/--store/--index, not both (got --bundle and {given})")
    if given:
        missing = [name for name, value in paths.items() if not value]
        if missing:
            raise ValueError(f"{' and '.join(missing)} missing: give all of --model, --store and --index (or a --bundle)")
        return None
    from realm.bundle import BUNDLE_NAME, is_bundle
    from realm.demo import default_cache_dir

    directory = Path(args.bundle) if args.bundle else default_cache_dir()
    if not is_bundle(directory):
        where = f"--bundle {directory}" if args.bundle else f"the last demo's bundle ({directory / BUNDLE_NAME})"
        raise FileNotFoundError(
            f"{where} does not exist: run `realm demo` first, or pass --model, --store and --index"
        )
    return directory


def _pipeline(args: argparse.Namespace):
    """The Pipeline of the command's arguments; says on stderr which bundle it uses."""
    from realm.pipeline import Pipeline

    bundle = _bundle_dir(args)
    settings = dict(fusion=args.fusion, depth=args.depth, weight=args.weight, k=args.k, threshold=args.threshold)
    settings = {name: value for name, value in settings.items() if value is not None}
    if args.fast:
        from realm.modeling.inference import FAST

        settings["inference"] = FAST
    sparse = False if args.dense_only else args.sparse
    if bundle is not None:
        print(f"realm: using the pipeline bundle {bundle / 'pipeline.json'}", file=sys.stderr, flush=True)
        pipeline = Pipeline.from_pretrained(bundle, sparse=sparse, device=args.device, **settings)
    else:
        pipeline = Pipeline.from_pretrained(
            args.model, args.store, args.index, sparse=sparse or None, device=args.device, **settings
        )
    retrieval = pipeline.retrieval()
    print(f"realm: {retrieval.pop('mode')} retrieval {json.dumps(retrieval) if retrieval else ''}".rstrip(),
          file=sys.stderr, flush=True)  # fmt: skip
    return pipeline


def _ask(args: argparse.Namespace) -> int:
    questions = args.questions or [line.strip() for line in sys.stdin if line.strip()]
    pipeline = _pipeline(args)
    for answer in pipeline.ask(questions):
        if args.json:
            print(json.dumps(answer.to_dict(), ensure_ascii=False))
            continue
        print(f"Q: {answer.question}\n{_answer_line(answer, pipeline.threshold)}")
        for rank, ev in enumerate(answer.evidence, 1):
            marked = ev.text[: ev.span_start] + "[[" + ev.span_text + "]]" + ev.text[ev.span_end :]
            title = f"{ev.title}: " if ev.title else ""
            print(f"  {rank}. p={ev.retrieval_probability:.3f} block {ev.block_id}  {title}{marked}")
        print()
    return 0


def _serve(args: argparse.Namespace) -> int:
    from realm.bundle import read_bundle
    from realm.serve import ServeConfig, run_server

    bundle = _bundle_dir(args)
    store, index, model = args.store, args.index, args.model
    if bundle is not None:  # SIGHUP reopens the bundle's store and index
        named = read_bundle(bundle)
        store, index, model = str(named.store), str(named.index), str(named.model)
    config = ServeConfig(
        host=args.host, port=args.port, k=args.k, max_k=args.max_k, max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms, chunk_rows=args.chunk_rows, max_questions=args.max_questions,
        max_question_chars=args.max_question_chars,
        allow_reload=args.allow_reload, store=store, index=index, model_name=model, credit=args.credit,
        access_log=args.access_log, api_key_file=args.api_key_file, allowed_hosts=tuple(args.allowed_host),
        max_cost=args.max_cost, max_connections=args.max_connections, idle_timeout_s=args.idle_timeout,
        body_timeout_s=args.body_timeout, header_timeout_s=args.header_timeout,
    )  # fmt: skip
    try:
        from realm.serve import app  # noqa: F401  (fail before loading the model)
    except ImportError as err:
        raise RuntimeError(f"{err}; install the serve extra: pip install 'realm-lm[serve]'") from None
    config.read_api_key()  # a bad key file fails before the model loads; run_server warns about exposure
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
    if args.summary:
        from realm.atomic import atomic_write_text

        atomic_write_text(args.summary, json.dumps(summary.to_dict(), indent=2) + "\n")
    print(summary.table())
    if summary.reliability is not None:
        print("\nanswer probability against exact match (reliability):")
        print(summary.reliability.table())
    return 0
