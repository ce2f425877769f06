"""Embed every block of a store with a `RealmEmbedder`: resumable, split across processes, deterministic.

The corpus is cut into fixed chunks of `chunk_size` blocks. A chunk is the unit of work, of resume and of
the split across ranks (rank r takes chunks r, r + W, ...): its embeddings depend only on its blocks
(length-sorted inside the chunk, batched the same way whatever the number of processes), and each
finished chunk is written atomically under `<out>/.build/`. A killed build started again skips the chunks
that are done; when all are, the main rank assembles them into `embeddings.npy` and writes the manifest
last. An interrupted run therefore resumes to the same bytes as an uninterrupted one.

Shapes: N blocks, D retriever_proj_size, L tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from realm.atomic import atomic_save_npy, atomic_write_text
from realm.distributed import DistributedContext, rank_device
from realm.index.base import check_index_size
from realm.index.embeddings import (
    IndexManifest,
    base_file,
    create_embeddings,
    finish_embeddings,
    read_manifest,
)
from realm.inputs import block_inputs
from realm.modeling.checkpoint import check_vocabulary, module_fingerprint, resolve_weights
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.inference import quantize_trunk

logger = logging.getLogger(__name__)

BUILD_DIR = ".build"
PLAN_NAME = "plan.json"


class EncodedBlocks(Protocol):
    """What the builder needs from a block store."""

    def __len__(self) -> int: ...

    def title_ids(self, ids: Sequence[int]) -> list[list[int]]: ...

    def token_ids(self, ids: Sequence[int]) -> list[list[int]]: ...


@dataclass(frozen=True)
class IndexBuildConfig:
    """How to embed a corpus.

    Attributes:
        chunk_size: blocks per chunk: the unit of resume and of the split across processes. Changing it
            changes the batching, so a build resumes only with the chunk size it started with.
        batch_size: blocks per embedder forward pass.
        max_length: tokens per block input `[CLS] title [SEP] text [SEP]` (longer texts are truncated).
        storage_dtype: "float32" or "float16" for `embeddings.npy`.
        compute_dtype: "float32"; "bfloat16" for autocast (faster on hardware that has it); "int8" for the
            trunk's linear layers quantised to dynamic int8 (CPU; `realm.modeling.inference`; faster, not
            bit-equal to float32: measured in benchmarks/bench_e2e.py).
    """

    chunk_size: int = 4096
    batch_size: int = 64
    max_length: int = 288
    storage_dtype: str = "float32"
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.storage_dtype not in ("float32", "float16"):
            raise ValueError(f"storage_dtype must be float32 or float16, not {self.storage_dtype!r}")
        if self.compute_dtype not in ("float32", "bfloat16", "int8"):
            raise ValueError(f"compute_dtype must be float32, bfloat16 or int8, not {self.compute_dtype!r}")
        if min(self.chunk_size, self.batch_size, self.max_length) < 1:
            raise ValueError("chunk_size, batch_size and max_length must be positive")


def file_fingerprint(paths: Sequence[Path]) -> str:
    """sha256 over the files' names and contents (streamed)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def embedder_fingerprint(embedder_path: str | os.PathLike[str]) -> str:
    path = Path(embedder_path)
    return file_fingerprint([path / "config.json", resolve_weights(path)])


def check_index(
    index_dir: str | os.PathLike[str],
    store: EncodedBlocks,
    *,
    store_dir: str | os.PathLike[str] | None = None,
    embedder_path: str | os.PathLike[str] | None = None,
) -> IndexManifest:
    """Refuse an index that was not built from this block store (and, if given, this embedder).

    Indexes made elsewhere (e.g. from the port's `block_emb`) carry no fingerprints; only their size is checked.
    """
    manifest = read_manifest(index_dir)
    rebuild = (
        f"realm index build --store {store_dir or '<store>'} --embedder {embedder_path or '<embedder>'} "
        f"--out {index_dir}"
    )
    built_from = manifest.extra.get("store_fingerprint")
    compacted = (getattr(store, "manifest", None) or {}).get("compacted") or {}
    if built_from is not None and compacted.get("from") == built_from:  # killed between the two exchanges
        raise ValueError(
            f"{store_dir or 'the store'} was compacted but {index_dir} not yet (an interrupted `realm index "
            f"compact`); finish it with: realm index compact --store {store_dir or '<store>'} --index {index_dir}"
        )
    check_index_size(manifest.count, len(store), name=str(index_dir), rebuild=rebuild)
    fingerprint = getattr(store, "fingerprint", None)
    if built_from is not None and fingerprint is not None and built_from != fingerprint:
        raise ValueError(f"{index_dir} was built from a different block store; rebuild it with: {rebuild}")
    built_with = manifest.extra.get("embedder_fingerprint")
    if (
        embedder_path is not None
        and built_with is not None
        and built_with != embedder_fingerprint(embedder_path)
    ):
        raise ValueError(
            f"{index_dir} was built with a different embedder than {embedder_path}; rebuild it with: {rebuild}"
        )
    return manifest


@torch.inference_mode()
def embed_blocks(
    embedder: RealmEmbedder,
    sequences: list[tuple[list[int], list[int]]],
    batch_size: int,
    pad_id: int,
    compute_dtype: str = "float32",
) -> np.ndarray:
    """Embed (ids, token types) sequences; batches are formed from length-sorted sequences.

    Returns:
        [len(sequences), D] float32, in the input order.
    """
    device = embedder.device
    order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i][0]), i))
    out = np.empty((len(sequences), embedder.config.retriever_proj_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(sequences[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        types = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            seq_ids, seq_types = sequences[i]
            ids[row, : len(seq_ids)] = torch.tensor(seq_ids)
            types[row, : len(seq_types)] = torch.tensor(seq_types)
            mask[row, : len(seq_ids)] = 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=compute_dtype == "bfloat16"):
            emb = embedder(
                ids.to(device), attention_mask=mask.to(device), token_type_ids=types.to(device)
            ).projected_score
        out[batch] = emb.float().cpu().numpy()  # [b, D]
    return out


@dataclass
class BuildResult:
    out_dir: Path
    count: int
    chunks_embedded: int
    chunks_skipped: int
    seconds: float


def build_index(
    store: EncodedBlocks,
    embedder_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: IndexBuildConfig | None = None,
    *,
    store_fingerprint: str,
    special_ids: tuple[int, int, int],
    device: torch.device | str | None = None,
    context: DistributedContext | None = None,
    progress: bool = True,
    provenance: dict[str, Any] | None = None,
    poll_seconds: float = 2.0,
) -> BuildResult:
    """Embed every block of `store` into `<out_dir>/embeddings.npy` (+ `manifest.json`).

    Call it from every rank of a torchrun job (or from a single process). Each rank embeds its share of
    the chunks; the main rank then waits for the others' chunk files and assembles the matrix.

    Args:
        store: the blocks (see `EncodedBlocks`).
        embedder_path: a `RealmEmbedder` checkpoint directory.
        out_dir: the index directory to write.
        config: build options.
        store_fingerprint: identifies the store's content; recorded and checked on resume.
        special_ids: (cls, sep, pad) token ids of the tokenizer the store was built with.
        device: where to embed (each rank uses its own CUDA device when this is "cuda").
        provenance: extra fields for the manifest (e.g. the store path).
    """
    config = config or IndexBuildConfig()
    context = context or DistributedContext.current()
    started = time.monotonic()
    out_dir = Path(out_dir)
    work = out_dir / BUILD_DIR
    n = len(store)
    num_chunks = math.ceil(n / config.chunk_size)
    plan = {
        "count": n,
        "build": asdict(config),
        "store_fingerprint": store_fingerprint,
        "embedder_fingerprint": embedder_fingerprint(embedder_path),
    }
    if _finished(out_dir, plan):
        logger.info("%s is already built from this store and embedder", out_dir)
        return BuildResult(out_dir, n, 0, num_chunks, time.monotonic() - started)
    _agree_on_plan(work, plan, context, poll_seconds)

    embedder = RealmEmbedder.from_pretrained(embedder_path, device=rank_device(device, context))
    store_manifest = getattr(store, "manifest", None)
    if store_manifest is not None:
        vocab = store_manifest["tokenizer"]["vocab_size"]
        check_vocabulary(vocab, getattr(store, "path", "the store"), embedder.config, embedder_path)
    # The embedder's tensors, whatever file they came from: `realm.verify.check_corpus` compares them.
    provenance = {**(provenance or {}), "embedder_weights_fingerprint": module_fingerprint(embedder)}
    compute_dtype = config.compute_dtype
    if compute_dtype == "int8":
        if embedder.device.type != "cpu":
            raise ValueError("compute_dtype int8 is for CPUs; on a GPU use bfloat16")
        quantize_trunk(embedder.realm.encoder)
        compute_dtype = "float32"  # the int8 layers take float32 activations
    cls_id, sep_id, pad_id = special_ids
    mine = [
        i for i in range(context.rank, num_chunks, context.world_size) if not _chunk_path(work, i).exists()
    ]
    skipped = len(range(context.rank, num_chunks, context.world_size)) - len(mine)
    bar = _progress_bar(sum(_chunk_len(i, n, config) for i in mine), progress and context.is_main, context)
    for i in mine:
        ids = list(range(i * config.chunk_size, i * config.chunk_size + _chunk_len(i, n, config)))
        sequences = [
            block_inputs(t, b, cls_id, sep_id, config.max_length)
            for t, b in zip(store.title_ids(ids), store.token_ids(ids), strict=True)
        ]
        emb = embed_blocks(embedder, sequences, config.batch_size, pad_id, compute_dtype)
        emb = emb.astype(config.storage_dtype)
        atomic_save_npy(_chunk_path(work, i), emb)
        bar.update(len(ids))
    bar.close()

    if context.is_main:
        _wait_for_chunks(work, num_chunks, poll_seconds)
        _assemble(
            out_dir, work, plan, num_chunks, embedder.config.retriever_proj_size, config, provenance or {}
        )
    else:
        _wait_for(lambda: _finished(out_dir, plan), poll_seconds)
    return BuildResult(out_dir, n, len(mine), skipped, time.monotonic() - started)


# -- the work directory ---------------------------------------------------------------------------


def _chunk_path(work: Path, i: int) -> Path:
    return work / f"chunk-{i:06d}.npy"


def _chunk_len(i: int, n: int, config: IndexBuildConfig) -> int:
    return min(config.chunk_size, n - i * config.chunk_size)


def _finished(out_dir: Path, plan: dict[str, Any]) -> bool:
    try:
        manifest = read_manifest(out_dir)
    except (FileNotFoundError, ValueError):
        return False
    # after `realm index add` / `compact` the rows live in segments / a merged file the manifest names
    return (out_dir / base_file(manifest)).is_file() and manifest.extra.get("build_plan") == plan


def _agree_on_plan(
    work: Path, plan: dict[str, Any], context: DistributedContext, poll_seconds: float
) -> None:
    """The main rank records the plan; a leftover work directory from a different build is refused."""
    path = work / PLAN_NAME
    if context.is_main:
        if path.is_file():
            previous = json.loads(path.read_text())
            if previous != plan:
                changed = sorted(k for k in plan if previous.get(k) != plan[k])
                raise RuntimeError(
                    f"{work} holds an interrupted build with different {', '.join(changed)}; to start over, "
                    f"delete it (rm -r {work}) or resume with the same store, embedder and options"
                )
        else:
            work.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(plan, indent=2, sort_keys=True))
    else:
        _wait_for(lambda: path.is_file() and json.loads(path.read_text()) == plan, poll_seconds)


def _wait_for(condition: Any, poll_seconds: float) -> None:
    while not condition():
        time.sleep(poll_seconds)


def _wait_for_chunks(work: Path, num_chunks: int, poll_seconds: float) -> None:
    last_log = 0.0
    while missing := [i for i in range(num_chunks) if not _chunk_path(work, i).exists()]:
        if time.monotonic() - last_log > 60:
            logger.info("waiting for %d chunk(s) from other ranks, e.g. %s", len(missing), missing[:5])
            last_log = time.monotonic()
        time.sleep(poll_seconds)


def _assemble(
    out_dir: Path,
    work: Path,
    plan: dict[str, Any],
    num_chunks: int,
    dim: int,
    config: IndexBuildConfig,
    provenance: dict[str, Any],
) -> None:
    """Chunks -> `embeddings.npy` (atomically), then the manifest, then remove the work directory."""
    n = plan["count"]
    matrix = create_embeddings(out_dir, n, dim, config.storage_dtype)
    for i in range(num_chunks):
        start = i * config.chunk_size
        chunk = np.load(_chunk_path(work, i))
        matrix[start : start + len(chunk)] = chunk
    matrix.flush()
    del matrix
    extra = {
        "store_fingerprint": plan["store_fingerprint"],
        "embedder_fingerprint": plan["embedder_fingerprint"],
        "build_plan": plan,
        **provenance,
    }
    finish_embeddings(
        out_dir, IndexManifest(n, dim, config.storage_dtype, index={"type": "exact"}, extra=extra)
    )
    shutil.rmtree(work, ignore_errors=True)


def _progress_bar(total: int, enabled: bool, context: DistributedContext) -> Any:
    from tqdm.auto import tqdm

    desc = (
        "embedding blocks"
        if not context.is_distributed
        else f"embedding blocks (rank 0 of {context.world_size})"
    )
    return tqdm(total=total, disable=not enabled, unit="block", desc=desc, smoothing=0.1)
