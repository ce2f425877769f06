"""End-to-end speed on the demo's real model, ours against the transformers port's way, in one run.

Three workloads, on a bundle's checkpoint, store and index (default: the last `realm demo`'s,
$REALM_CACHE/demo; the index is used as built, the bundle's BM25 index is not: the port retrieves densely):

1. embed the corpus (blocks/s): ours `realm.index.build.embed_blocks` (length-sorted batches); the port's
   way `RealmEmbedder` over batches in corpus order, padded by its tokenizer to the longest of the batch.
2. answer the dev + test questions with evidence (questions/s, p50 latency): ours `Pipeline.ask` in
   batches of --ask-batch (and one at a time for the latency); the port's way `RealmForOpenQA`, one
   question at a time, the index as its `block_emb`.
3. `realm serve` on the bundle (dense) with --clients concurrent clients: req/s, p50/p99, 5xx, peak RSS.

The port runs in another interpreter (--port-python, a venv with transformers 4.57.6; `e2e_port.py`), so
realm-lm never imports transformers; without it the port's part is skipped with a note. Before any ratio
is printed the float32 outputs are checked against the port's: block embeddings within 1e-4, and for
every question the same top-k blocks and the same answer (the benchmark exits 1 otherwise).

The fast variants (`realm.modeling.inference`) run the same workloads; their quality is measured on the
dev questions against float32: gold-article recall@5, EM, and the top-k overlap with float32.

    python benchmarks/bench_e2e.py --port-python /work/scratch/portvenv/bin/python     # the full run
    python benchmarks/bench_e2e.py --blocks 512 --questions 40 --no-serve              # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import realm
from realm.bundle import read_bundle
from realm.corpus import BlockStore
from realm.eval.metrics import exact_match
from realm.index.build import embed_blocks
from realm.inputs import block_inputs
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.inference import InferenceConfig, has_fast_bf16, quantize_trunk
from realm.pipeline import Answer, Pipeline

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = REPO / "src" / "realm" / "demo" / "questions"
EMBED_ATOL = 1e-4
sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e_onnx  # noqa: E402  (the ONNX variant, beside this file)
import e2e_serve  # noqa: E402  (the serve workload, beside this file)

# name -> (InferenceConfig of the pipeline, compute_dtype of the embedding); float32 first: the reference.
VARIANTS: dict[str, tuple[InferenceConfig, str]] = {
    "fp32": (InferenceConfig(), "float32"),
    "int8": (InferenceConfig(fast=True, int8="on", bf16="off"), "int8"),
    "bf16": (InferenceConfig(fast=True, int8="off", bf16="on"), "bfloat16"),
    "onnx": (InferenceConfig(), "onnx"),  # float32 in onnxruntime: the exported graphs (e2e_onnx.py)
}


@dataclass
class Run:
    """One variant's timings and answers."""

    name: str
    embed_seconds: float = 0.0
    embed_cpu: float = 0.0
    embeddings: np.ndarray | None = None
    ask_seconds: float = 0.0
    ask_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)

    def top_ids(self, k: int) -> list[list[int]]:
        return [[e.block_id for e in a.evidence[:k]] for a in self.answers]


def load_questions(limit: int | None) -> tuple[list[dict], int]:
    """dev + test questions (dev first) and how many are dev."""
    dev = [json.loads(line) for line in (QUESTIONS / "dev.jsonl").read_text().splitlines() if line.strip()]
    test = [json.loads(line) for line in (QUESTIONS / "test.jsonl").read_text().splitlines() if line.strip()]
    rows = (dev + test)[: limit or None]
    return rows, min(len(dev), len(rows))


def find_embedder(bundle_dir: Path, model: Path, given: str | None) -> tuple[Path, str]:
    """The block tower the index was built with: --embedder, the demo's retriever/embedder, or the model's."""
    if given:
        return Path(given), ""
    for candidate in (bundle_dir / "retriever" / "embedder", bundle_dir / "embedder"):
        if (candidate / "config.json").is_file():
            return candidate, ""
    return model, "embedder."


def run_port(args: argparse.Namespace, work: Path, request: dict) -> dict | None:
    if not args.port_python or not Path(args.port_python).exists():
        print(f"note: no port interpreter ({args.port_python or 'none given'}): the port's part is skipped; create "
              "one with: python -m venv --system-site-packages V && V/bin/pip install transformers==4.57.6")  # fmt: skip
        return None
    (work / "request.json").write_text(json.dumps(request))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": ""}
    subprocess.run([args.port_python, str(Path(__file__).with_name("e2e_port.py")), str(work)], check=True, env=env)
    return json.loads((work / "port_result.json").read_text())


def ours_embed(run: Run, embedder_dir: Path, prefix: str, sequences: list, batch: int, pad_id: int, dtype: str,
               onnx_dir: Path | None = None, threads: int = 0) -> None:  # fmt: skip
    if onnx_dir is not None:
        embedder = e2e_onnx.block_tower(onnx_dir, threads)
    elif prefix:
        from realm.modeling.checkpoint import resolve_weights

        embedder = RealmEmbedder(realm.RealmConfig.from_pretrained(embedder_dir))
        embedder.load_checkpoint(resolve_weights(embedder_dir), prefix=prefix)
    else:
        embedder = RealmEmbedder.from_pretrained(embedder_dir)
    embedder = embedder.eval()
    if dtype == "int8":
        quantize_trunk(embedder.realm.encoder)
    compute = "bfloat16" if dtype == "bfloat16" else "float32"
    embed_blocks(embedder, sequences[:batch], batch, pad_id, compute)  # warm-up
    started, cpu = time.perf_counter(), cpu_seconds()
    run.embeddings = embed_blocks(embedder, sequences, batch, pad_id, compute)
    run.embed_seconds, run.embed_cpu = time.perf_counter() - started, cpu_seconds() - cpu


def ours_ask(run: Run, pipeline: Pipeline, questions: list[str], batch: int, latency_questions: int) -> None:
    pipeline.ask(questions[:batch])  # warm-up
    started, cpu = time.perf_counter(), cpu_seconds()
    for start in range(0, len(questions), batch):
        run.answers.extend(pipeline.ask(questions[start : start + batch]))
    run.ask_seconds, run.ask_cpu = time.perf_counter() - started, cpu_seconds() - cpu
    for question in questions[:latency_questions]:
        started = time.perf_counter()
        pipeline.ask(question)
        run.latencies.append(time.perf_counter() - started)


def cpu_seconds() -> float:
    """CPU time of this process (all threads): on a shared machine, steadier than wall time."""
    times = os.times()
    return times.user + times.system


@torch.inference_mode()
def query_vectors(pipeline: Pipeline, questions: list[str]) -> np.ndarray:
    """float32 question embeddings [Q, D] (the pipeline's query tower)."""
    encoded = pipeline.tokenizer(questions, padding=True, truncation=True, max_length=pipeline.max_question_length,
                                 return_tensors="pt")  # fmt: skip
    return pipeline.embedder(**encoded).projected_score.numpy()


def index_quality(embeddings: np.ndarray, reference: np.ndarray, queries: np.ndarray, gold: list[int | None], k: int) -> dict:
    """Exact search of float32 queries over a variant's block embeddings (the blocks embedded here): gold recall@k
    (%, questions whose gold block is among them) and top-k overlap with the float32 embeddings' top-k."""
    top = np.argsort(-(queries @ embeddings.T), axis=1, kind="stable")[:, :k]
    ref = np.argsort(-(queries @ reference.T), axis=1, kind="stable")[:, :k]
    inside = [i for i, g in enumerate(gold) if g is not None and g < len(embeddings)]
    recall = [gold[i] in top[i] for i in inside]
    overlap = [len(set(top[i]) & set(ref[i])) / k for i in range(len(queries))]
    return {"questions_with_gold_inside": len(inside), "recall_at_5": 100 * float(np.mean(recall)) if recall else None,
            "top5_overlap": float(np.mean(overlap))}  # fmt: skip


def answer_tokens(tokenizer: Any, text: str) -> str:
    """An answer string as the port prints its predicted ids: tokenized, then decoded."""
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_against_port(fp32: Run, port: dict, k: int, tokenizer: Any) -> dict[str, Any]:
    """Raise unless fp32 agrees with the port: embeddings within EMBED_ATOL, same top-k and answers."""
    diff = None
    if "embeddings_path" in port:
        diff = float(np.abs(np.load(port["embeddings_path"]) - fp32.embeddings).max())
        if not diff < EMBED_ATOL:
            raise AssertionError(f"block embeddings differ from the port's by {diff:.3g} >= {EMBED_ATOL}")
    rows = port["ask"]["rows"]
    top_diff = [i for i, (ours, theirs) in enumerate(zip(fp32.top_ids(k), rows, strict=True)) if ours != theirs["top_ids"]]
    answer_diff = [
        i for i, (ours, theirs) in enumerate(zip(fp32.answers, rows, strict=True))
        # A span starting inside a word decodes with the port's "##" (its ids); ours is the same span's characters.
        if answer_tokens(tokenizer, ours.text) != theirs["answer"].removeprefix("##")
    ]  # fmt: skip
    if top_diff or answer_diff:
        examples = [(fp32.answers[i].question, fp32.answers[i].text, rows[i]["answer"]) for i in answer_diff[:5]]
        raise AssertionError(f"fp32 differs from the port: top-{k} of questions {top_diff[:10]}, answers of "
                             f"{len(answer_diff)} questions, e.g. {examples}")  # fmt: skip
    return {"embedding_max_abs_diff": diff, "questions_compared": len(rows), "same_top_k": True, "same_answers": True}


def quality(run: Run, reference: Run, rows: list[dict], n_dev: int, block_of: dict[str, int], k: int) -> dict[str, float]:
    """Dev-set gold recall@k and EM (in %), and the top-k overlap with the reference (a share)."""
    dev = range(n_dev)
    recall = [block_of.get(rows[i]["title"]) in run.top_ids(k)[i] for i in dev]
    em = [exact_match(run.answers[i].text, rows[i]["answer"]) for i in dev]
    ours_top, ref_top = run.top_ids(k), reference.top_ids(k)
    overlap = [len(set(ours_top[i]) & set(ref_top[i])) / k for i in dev]
    return {"recall_at_5": 100 * float(np.mean(recall)), "em": 100 * float(np.mean(em)),
            "top5_overlap": float(np.mean(overlap))}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = read_bundle(args.bundle)
    bundle_dir = Path(args.bundle)
    embedder_dir, prefix = find_embedder(bundle_dir, bundle.model, args.embedder)
    pooling = realm.RealmConfig.from_pretrained(embedder_dir).retriever_pooling
    if pooling != "cls" and args.port_python and Path(args.port_python).exists():
        # The port reads [CLS] whatever config.json says: its answers could not be the same, so no ratio is fair.
        print(f"error: {embedder_dir} reads by {pooling} pooling (retriever_pooling in config.json), which the port "
              "does not implement; compare on a [CLS] bundle (e.g. `realm demo` with DemoConfig(retriever_pooling="
              "'cls', retriever_steps=400)), or pass --port-python '' to time realm-lm alone", file=sys.stderr)  # fmt: skip
        return 2
    store = BlockStore.open(bundle.store)
    index_manifest = json.loads((bundle.index / "manifest.json").read_text())
    max_length = index_manifest.get("build_plan", {}).get("build", {}).get("max_length", 288)
    n_blocks = min(args.blocks or len(store), len(store))
    ids = list(range(n_blocks))
    cls_id, sep_id, pad_id = store.special_ids
    sequences = [block_inputs(t, b, cls_id, sep_id, max_length) for t, b in zip(store.title_ids(ids), store.token_ids(ids), strict=True)]
    rows, n_dev = load_questions(args.questions)
    questions = [r["question"] for r in rows]
    titles = store.titles(list(range(len(store))))
    block_of = {t: i for i, t in enumerate(titles)}
    variants = [v for v in args.variants if v != "bf16" or has_fast_bf16(torch.device("cpu")) or args.force_bf16]
    if "onnx" in variants and e2e_onnx.missing():
        print(f"note: the onnx variant is skipped: {e2e_onnx.missing()}")
        variants.remove("onnx")
    load_before = os.getloadavg()
    header = {
        "command": "python benchmarks/" + " ".join([Path(__file__).name, *(argv if argv is not None else sys.argv[1:])]),
        "realm_lm": realm.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "blocks": n_blocks, "block_max_length": max_length,
        "questions": len(questions), "dev_questions": n_dev, "k": bundle.k, "load_before": load_before,
    }  # fmt: skip
    print(json.dumps(header))

    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
        work = Path(tmp)
        (work / "blocks.json").write_text(json.dumps(sequences))
        (work / "block_texts.json").write_text(json.dumps(store.texts(list(range(len(store))))))
        request = {
            "threads": args.threads, "tokenizer": str(bundle.store / "tokenizer"), "embedder": str(embedder_dir),
            "embedder_prefix": prefix, "embed_batch_size": args.embed_batch, "model": str(bundle.model),
            "block_emb": str(bundle.index / "embeddings.npy"), "questions": questions,
            "max_question_length": bundle.max_question_length, "overrides": {"reader_beam_size": bundle.k},
            "embed": not args.no_port_embed, "ask": True,
        }  # fmt: skip
        started = time.perf_counter()
        port = run_port(args, work, request)
        port_load = os.getloadavg()
        if port is not None and "embed" in port:
            port["embeddings_path"] = str(work / "port_embeddings.npy")
            print(f"port: {time.perf_counter() - started:.0f} s, load {port_load[0]:.2f}")

        runs: dict[str, Run] = {}
        for name in variants:
            inference, dtype = VARIANTS[name]
            run = runs[name] = Run(name)
            onnx_model = onnx_blocks = None
            if name == "onnx":
                onnx_model, onnx_blocks, seconds = e2e_onnx.export(bundle.model, embedder_dir, prefix, work)
                header["onnx_export_seconds"] = seconds
            ours_embed(run, embedder_dir, prefix, sequences, args.embed_batch, pad_id, dtype, onnx_blocks, args.threads)
            pipeline = Pipeline.from_pretrained(
                bundle.model, bundle.store, bundle.index, sparse=False, k=bundle.k,
                max_question_length=bundle.max_question_length, inference=inference,
            )  # fmt: skip
            if onnx_model is not None:  # the same pipeline, its two towers the exported graphs
                pipeline = Pipeline(*e2e_onnx.onnx_towers(onnx_model, args.threads), pipeline.store, pipeline.index,  # type: ignore[arg-type]
                                    k=bundle.k, max_question_length=bundle.max_question_length)  # fmt: skip
            if name == "fp32":
                queries = query_vectors(pipeline, questions[:n_dev])
            ours_ask(run, pipeline, questions, args.ask_batch, args.latency_questions)
            print(f"ours {name}: embed {n_blocks / run.embed_seconds:.0f} blocks/s, ask "
                  f"{len(questions) / run.ask_seconds:.1f} q/s, load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
            del pipeline
        checks = None
        if port is not None:
            checks = check_against_port(runs["fp32"], port, bundle.k, store_tokenizer(bundle.store))
            print(f"fp32 agrees with the port: {json.dumps(checks)}")
            if "onnx" in runs:  # reported, not required: onnxruntime's float32 sums in another order
                try:
                    checks["onnx"] = check_against_port(runs["onnx"], port, bundle.k, store_tokenizer(bundle.store))
                except AssertionError as err:
                    checks["onnx"] = {"same_answers": False, "difference": str(err)[:2000]}
                print(f"onnx against the port: {json.dumps(checks['onnx'])[:400]}")
    serve = None if args.no_serve else e2e_serve.run(args, bundle_dir, questions, [v for v in variants if v in ("fp32", "int8")])
    gold = [block_of.get(r["title"]) for r in rows[:n_dev]]
    embed_quality = {name: index_quality(run.embeddings, runs["fp32"].embeddings, queries, gold, bundle.k)
                     for name, run in runs.items()}  # fmt: skip
    result = report(header, runs, port, checks, serve, rows, n_dev, block_of, bundle.k, n_blocks, len(questions),
                    embed_quality)  # fmt: skip
    result["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def store_tokenizer(store_dir: Path) -> Any:
    from realm.tokenization import RealmTokenizerFast

    return RealmTokenizerFast.from_pretrained(store_dir / "tokenizer")


def report(header: dict, runs: dict[str, Run], port: dict | None, checks: dict | None, serve: dict | None,
           rows: list[dict], n_dev: int, block_of: dict[str, int], k: int, n_blocks: int, n_questions: int,
           embed_quality: dict[str, dict]) -> dict:  # fmt: skip
    fp32 = runs["fp32"]
    result: dict[str, Any] = {**header, "checks": checks, "variants": {}}
    for name, run in runs.items():
        entry = {
            "embed_blocks_per_s": n_blocks / run.embed_seconds, "ask_questions_per_s": n_questions / run.ask_seconds,
            "ask_p50_ms_one_at_a_time": 1000 * statistics.median(run.latencies) if run.latencies else None,
            "embed_cpu_s": run.embed_cpu, "ask_cpu_s": run.ask_cpu,
            "dev_quality": quality(run, fp32, rows, n_dev, block_of, k), "index_quality_dev": embed_quality[name],
        }  # fmt: skip
        if name != "fp32":
            entry["embedding_max_abs_diff_vs_fp32"] = float(np.abs(run.embeddings - fp32.embeddings).max())
        result["variants"][name] = entry
    if port is not None:
        port_embed = n_blocks / port["embed"]["seconds"] if "embed" in port else None
        port_ask = port["ask"]["questions"] / port["ask"]["seconds"]
        result["port"] = {"transformers": port["transformers"], "embed_blocks_per_s": port_embed,
                          "ask_questions_per_s": port_ask, "ask_p50_ms": port["ask"]["p50_ms"],
                          "embed_cpu_s": port.get("embed", {}).get("cpu_seconds"), "ask_cpu_s": port["ask"]["cpu_seconds"]}  # fmt: skip
        for entry in result["variants"].values():
            entry["embed_speedup"] = entry["embed_blocks_per_s"] / port_embed if port_embed else None
            entry["ask_speedup"] = entry["ask_questions_per_s"] / port_ask
            # The same ratios in CPU seconds: steadier when other jobs share the machine.
            if port_embed:
                entry["embed_speedup_cpu"] = result["port"]["embed_cpu_s"] / entry["embed_cpu_s"]
            entry["ask_speedup_cpu"] = result["port"]["ask_cpu_s"] / entry["ask_cpu_s"]
        result["embed_speedup"] = result["variants"]["fp32"]["embed_speedup"]
        result["ask_speedup"] = result["variants"]["fp32"]["ask_speedup"]
    if serve is not None:
        result["serve"] = serve
    fast = result["variants"].get(FAST_VARIANT)
    if fast is not None:
        base = result["variants"]["fp32"]
        result["fast_variant"] = FAST_VARIANT
        result["embed_speedup_fast"] = fast.get("embed_speedup")
        result["ask_speedup_fast"] = fast.get("ask_speedup")
        result["fast_recall_at_5_delta"] = fast["dev_quality"]["recall_at_5"] - base["dev_quality"]["recall_at_5"]
        result["fast_em_delta"] = fast["dev_quality"]["em"] - base["dev_quality"]["em"]
        result["fast_top5_overlap"] = fast["dev_quality"]["top5_overlap"]
    print_table(result)
    return result


FAST_VARIANT = "int8"  # what `--fast` turns on by default on a CPU (realm.modeling.inference.FAST)


def print_table(result: dict) -> None:
    port = result.get("port") or {}
    print(f"\n{'variant':8} {'embed blk/s':>11} {'x port':>7} {'cpu x':>6} {'ask q/s':>8} {'x port':>7} {'cpu x':>6} "
          f"{'p50 ms':>7} {'R@5 dev':>8} {'EM dev':>7} {'top5 ovl':>8} {'idx R@5':>8} {'idx ovl':>8}")  # fmt: skip
    if port:
        print(f"{'port':8} {port['embed_blocks_per_s'] or 0:11.1f} {'':>7} {'':>6} {port['ask_questions_per_s']:8.2f} "
              f"{'':>7} {'':>6} {port['ask_p50_ms']:7.1f}")  # fmt: skip
    for name, v in result["variants"].items():
        q = v["dev_quality"]
        iq = v.get("index_quality_dev") or {}
        cells = [fmt_x(v.get("embed_speedup")), fmt_x(v.get("embed_speedup_cpu")), f"{v['ask_questions_per_s']:.2f}",
                 fmt_x(v.get("ask_speedup")), fmt_x(v.get("ask_speedup_cpu")), f"{v['ask_p50_ms_one_at_a_time'] or 0:.1f}",
                 f"{q['recall_at_5']:.1f}", f"{q['em']:.1f}", f"{q['top5_overlap']:.3f}",
                 "-" if iq.get("recall_at_5") is None else f"{iq['recall_at_5']:.1f}", f"{iq.get('top5_overlap', 0):.3f}"]
        widths = [7, 6, 8, 7, 6, 7, 8, 7, 8, 8, 8]
        print(f"{name:8} {v['embed_blocks_per_s']:11.1f} " + " ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
    for row in (result.get("serve") or {}).get("runs", []):
        print(f"serve {row['variant']}: {row['requests_per_s']:.1f} req/s, p50 {row['p50_ms']:.0f} ms, p99 "
              f"{row['p99_ms']:.0f} ms, 5xx {row['5xx']}, peak RSS {row['peak_rss_mib']:.0f} MiB")  # fmt: skip


def fmt_x(value: float | None) -> str:
    return f"{value:.2f}x" if value else "-"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    default_bundle = Path(os.environ.get("REALM_CACHE", Path.home() / ".cache" / "realm")) / "demo"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(default_bundle), help="directory with pipeline.json (default: the demo's)")
    parser.add_argument("--embedder", help="the block tower the index was built with (default: the demo's retriever/embedder)")
    parser.add_argument("--port-python", default="/work/scratch/portvenv/bin/python",
                        help="an interpreter with transformers 4.57.6 (missing: the port's part is skipped)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--blocks", type=int, default=0, help="blocks to embed (default: the whole store)")
    parser.add_argument("--questions", type=int, default=0, help="questions to answer (default: all dev + test, 297)")
    parser.add_argument("--embed-batch", type=int, default=64)
    parser.add_argument("--ask-batch", type=int, default=32)
    parser.add_argument("--latency-questions", type=int, default=50, help="questions asked one at a time for the p50")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--force-bf16", action="store_true", help="time bf16 even where the CPU lacks native bf16")
    parser.add_argument("--no-port-embed", action="store_true", help="skip the port's corpus embedding")
    parser.add_argument("--no-serve", action="store_true")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400, help="serve requests per variant")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_e2e.json"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
