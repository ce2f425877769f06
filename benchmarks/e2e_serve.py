"""`bench_e2e.py`'s serve workload: `realm serve` on the bundle (dense retrieval, as the other workloads),
--clients concurrent keep-alive clients each sending one real question per request, for each variant
(float32, then with --fast). Reports req/s, p50/p99 latency, the 5xx count and the server's peak RSS
(VmHWM of its process). A fresh server per variant.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import launch_serve, load, percentile  # noqa: E402


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(args: argparse.Namespace, bundle: Path, questions: list[str], variants: list[str]) -> dict:
    rows = []
    for variant in variants:
        flags = ["--bundle", str(bundle), "--dense-only", "--max-cost", str(10**9), "--max-connections", "256"]
        process, url = launch_serve([*flags, "--fast" if variant != "fp32" else "--no-fast"], args.threads)
        try:
            asyncio.run(load(url, args.clients * 2, args.clients, questions))  # warm-up, not counted
            latencies, statuses, seconds = asyncio.run(load(url, args.requests, args.clients, questions))
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
