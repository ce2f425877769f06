"""Benchmark realm.index on CPU: exact search against FAISS and the port, ANN recall vs speed, a 13.35M index.

In one run, on N x 128 float32 synthetic embeddings (a seeded Gaussian mixture, default N = 1M):

1. memory bandwidth (np.sum, torch.sum, copy over the matrix) and the bound for one query: the matrix
   bytes / the best bandwidth -- no exact search of one query can beat reading the matrix once;
2. kernel choices per chunk for one query (what `ExactIndex` picks and why);
3. exact search of 1 and 256 queries: `ExactIndex` (float32 and float16 storage) vs FAISS `IndexFlatIP`
   vs the transformers port's `torch.einsum("BD,QD->QB", block_emb, q)` + `torch.topk`;
4. ANN: recall@10 against exact and speed-up over exact for IVF (several nprobe), HNSW (several
   efSearch) and IVF-PQ (4-bit fast scan, several nprobe);
5. a 13,353,718 x 128 float16 index (3.4 GB) written chunk by chunk to a temporary directory under /tmp,
   then opened in a fresh process: time to open, RSS after opening and after one search.

Timings are medians of repeats, with the contenders interleaved round by round so that load from other
processes on the machine hits them alike.

    python benchmarks/bench_index.py                          # full run (~10 min on 2 cores)
    python benchmarks/bench_index.py --quick                  # small sizes, seconds (smoke test)
    python benchmarks/bench_index.py --output benchmarks/results/bench_index.txt
    python benchmarks/ann_vectors.py --out DIR          # real vectors first (>= 100k; ~1 h on 2 busy cores)
    python benchmarks/bench_index.py --vectors DIR --real-only   # ANN recall vs speed on them + add costs

The real-vector table (`ann_real.py`) is the one to read for ANN: the synthetic mixture, kept as a
second line, flatters IVF (well-separated clusters, one per list).
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from realm.index import ExactIndex, FaissIndex, IndexManifest, create_embeddings, finish_embeddings

try:
    import faiss
except ImportError:
    faiss = None

REALM_BLOCKS = 13_353_718


@dataclass(frozen=True)
class Sizes:
    count: int = 1_000_000
    dim: int = 128
    clusters: int = 1000
    queries: int = 256
    k: int = 10
    rounds_1q: int = 25
    rounds_batch: int = 3
    ann_queries_1q: int = 64
    nlist: int = 1024
    nprobes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    hnsw_m: int = 32
    ef_searches: tuple[int, ...] = (16, 32, 64, 128, 256)
    pq_m: int = 64
    pq_nprobes: tuple[int, ...] = (4, 16, 64)
    train_size: int = 65536
    large_count: int = REALM_BLOCKS
    chunk_sizes: tuple[int, ...] = (16384, 65536, 262144)


FULL = Sizes()
QUICK = Sizes(
    count=20_000, dim=32, clusters=50, queries=16, rounds_1q=3, rounds_batch=1, ann_queries_1q=4, nlist=64,
    nprobes=(1, 8), hnsw_m=16, ef_searches=(16, 64), pq_m=16, pq_nprobes=(8,), train_size=5000,
    large_count=100_000, chunk_sizes=(4096, 16384),
)  # fmt: skip


class Report:
    """Print lines and keep them for --output."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
        for i, row in enumerate([header, *rows]):
            self(
                "  ".join(
                    str(c).rjust(w) if j else str(c).ljust(w)
                    for j, (c, w) in enumerate(zip(row, widths, strict=True))
                )
            )
            if i == 0:
                self("  ".join("-" * w for w in widths))


def mixture(count: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """A Gaussian mixture: centres N(0, I); a point is its centre + N(0, s^2 I), s ~ U(0.5, 1.5) per cluster.

    The centres and spreads are fixed (seed 12345); `seed` draws the points."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(12345)
    centres = mix.standard_normal((clusters, dim), dtype=np.float32)
    spreads = mix.uniform(0.5, 1.5, clusters).astype(np.float32)
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, 1 << 18):
        stop = min(start + (1 << 18), count)
        cluster = rng.integers(0, clusters, stop - start)
        out[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] *= spreads[cluster, None]
        out[start:stop] += centres[cluster]
    return out


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, run round-robin `rounds` times after `warmup` rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.numel()


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


# ---------------------------------------------------------------------------------------------------------
# Sections.


def bandwidth(
    report: Report, matrix: np.ndarray, query: torch.Tensor, index: ExactIndex, rounds: int
) -> tuple[float, dict[str, float]]:
    """Read bandwidth over the matrix, measured round by round with one-query searches (reads only: a
    copy's write-back would slow down whatever runs next). Returns (best bytes/s, the searches' medians)."""
    tensor = torch.from_numpy(matrix)
    times = interleaved(
        {
            "torch.sum": lambda: tensor.sum(),
            "ExactIndex right after torch.sum": lambda: index.search(query, 10),
            "np.sum": lambda: matrix.sum(),
            "ExactIndex right after np.sum": lambda: index.search(query, 10),
        },
        rounds,
    )
    copy = np.empty_like(matrix)
    times["np.copyto"] = interleaved({"copy": lambda: np.copyto(copy, matrix)}, max(3, rounds // 5))["copy"]
    rates = {
        "np.sum (1 thread)": matrix.nbytes / times["np.sum"],
        "torch.sum (all threads)": matrix.nbytes / times["torch.sum"],
        "np.copyto (reads + writes)": 2 * matrix.nbytes / times["np.copyto"],
    }
    best = max(rates.values())
    bound = matrix.nbytes / best
    searches = {name: t for name, t in times.items() if name.startswith("ExactIndex")}
    report(f"## Memory bandwidth over the {matrix.nbytes / 1e6:.0f} MB matrix (> cache; median of {rounds})")
    report()
    report.table(
        ["method", "ms", "GB/s"],
        [
            [name, ms(matrix.nbytes / rate * (2 if "copy" in name else 1)), f"{rate / 1e9:.1f}"]
            for name, rate in rates.items()
        ],
    )
    report()
    report(f"bound for one query = {matrix.nbytes / 1e6:.0f} MB / {best / 1e9:.1f} GB/s = {ms(bound)} ms")
    for name, t in searches.items():
        report(f"{name} (1 query, default settings): {ms(t)} ms = {t / bound:.2f}x the bound")
    report(
        "(right after a torch op, torch's OpenMP threads spin-wait for a few ms on the second core: "
        "OMP_WAIT_POLICY=passive removes that)"
    )
    report()
    return best, searches


def kernels(report: Report, matrix: np.ndarray, query: torch.Tensor, sizes: Sizes) -> None:
    """Per-chunk kernels for one query over the whole matrix, and ExactIndex chunk sizes / threads."""
    tensor = torch.from_numpy(matrix)
    q = query.numpy()
    threads = torch.get_num_threads()
    chunk = 65536
    chunks = [(s, min(s + chunk, len(matrix))) for s in range(0, len(matrix), chunk)]
    fns: dict[str, Callable[[], object]] = {
        "np.einsum (numpy loops, 1 thread)": lambda: [
            np.einsum("cd,bd->bc", matrix[a:b], q) for a, b in chunks
        ],
        "np.dot (OpenBLAS sgemv)": lambda: [np.dot(matrix[a:b], q[0]) for a, b in chunks],
        "torch.mv (MKL)": lambda: [torch.mv(tensor[a:b], query[0]) for a, b in chunks],
        "torch.mm q @ chunk.T (MKL)": lambda: [torch.mm(query, tensor[a:b].T) for a, b in chunks],
    }
    for cs in sizes.chunk_sizes:
        for t in sorted({1, threads}):
            index = ExactIndex(matrix, chunk_size=cs, num_threads=t)
            fns[f"ExactIndex chunk_size={cs} num_threads={t}"] = lambda index=index: index.search(query, 10)
    times = interleaved(fns, max(3, sizes.rounds_1q // 3))
    report(
        f"## Kernels for one query: scoring alone, chunk by chunk ({chunk:,} rows), then the whole "
        "ExactIndex.search (scores + top-k) by chunk_size and threads"
    )
    report()
    report.table(["kernel", "ms"], [[name, ms(t)] for name, t in times.items()])
    report()


def exact_search(report: Report, matrix: np.ndarray, queries: torch.Tensor, bw: float, sizes: Sizes) -> dict:
    """1 query and a batch: ExactIndex fp32 / fp16, FAISS IndexFlatIP, the port's einsum + topk."""
    k = sizes.k
    block_emb = torch.from_numpy(matrix)
    half = matrix.astype(np.float16)
    ours, ours16 = ExactIndex(matrix), ExactIndex(half)

    def port(q: torch.Tensor) -> torch.Tensor:
        return torch.einsum("BD,QD->QB", block_emb, q).topk(k, dim=-1).indices

    contenders: dict[str, Callable[[torch.Tensor], object]] = {
        "ExactIndex (float32)": lambda q: ours.search(q, k),
        "ExactIndex (float16 storage)": lambda q: ours16.search(q, k),
        "port einsum + topk": port,
    }
    flat = None
    if faiss is not None:
        flat = faiss.IndexFlatIP(matrix.shape[1])
        flat.add(matrix)
        contenders["FAISS IndexFlatIP"] = lambda q: flat.search(q.numpy(), k)
    one = queries[:1]
    single = interleaved({name: (lambda fn=fn: fn(one)) for name, fn in contenders.items()}, sizes.rounds_1q)
    batch = interleaved(
        {name: (lambda fn=fn: fn(queries)) for name, fn in contenders.items()}, sizes.rounds_batch
    )
    truth = ours.search(queries, k)
    agree = {"port einsum + topk": recall(port(queries), truth.ids)}
    if flat is not None:
        agree["FAISS IndexFlatIP"] = recall(torch.from_numpy(flat.search(queries.numpy(), k)[1]), truth.ids)
    bound = matrix.nbytes / bw
    report(
        f"## Exact top-{k} of {len(matrix):,} x {matrix.shape[1]} float32 (1 query: median of {sizes.rounds_1q}; "
        f"{len(queries)} queries: median of {sizes.rounds_batch})"
    )
    report()
    rows = []
    for name in contenders:
        rows.append([
            name, ms(single[name]), f"{single[name] / bound:.2f}x", ms(batch[name]),
            f"{batch[name] / len(queries) * 1e3:.2f}", f"{agree.get(name, 1.0):.4f}",
        ])  # fmt: skip
    report.table(
        [
            "method",
            "1 query ms",
            "vs bound",
            f"{len(queries)} queries ms",
            "ms/query",
            "recall vs ExactIndex",
        ],
        rows,
    )
    report()
    report(f"(bound for one query: {ms(bound)} ms; the float16 row reads half the bytes but converts them)")
    report()
    return {"single": single, "batch": batch, "bound": bound, "truth": truth}


def ann(report: Report, matrix: np.ndarray, queries: torch.Tensor, exact: dict, sizes: Sizes) -> list[dict]:
    """Recall@k vs speed for IVF, HNSW and IVF-PQ settings."""
    k = sizes.k
    one_q = queries[: sizes.ann_queries_1q]
    exact_1q = exact["single"]["ExactIndex (float32)"]
    exact_batch = exact["batch"]["ExactIndex (float32)"] / len(queries)
    settings = [  # factory, build arguments, search parameter settings
        (f"IVF{sizes.nlist},Flat", {}, [{"nprobe": n} for n in sizes.nprobes]),
        (f"HNSW{sizes.hnsw_m}", {"ef_construction": 40}, [{"efSearch": e} for e in sizes.ef_searches]),
        (
            f"IVF{sizes.nlist},PQ{sizes.pq_m}x4fs",
            {},
            [{"nprobe": n, "rerank": r} for n in sizes.pq_nprobes for r in (0, 100)],
        ),
    ]
    rows, results = [], []
    for factory, build_kwargs, settings_list in settings:
        start = time.perf_counter()
        index = FaissIndex.build(matrix, factory, train_size=sizes.train_size, seed=0, **build_kwargs)
        build = time.perf_counter() - start
        for params in settings_list:
            index.set_params(**params)
            found = index.search(queries, k).ids
            r = recall(found, exact["truth"].ids)
            times = interleaved(
                {
                    "1q": lambda index=index: [index.search(q[None], k) for q in one_q],
                    "batch": lambda index=index: index.search(queries, k),
                },
                max(1, sizes.rounds_batch),
            )
            t1 = times["1q"] / len(one_q)
            tb = times["batch"] / len(queries)
            setting = " ".join(f"{key}={value}" for key, value in params.items())
            results.append({"name": f"{factory} {setting}", "recall": r, "speedup_1q": exact_1q / t1})
            rows.append([
                factory, setting, f"{build:.1f}", f"{r:.3f}", f"{t1 * 1e3:.3f}", f"{exact_1q / t1:.0f}x",
                f"{tb * 1e3:.3f}", f"{exact_batch / tb:.1f}x",
            ])  # fmt: skip
        del index
    report(f"## ANN recall@{k} vs speed, SYNTHETIC Gaussian mixture (flatters IVF: read the real-vector table; "
           f"speed-up over ExactIndex float32: {ms(exact_1q)} ms for 1 query, "
           f"{exact_batch * 1e3:.2f} ms/query in a batch of {len(queries)})")  # fmt: skip
    report()
    report.table(
        [
            "index",
            "setting",
            "build s",
            f"recall@{k}",
            "1-query ms",
            "speed-up",
            "batch ms/query",
            "speed-up",
        ],
        rows,
    )
    report()
    return results


OPEN_PROBE = r"""
import json, sys, time
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
import torch
from realm.index import ExactIndex
base = rss()
start = time.perf_counter()
index = ExactIndex.load(sys.argv[1])
opened = time.perf_counter() - start
rss_open = rss()
query = torch.randn(1, index.dim, generator=torch.Generator().manual_seed(0))
start = time.perf_counter()
scores, ids = index.search(query, 10)
first = time.perf_counter() - start
rss_search = rss()
start = time.perf_counter()
index.search(query, 10)
second = time.perf_counter() - start
print(json.dumps({"baseline": base, "open_s": opened, "rss_open": rss_open, "search_s": first,
                  "search2_s": second, "rss_search": rss_search, "count": len(index)}))
"""


def large_index(report: Report, sizes: Sizes, directory: Path) -> dict:
    """Write a REALM-sized float16 matrix chunk by chunk; open and search it in a fresh process."""
    count, dim = sizes.large_count, 128
    start = time.perf_counter()
    out = create_embeddings(directory, count, dim, "float16")
    rng = np.random.default_rng(1)
    for lo in range(0, count, 1 << 19):
        hi = min(lo + (1 << 19), count)
        out[lo:hi] = rng.standard_normal((hi - lo, dim), dtype=np.float32)
    out.flush()
    del out
    finish_embeddings(
        directory, IndexManifest(count, dim, "float16", extra={"source": "bench_index synthetic"})
    )
    written = time.perf_counter() - start
    nbytes = count * dim * 2
    probe = subprocess.run(
        [sys.executable, "-c", OPEN_PROBE, str(directory)], capture_output=True, text=True, check=True
    )
    r = json.loads(probe.stdout.strip().splitlines()[-1])
    report(f"## A {count:,} x {dim} float16 index ({nbytes / 1e9:.2f} GB), opened in a fresh process "
           "(page cache warm: the file was just written)")  # fmt: skip
    report()
    report.table(
        ["step", "value"],
        [
            ["write chunk by chunk (generate + write)", f"{written:.1f} s"],
            ["RSS of the process before opening (python + torch)", f"{r['baseline'] / 1e6:.0f} MB"],
            ["ExactIndex.load (memmap + manifest)", f"{r['open_s'] * 1e3:.1f} ms"],
            [
                "RSS after opening",
                f"{r['rss_open'] / 1e6:.0f} MB = {r['rss_open'] / nbytes:.3f}x the index bytes",
            ],
            ["first search, 1 query (pages the whole file in)", f"{r['search_s'] * 1e3:.0f} ms"],
            [
                "RSS after the search",
                f"{r['rss_search'] / 1e6:.0f} MB = {r['rss_search'] / nbytes:.3f}x the index bytes",
            ],
            ["second search, 1 query", f"{r['search2_s'] * 1e3:.0f} ms"],
        ],
    )
    report()
    return {**r, "nbytes": nbytes}


def summary(
    report: Report, exact: dict, ann_results: list[dict], large: dict, searches: dict, quick: bool
) -> None:
    ours = exact["single"]["ExactIndex (float32)"]
    ratios = {name.removeprefix("ExactIndex "): t / exact["bound"] for name, t in searches.items()}
    ratios["in the exact-search table"] = ours / exact["bound"]
    text = ", ".join(f"{r:.2f}x {name}" for name, r in ratios.items())
    checks = [(f"exact 1 query within 1.5x of the bandwidth bound: {text}", max(ratios.values()) <= 1.5)]
    if "FAISS IndexFlatIP" in exact["single"]:
        f1, fb = exact["single"]["FAISS IndexFlatIP"], exact["batch"]["FAISS IndexFlatIP"]
        ob = exact["batch"]["ExactIndex (float32)"]
        checks.append(
            (f"exact >= FAISS flat, 1 query: {ms(ours)} vs {ms(f1)} ms ({f1 / ours:.1f}x faster)", ours <= f1)
        )
        checks.append(
            (f"exact >= FAISS flat, batch: {ms(ob)} vs {ms(fb)} ms ({fb / ob:.1f}x faster)", ob <= fb)
        )
    good = [r for r in ann_results if r["recall"] >= 0.95]
    best = max(good, key=lambda r: r["speedup_1q"], default=None)
    if best is not None:
        checks.append((f"ANN recall@10 >= 0.95 at >= 20x exact (1 query): {best['name']}: recall {best['recall']:.3f}, "
                       f"{best['speedup_1q']:.0f}x", best["speedup_1q"] >= 20))  # fmt: skip
    else:
        checks.append(("ANN recall@10 >= 0.95 at >= 20x exact: no setting reached recall 0.95", False))
    checks.append((f"open the large index < 2 s: {large['open_s'] * 1e3:.1f} ms", large["open_s"] < 2))
    for when in ("open", "search"):
        x = large[f"rss_{when}"] / large["nbytes"]
        checks.append((f"RSS after {when} < 1.1x the index bytes: {x:.3f}x", x < 1.1))
    report("## Targets" + (" (they apply to the full run, not to --quick sizes)" if quick else ""))
    report()
    for text, ok in checks:
        report(f"[{'met' if ok else 'MISSED'}] {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test in seconds")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and FAISS threads (default: all cores)"
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the report to this file")
    parser.add_argument(
        "--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where the large index goes"
    )
    parser.add_argument("--vectors", type=Path, default=None,
                        help="real vectors from benchmarks/ann_vectors.py: the real-vector ANN table and add costs")
    parser.add_argument("--real-only", action="store_true", help="with --vectors: only the real-vector sections")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    report = Report()
    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    report(f"# realm.index benchmark{' (--quick)' if args.quick else ''}")
    report()
    report(f"{cpu}, {os.cpu_count()} cores, {threads} threads; python {platform.python_version()}, torch "
           f"{torch.__version__}, numpy {np.__version__}, faiss {faiss.__version__ if faiss else 'not installed'}; "
           f"load average {os.getloadavg()[0]:.2f} at start")  # fmt: skip
    report(f"data: {sizes.count:,} x {sizes.dim} float32 Gaussian mixture ({sizes.clusters} clusters, spreads 0.5-1.5, seed 0), "
           f"{sizes.queries} queries from the same mixture (seed 1), k = {sizes.k}")  # fmt: skip
    report()
    if args.vectors is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from ann_real import add_cost, real_ann

        real = real_ann(report, args.vectors, quick=args.quick)
        add_cost(report, args.vectors, quick=args.quick)
        if args.real_only:
            best = max((r for r in real if r["recall"] >= 0.95), key=lambda r: r["speedup_1q"], default=None)
            met = best is not None and best["speedup_1q"] >= 20
            report("## Targets (real vectors)")
            report()
            report(f"[{'met' if met else 'MISSED'}] ANN recall@10 >= 0.95 at >= 20x exact (1 query): "
                   + (f"{best['name']}: recall {best['recall']:.3f}, {best['speedup_1q']:.1f}x" if best else "none reached 0.95"))
            report()
            return finish(report, args.output)
    matrix = mixture(sizes.count, sizes.dim, sizes.clusters, seed=0)
    queries = torch.from_numpy(mixture(sizes.queries, sizes.dim, sizes.clusters, seed=1))
    bw, searches = bandwidth(report, matrix, queries[:1], ExactIndex(matrix), 2 * sizes.rounds_1q)
    kernels(report, matrix, queries[:1], sizes)
    exact = exact_search(report, matrix, queries, bw, sizes)
    ann_results = ann(report, matrix, queries, exact, sizes) if faiss is not None else []
    if faiss is None:
        report("FAISS is not installed (pip install 'realm-lm[faiss]'): no FAISS rows, no ANN table")
    del matrix
    with tempfile.TemporaryDirectory(prefix="realm-bench-index-", dir=args.tmp) as tmp:
        large = large_index(report, sizes, Path(tmp))
    summary(report, exact, ann_results, large, searches, args.quick)
    report()
    return finish(report, args.output)


def finish(report: Report, output: Path | None) -> int:
    """The report's last line (the load now), then the whole report to `output` if given; exit status 0."""
    report(f"load average {os.getloadavg()[0]:.2f} at the end")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("\n".join(report.lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
