"""Approximate search from the command line: `realm index build ... --kind exact|ivf|hnsw|ivfpq`.

# N blocks, D dim, Q held-out queries, k hits

`build_ann` puts a FAISS index over an index directory's embeddings (all its segments), trained on a
seeded sample, written under a new file name that the manifest then names (the commit point), so a
reader sees the exact index or the finished ANN one. `--kind exact` takes the ANN layer off again.

`recall_check` measures recall@k of the index against exact search on held-out queries: Q rows of the
matrix that were not in the training sample, each with its own row excluded from both result lists
(a row always finds itself; the question is whether it finds its neighbours), plus the speed of both.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realm.index.embeddings import read_manifest, write_manifest
from realm.index.live import SegmentRows, open_segments

KINDS = ("exact", "ivf", "hnsw", "ivfpq")


@dataclass(frozen=True)
class AnnConfig:
    """An ANN index: `kind` and its parameters (only those of the kind are used).

    Attributes:
        kind: "exact" (no ANN layer), "ivf" (IVF{lists},Flat), "hnsw" (HNSW{m}), "ivfpq" (IVF{lists},PQ{pq_bytes}).
        lists: IVF inverted lists (about 4 sqrt(N) to 16 sqrt(N)); 0 chooses 4 sqrt(N).
        probes: lists searched per query (IVF).
        m, ef_search, ef_construction: HNSW graph degree, search and build candidates.
        pq_bytes: bytes per vector of PQ codes (must divide D).
        rerank: candidates re-scored exactly from the embeddings (0: none; IVF-PQ wants ~100-400).
        mips_to_l2: the MIPS -> L2 augmentation (`realm.index.faiss_index`), for unnormalised vectors.
        train_size: rows sampled to train centroids / codebooks; seed: the sample's seed.
    """

    kind: str = "exact"
    lists: int = 0
    probes: int = 16
    m: int = 32
    ef_search: int = 128
    ef_construction: int = 200
    pq_bytes: int = 32
    rerank: int = 0
    mips_to_l2: bool = False
    train_size: int = 1 << 17
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"--kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        for name in ("probes", "m", "ef_search", "ef_construction", "pq_bytes", "train_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")

    def factory(self, count: int) -> str:
        lists = self.lists or max(1, int(4 * count**0.5))
        return {"ivf": f"IVF{lists},Flat", "hnsw": f"HNSW{self.m}", "ivfpq": f"IVF{lists},PQ{self.pq_bytes}"}[self.kind]

    def search_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"rerank": self.rerank}
        params.update({"nprobe": self.probes} if self.kind in ("ivf", "ivfpq") else {})
        params.update({"efSearch": self.ef_search} if self.kind == "hnsw" else {})
        return params


def build_args_for(meta: dict[str, Any]) -> str:
    """The `realm index build` options that rebuild the ANN layer described by a manifest's `index`."""
    ann = meta.get("ann")
    if meta.get("type") != "faiss" or not ann:
        return "" if meta.get("type") != "faiss" else f"  (then FaissIndex.build(..., {meta.get('factory')!r}))"
    flags = {"ivf": ("lists", "probes"), "hnsw": ("m", "ef_search", "ef_construction"),
             "ivfpq": ("lists", "probes", "pq_bytes", "rerank")}[ann["kind"]]  # fmt: skip
    args = "".join(f" --{f.replace('_', '-')} {ann[f]}" for f in flags)
    return f" --kind {ann['kind']}{args}" + (" --mips-to-l2" if ann.get("mips_to_l2") else "")


def build_ann(index_dir: str | os.PathLike[str], config: AnnConfig) -> Any:
    """Build (or with kind "exact", drop) the FAISS layer of an index directory; returns the index built
    (None for exact). Every row is added, so that ids stay row numbers for every kind; removed blocks are
    then taken out (IVF) or filtered at search (the others)."""
    from realm.index.faiss_index import FaissIndex

    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    if config.kind == "exact":
        manifest.index = {"type": "exact"}
        write_manifest(index_dir, manifest)
        return None
    parts, manifest = open_segments(index_dir)
    rows = parts[0][1] if len(parts) == 1 else SegmentRows(parts)
    from realm.index.live import removed_ids

    index = FaissIndex.build(
        rows, config.factory(manifest.count), train_size=config.train_size, seed=config.seed,
        ef_construction=config.ef_construction if config.kind == "hnsw" else None,
        mips_to_l2=config.mips_to_l2, **config.search_params(),
    )  # fmt: skip
    index.remove_rows(removed_ids(index_dir, manifest))
    name = f"faiss-{manifest.count:012d}-{config.kind}-{int(time.time() * 1000)}.index"
    meta = index.write_file(index_dir, name)
    meta["ann"] = {k: getattr(config, k) for k in AnnConfig.__dataclass_fields__}
    manifest.index = meta
    write_manifest(index_dir, manifest)  # the commit point
    return index


@dataclass
class RecallReport:
    k: int
    queries: int
    recall: float
    ann_ms_per_query: float
    exact_ms_per_query: float

    def summary(self) -> str:
        speed = self.exact_ms_per_query / max(self.ann_ms_per_query, 1e-9)
        return (
            f"recall@{self.k} {self.recall:.3f} against exact search on {self.queries:,} held-out queries; "
            f"{self.ann_ms_per_query:.3f} ms/query vs exact {self.exact_ms_per_query:.3f} ms/query ({speed:.1f}x)"
        )


def recall_at_k(found: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (ids [Q, k]; -1 never counts)."""
    hits = sum(len(set(f.tolist()) & set(t.tolist()) - {-1}) for f, t in zip(found, truth, strict=True))
    return hits / max(truth.numel(), 1)


def recall_check(index_dir: str | os.PathLike[str], k: int = 10, queries: int = 1000, seed: int = 1) -> RecallReport:
    """Recall@k of the directory's index (as `open_index` gives it) against exact search on held-out rows
    used as queries (outside the training sample; each query's own row is excluded from both lists)."""
    from realm.index import open_index
    from realm.index.exact import ExactIndex
    from realm.index.live import FilteredIndex, SegmentedIndex, removed_ids

    index_dir = Path(index_dir)
    ann = open_index(index_dir)
    parts, manifest = open_segments(index_dir)
    exact: Any = SegmentedIndex([ExactIndex(m, id_offset=first) for first, m in parts])
    removed = removed_ids(index_dir, manifest)
    if len(removed):
        exact = FilteredIndex(exact, removed)
    meta = manifest.index
    rng = np.random.default_rng(meta.get("seed", 0))
    train = set()
    if meta.get("train_size"):
        train = set(rng.choice(manifest.count, size=int(meta["train_size"]), replace=False).tolist())
    pool = np.setdiff1d(np.arange(manifest.count), np.fromiter(train, np.int64, len(train)))
    pool = np.setdiff1d(pool, removed)
    if len(pool) == 0:  # a small index trained on every row: no row is held out
        pool = np.setdiff1d(np.arange(manifest.count), removed)
    pick = np.sort(np.random.default_rng(seed).choice(pool, size=min(queries, len(pool)), replace=False))
    vectors = exact.reconstruct(torch.from_numpy(pick))  # [Q, D]
    own = torch.from_numpy(pick)[:, None]

    def timed(index: Any) -> tuple[torch.Tensor, float]:
        started = time.perf_counter()
        ids = torch.cat([index.search(vectors[i : i + 1], k + 1).ids for i in range(len(pick))])
        ms = (time.perf_counter() - started) * 1000 / max(len(pick), 1)
        keep = [row[row != o][:k] for row, o in zip(ids, own, strict=True)]
        return torch.stack(keep), ms

    truth, exact_ms = timed(exact)
    found, ann_ms = timed(ann)
    return RecallReport(k, len(pick), recall_at_k(found, truth), ann_ms, exact_ms)
