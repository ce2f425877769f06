"""Benchmark `realm serve`: throughput and latency under concurrent clients, with and without micro-batching.

Starts `realm serve` in a subprocess on a loopback port (by default over the test fixture's tiny
RealmForOpenQA and its 8 blocks; `--model/--store/--index` for a real one), warms it up, then sends
`--requests` POST /ask requests (one question each, from a pool of distinct questions) from `--clients`
concurrent keep-alive clients (asyncio + httpx). Each mode gets its own fresh server:
"batched" (max_batch_size = --max-batch-size) and "unbatched" (max_batch_size = 1). Reports the number of
5xx answers (must be 0: the script exits 1 otherwise), throughput, p50/p99 latency, the mean questions
per model call (from /health), and the batched / unbatched ratios.

    python benchmarks/bench_serve.py                                   # 1000 requests per mode, 16 clients
    python benchmarks/bench_serve.py --requests 100 --clients 4        # quick
    python benchmarks/bench_serve.py --model M --store S --index I     # any checkpoint and corpus
    python benchmarks/bench_serve.py --mixed --heavy-clients 4         # light p99 with / without heavy clients

`--mixed` measures fair scheduling instead: one batched server; `--clients` light clients (one short
question each) run alone, then again while `--heavy-clients` clients send heavy requests back to back (32
questions of ~1000 characters at k = --heavy-k, the most a request may cost). Reports the light clients'
p50/p99 in both phases, their ratio (the target: p99 within 3x) and the 5xx count (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "reference" / "openqa_eval"
QUESTIONS = [
    "the capital of france?", "which city has the eiffel tower?", "the capital of italy", "old church",
    "where is the colosseum?", "a famous tower", "what is paris?", "which river runs through rome?",
]  # fmt: skip


def tiny_corpus(root: Path) -> tuple[Path, Path, Path]:
    """The fixture's store and index (as tests/test_serve.py builds them)."""
    from realm import RealmForOpenQA, RealmRetriever, RealmTokenizerFast
    from realm.corpus import Block, BlockStore
    from realm.index import write_embeddings

    tokenizer = RealmTokenizerFast.from_pretrained(FIXTURE)
    texts = json.loads((FIXTURE / "block_records.json").read_text())
    blocks = [Block("", t, [], tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
    store = BlockStore.create(root / "store", blocks, tokenizer)
    model = RealmForOpenQA.from_pretrained(FIXTURE, retriever=RealmRetriever(store, tokenizer))
    write_embeddings(root / "index", model.block_emb)
    return FIXTURE, root / "store", root / "index"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    args: argparse.Namespace, paths: tuple[Path, Path, Path], batch_size: int
) -> tuple[subprocess.Popen, str]:
    model, store, index = paths
    return launch_serve([
        "--model", str(model), "--store", str(store), "--index", str(index), "--k", str(args.k),
        "--max-batch-size", str(batch_size), "--max-wait-ms", str(args.max_wait_ms), "--max-cost", str(10**9),
        "--max-k", str(max(args.k, args.heavy_k)),
    ], args.threads)  # fmt: skip


def launch_serve(serve_args: list[str], threads: int, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """`realm serve SERVE_ARGS --port P` from this checkout on a free loopback port, with `threads` BLAS threads;
    returns once /health answers 200."""
    port = free_port()
    command = [sys.executable, "-m", "realm.cli", "serve", *serve_args, "--port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"realm serve exited with {process.returncode}:\n{process.stderr.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"realm serve did not answer /health within {timeout:.0f} s")


async def load(
    url: str, requests: int, clients: int, questions: list[str] | None = None
) -> tuple[list[float], dict[int, int], float]:
    """Latencies (s) of successful requests, counts by status (0: transport error), wall time. Request i asks
    `questions[i % len]`; without `questions`, one of QUESTIONS made unique by its number (no answer repeats)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(requests))

    def question(i: int) -> str:
        return questions[i % len(questions)] if questions else f"{QUESTIONS[i % len(QUESTIONS)]} {i}"

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            for i in counter:  # the shared iterator hands each request to one client
                started = time.perf_counter()
                try:
                    status = (await http.post("/ask", json={"question": question(i)})).status_code
                except httpx.TransportError:
                    status = 0
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, statuses, time.perf_counter() - started


async def heavy_load(url: str, clients: int, k: int, stop: asyncio.Event) -> dict[int, int]:
    """Heavy requests back to back until `stop`: counts by status."""
    statuses: dict[int, int] = {}
    question = ("which river runs through the old capital city of the country " * 16)[:1000]

    async def client(c: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            i = 0
            while not stop.is_set():
                body = {"questions": [f"{i} {j} {question}"[:1000] for j in range(32)], "k": k}
                try:
                    status = (await http.post("/ask", json=body)).status_code
                except httpx.TransportError:
                    status = 0
                statuses[status] = statuses.get(status, 0) + 1
                i += 1

    await asyncio.gather(*(client(c) for c in range(clients)))
    return statuses


def percentile(latencies: list[float], q: float) -> float:
    latencies = sorted(latencies)
    return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")


def run_mixed(args: argparse.Namespace, paths: tuple[Path, Path, Path]) -> list[dict]:
    process, url = start_server(args, paths, args.max_batch_size)
    rows = []
    try:
        asyncio.run(load(url, args.clients * 2, args.clients))  # warm-up (not counted)
        latencies, statuses, seconds = asyncio.run(load(url, args.requests, args.clients))
        rows.append(_mixed_row("light alone", latencies, statuses, {}, seconds))

        async def both() -> tuple[list[float], dict[int, int], float, dict[int, int]]:
            stop = asyncio.Event()
            heavy = asyncio.create_task(heavy_load(url, args.heavy_clients, args.heavy_k, stop))
            await asyncio.sleep(1.0)  # the heavy clients are at work before the light ones start
            light = await load(url, args.requests, args.clients)
            stop.set()
            return (*light, await heavy)

        latencies, statuses, seconds, heavy = asyncio.run(both())
        rows.append(_mixed_row(f"light + {args.heavy_clients} heavy", latencies, statuses, heavy, seconds))
    finally:
        process.terminate()
        process.wait(30)
    return rows


def _mixed_row(name: str, latencies: list[float], statuses: dict[int, int], heavy: dict[int, int], seconds: float) -> dict:
    return {
        "phase": name,
        "light ok": statuses.get(200, 0),
        "light 5xx": sum(n for s, n in statuses.items() if s >= 500 or s == 0),
        "heavy ok": heavy.get(200, 0),
        "heavy 5xx": sum(n for s, n in heavy.items() if s >= 500 or s == 0),
        "light p50 ms": percentile(latencies, 0.5),
        "light p99 ms": percentile(latencies, 0.99),
        "seconds": seconds,
    }


def run_mode(args: argparse.Namespace, paths: tuple[Path, Path, Path], name: str, batch_size: int) -> dict:
    process, url = start_server(args, paths, batch_size)
    try:
        asyncio.run(load(url, args.clients * 2, args.clients))  # warm-up (not counted)
        before = httpx.get(f"{url}/health").json()["batching"]
        latencies, statuses, seconds = asyncio.run(load(url, args.requests, args.clients))
        after = httpx.get(f"{url}/health").json()["batching"]
    finally:
        process.terminate()
        process.wait(30)
    latencies.sort()
    calls = after["model_calls"] - before["model_calls"]
    return {
        "mode": name,
        "max_batch": batch_size,
        "requests": args.requests,
        "ok": statuses.get(200, 0),
        "5xx": sum(n for s, n in statuses.items() if s >= 500),
        "other": sum(n for s, n in statuses.items() if s != 200 and s < 500),
        "req/s": args.requests / seconds,
        "p50 ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99 ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        if latencies
        else float("nan"),
        "q/call": (after["questions"] - before["questions"]) / calls if calls else float("nan"),
    }


def table(rows: list[dict]) -> str:
    columns = list(rows[0])
    cells = [[f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per mode")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--max-batch-size", type=int, default=16, help="of the batched mode")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--k", type=int, default=3, help="blocks read per question")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--model", help="RealmForOpenQA checkpoint (default: the tiny test fixture)")
    parser.add_argument("--store", help="block store (with --model)")
    parser.add_argument("--index", help="index (with --model)")
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument("--mixed", action="store_true", help="light clients alone, then beside heavy clients")
    parser.add_argument("--heavy-clients", type=int, default=4, help="with --mixed")
    parser.add_argument("--heavy-k", type=int, default=20, help="k of the heavy requests (with --mixed)")
    args = parser.parse_args()
    if args.mixed:
        return main_mixed(args)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            paths = (Path(args.model), Path(args.store), Path(args.index))
        else:
            paths = tiny_corpus(Path(tmp))
        rows = [
            run_mode(args, paths, "batched", args.max_batch_size),
            run_mode(args, paths, "unbatched", 1),
        ]
    batched, unbatched = rows
    import torch

    report = "\n".join(
        [
            "# realm serve benchmark",
            "",
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}, "
            f"torch {torch.__version__}; load average {os.getloadavg()[0]:.2f} at the end",
            f"model {paths[0].name if args.model else 'tiny test fixture (2 layers, hidden 32, 8 blocks)'}; "
            f"k={args.k}; {args.clients} clients x {args.requests} requests per mode (1 question each); "
            f"max_wait_ms={args.max_wait_ms}; server torch threads={args.threads}",
            f"command: python benchmarks/bench_serve.py {' '.join(sys.argv[1:])}".rstrip(),
            "",
            table(rows),
            "",
            f"batched / unbatched: throughput x{batched['req/s'] / unbatched['req/s']:.2f}, "
            f"p50 latency x{batched['p50 ms'] / unbatched['p50 ms']:.2f}, "
            f"p99 latency x{batched['p99 ms'] / unbatched['p99 ms']:.2f}",
        ]
    )
    print(report)
    if args.output:
        Path(args.output).write_text(report + "\n")
    failed = sum(r["5xx"] + r["other"] for r in rows)
    if failed:
        print(f"FAIL: {failed} requests did not get a 200", file=sys.stderr)
    return 1 if failed else 0


def main_mixed(args: argparse.Namespace) -> int:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        paths = (Path(args.model), Path(args.store), Path(args.index)) if args.model else tiny_corpus(Path(tmp))
        rows = run_mixed(args, paths)
    alone, mixed = rows
    ratio = mixed["light p99 ms"] / alone["light p99 ms"]
    report = "\n".join([
        "# realm serve benchmark: light clients beside heavy ones (fair scheduling)",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}; "
        f"load average {os.getloadavg()[0]:.2f} at the end",
        f"model {paths[0].name if args.model else 'tiny test fixture (2 layers, hidden 32, 8 blocks)'}; light: "
        f"{args.clients} clients x {args.requests} requests (1 question, k={args.k}); heavy: {args.heavy_clients} "
        f"clients, 32 questions x 1000 characters at k={args.heavy_k} each; max_batch_size={args.max_batch_size}",
        f"command: python benchmarks/bench_serve.py {' '.join(sys.argv[1:])}".rstrip(),
        "",
        table(rows),
        "",
        f"light p99 with heavy clients / alone: x{ratio:.2f} (target: within x3)",
    ])  # fmt: skip
    print(report)
    if args.output:
        Path(args.output).write_text(report + "\n")
    failed = sum(r["light 5xx"] + r["heavy 5xx"] for r in rows)
    if failed:
        print(f"FAIL: {failed} requests got a 5xx or no answer", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
