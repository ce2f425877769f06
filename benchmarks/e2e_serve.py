"""`bench_e2e.py`'s serve workload: `realm serve` on the bundle (dense retrieval, as the other workloads),
--clients concurrent keep-alive clients each sending one real question per request, for each variant
(float32, then with --fast). Reports req/s, p50/p99 latency, the 5xx count and the server's peak RSS
(VmHWM of its process). A fresh server per variant.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import free_port, percentile  # noqa: E402


def start(bundle: Path, fast: bool, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "realm.cli", "serve", "--bundle", str(bundle), "--dense-only", "--port", str(port),
        "--max-cost", str(10**9), "--max-connections", "256", "--fast" if fast else "--no-fast",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"realm serve exited with {process.returncode}:\n{process.stderr.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("realm serve did not answer /health within 180 s")


async def load(url: str, questions: list[str], requests: int, clients: int) -> tuple[list[float], dict[int, int], float]:
    """Latencies (s) of the 200s, counts by status (0: transport error), wall time."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(requests))

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            for i in counter:  # the shared iterator hands each request to one client
                started = time.perf_counter()
                try:
                    status = (await http.post("/ask", json={"question": questions[i % len(questions)]})).status_code
                except httpx.TransportError:
                    status = 0
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, statuses, time.perf_counter() - started


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(args: argparse.Namespace, bundle: Path, questions: list[str], variants: list[str]) -> dict:
    rows = []
    for variant in variants:
        process, url = start(bundle, fast=variant != "fp32", threads=args.threads)
        try:
            asyncio.run(load(url, questions, args.clients * 2, args.clients))  # warm-up, not counted
            latencies, statuses, seconds = asyncio.run(load(url, questions, args.requests, args.clients))
            rss = peak_rss_mib(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=60)
        errors = sum(n for status, n in statuses.items() if status >= 500 or status == 0)
        rows.append({
            "variant": variant, "requests": args.requests, "clients": args.clients, "statuses": statuses,
            "5xx": errors, "requests_per_s": len(latencies) / seconds, "p50_ms": percentile(latencies, 0.50),
            "p99_ms": percentile(latencies, 0.99), "peak_rss_mib": rss, "load_after": os.getloadavg()[0],
        })  # fmt: skip
        print(f"serve {variant}: {rows[-1]['requests_per_s']:.1f} req/s, 5xx {errors}", flush=True)
    return {"command_flags": "realm serve --bundle B --dense-only (max_batch_size 16, k from the bundle)", "runs": rows}
