"""ANN recall@10 vs speed on real embeddings, and the cost of adding blocks at two index sizes.

Used by `bench_index.py --vectors DIR` (DIR written by `benchmarks/ann_vectors.py`): blocks.npy [N, 128]
(the demo's initial embedder over >= 100k passages of real Wikipedia leads) and queries.npy (the demo's
questions, embedded the same way). The vectors are LayerNorm outputs, not unit vectors, so inner-product
search is MIPS proper; each FAISS kind is measured on raw inner product and with the MIPS -> L2
augmentation (`FaissIndex.build(..., mips_to_l2=True)`, hits re-scored exactly).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realm.index import ExactIndex, FaissIndex


def _per_query(index: Any, queries: torch.Tensor, k: int, rounds: int) -> float:
    """Median over rounds of the mean seconds per single-query search."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for q in queries:
            index.search(q[None], k)
        times.append((time.perf_counter() - start) / len(queries))
    return statistics.median(times)


def _recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    return sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)) / truth.numel()


def real_ann(report: Any, directory: Path, k: int = 10, recall_queries: int = 2000, timed_queries: int = 200,
             rounds: int = 3, quick: bool = False) -> list[dict]:  # fmt: skip
    blocks = np.load(directory / "blocks.npy", mmap_mode="r")
    blocks = np.ascontiguousarray(blocks)
    all_queries = np.load(directory / "queries.npy")
    rng = np.random.default_rng(0)
    pick = rng.choice(len(all_queries), size=min(recall_queries, len(all_queries)), replace=False)
    queries = torch.from_numpy(all_queries[np.sort(pick)])
    timed = queries[:timed_queries]
    norms = np.linalg.norm(blocks, axis=1)
    n = len(blocks)
    lists = 1024 if not quick else 64
    report(f"## ANN on real vectors: {n:,} x {blocks.shape[1]} (demo initial embedder over Wikipedia-lead passages), "
           f"{len(queries):,} real questions as queries, k = {k}")  # fmt: skip
    report()
    report(f"block norms: min {norms.min():.2f}, median {np.median(norms):.2f}, max {norms.max():.2f} (not unit vectors)")
    exact = ExactIndex(blocks)
    truth = exact.search(queries, k).ids
    exact_1q = _per_query(exact, timed, k, rounds)
    report(f"exact (ExactIndex float32): {exact_1q * 1e3:.3f} ms per query (1 query at a time, median of {rounds} "
           f"rounds over {len(timed)} queries)")  # fmt: skip
    report()
    probes = (1, 2, 4, 8, 16, 32, 64, 128) if not quick else (1, 8)
    efs = (16, 32, 64, 128, 256, 512) if not quick else (16, 64)
    settings = [
        (f"IVF{lists},Flat", False, {}, [{"nprobe": p} for p in probes]),
        (f"IVF{lists},Flat", True, {}, [{"nprobe": p} for p in probes]),
        ("HNSW32", False, {"ef_construction": 80}, [{"efSearch": e} for e in efs]),
        ("HNSW32", True, {"ef_construction": 80}, [{"efSearch": e} for e in efs]),
        (f"IVF{lists},PQ32", False, {}, [{"nprobe": p, "rerank": r} for p in probes[2::2] for r in (100,)]),
    ]
    rows, results = [], []
    for factory, mips, build_kwargs, params_list in settings:
        start = time.perf_counter()
        index = FaissIndex.build(blocks, factory, train_size=65536, seed=0, mips_to_l2=mips, **build_kwargs)
        build = time.perf_counter() - start
        metric = "L2 (MIPS->L2)" if mips else "inner product"
        for params in params_list:
            index.set_params(**params)
            r = _recall(index.search(queries, k).ids, truth)
            t = _per_query(index, timed, k, rounds)
            setting = " ".join(f"{a}={b}" for a, b in params.items())
            results.append({"name": f"{factory} {metric} {setting}", "recall": r, "speedup_1q": exact_1q / t})
            rows.append([factory, metric, setting, f"{build:.1f}", f"{r:.3f}", f"{t * 1e3:.3f}", f"{exact_1q / t:.1f}x"])
        del index
    report.table(["index", "metric", "setting", "build s", f"recall@{k}", "ms/query", "speed-up"], rows)
    report()
    good = [r for r in results if r["recall"] >= 0.95]
    best = max(good, key=lambda r: r["speedup_1q"], default=None)
    if best is not None:
        report(f"fastest at recall@{k} >= 0.95: {best['name']}: recall {best['recall']:.3f}, {best['speedup_1q']:.1f}x exact")
    else:
        report(f"no setting reached recall@{k} 0.95")
    report()
    return results


def add_cost(report: Any, directory: Path, added: int = 2000, quick: bool = False) -> dict:
    """Seconds per added block at two index sizes: publishing an embedding segment (manifest + checksum
    of the new rows only) and adding the rows to an IVF index (FAISS's own add; its file is written whole)."""
    from realm.index import write_embeddings
    from realm.index.embeddings import read_manifest
    from realm.index.live import SEGMENTS_DIR, segment_dir_name
    from realm.index.update import publish_change

    blocks = np.ascontiguousarray(np.load(directory / "blocks.npy", mmap_mode="r"))
    sizes = (len(blocks) // 10, len(blocks) - added) if not quick else (2000, 8000)
    rows, out = [], {}
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="realm-bench-add-") as tmp:
            index_dir = Path(tmp) / "index"
            write_embeddings(index_dir, blocks[:size])
            segment = index_dir / SEGMENTS_DIR / segment_dir_name(size)
            write_embeddings(segment, blocks[size : size + added])
            start = time.perf_counter()
            publish_change(index_dir, segment=segment, first=size)
            publish = time.perf_counter() - start
            assert read_manifest(index_dir).count == size + added
            ivf = FaissIndex.build(blocks[:size], "IVF256,Flat", train_size=20000, seed=0, nprobe=16)
            start = time.perf_counter()
            ivf.add_rows(blocks[size : size + added], size)
            faiss_add = time.perf_counter() - start
            start = time.perf_counter()
            ivf.write_file(index_dir, "faiss-bench.index")
            faiss_write = time.perf_counter() - start
        out[size] = (publish / added, faiss_add / added)
        rows.append([f"{size:,}", f"{added:,}", f"{publish / added * 1e6:.1f}", f"{faiss_add / added * 1e6:.1f}",
                     f"{faiss_write * 1e3:.1f}"])  # fmt: skip
    report(f"## Adding blocks: cost per block at two index sizes ({added:,} blocks added)")
    report()
    report.table(["index rows", "added", "publish segment us/block", "IVF add us/block", "FAISS file write ms (whole index)"], rows)
    report()
    report("Embedding the new blocks (the dominant cost, ~10-30 ms per block on this CPU) does not depend on the index "
           "size; the old rows are never read or written.")  # fmt: skip
    report()
    return out
