"""Compaction that reclaims removed blocks: the store rewritten without their text, the index without their rows.

# N blocks before, M kept, R removed (N = M + R)

Removal only hides blocks (tombstones: `realm.corpus.removal`, `realm.index.live`); `reclaim` drops them
from both directories. Block ids change: the kept blocks are renumbered 0..M-1 in their old order. The
mapping is explicit: `compacted-dropped.npy` (sorted int64 [R], the old ids of the dropped blocks) is
written into both new directories, and both manifests name it under "compacted" ({"from": the old store's
fingerprint, "dropped": file name, "removed": R, "blocks_before": N}); new id i is the i-th old id not
dropped. `read_id_map` returns that map ([M]: the old id of each new id) and `old_to_new` inverts it. (R
ids, not M: a map of every kept block would cost 8 bytes a block, more than a small removal frees.) The map
is relative to the store the compaction started from (a second compaction maps to the first one's ids).
The store's writer lock is held throughout: an append or removal meanwhile is refused, not lost.

Publication of the pair (two directories that must change together; the index names the store's content
fingerprint, which the rewrite changes):
1. the new store is written to the hidden sibling `.STORE.compact` (it appears whole: `create_store` renames
   a finished directory there), then the new index to `.INDEX.compact` (built in a temporary directory,
   renamed whole), its manifest naming the new store's fingerprint;
2. the store is exchanged with its staged copy (`renameat2(RENAME_EXCHANGE)`: one atomic step), then the
   index;
3. the staged names, which now hold the old pair, are deleted.
A kill before step 2 leaves the old pair (the next run discards the staged copies and starts again); after
the second exchange, the new pair. Between the two exchanges the store is new and the index old: opening
them is refused (`check_index`: another store's fingerprint), and the next `realm index compact` recognises
the state from the manifests and finishes the publication. No state ever pairs an index with a store it
was not built from.

A FAISS index in the index directory is rebuilt over the kept rows (same factory, parameters, sample size
and seed). A BM25 index is rebuilt when its directory is given (`sparse_dir`); otherwise the result names
the command, and until then a hybrid over the new store refuses it with the same command.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from realm.atomic import (
    atomic_save_npy,
    exchange_paths,
    fault_point,
    fsync_dir,
    remove_stale_temporaries,
    temporary_sibling,
)
from realm.corpus import BlockStore
from realm.corpus.segments import MANIFEST_NAME, write_json_atomic
from realm.corpus.segments import read_manifest as read_store_manifest
from realm.corpus.writer import _writer_lock, create_store  # the store's one writer lock
from realm.index.embeddings import EMBEDDINGS_NAME, IndexManifest, read_manifest, write_manifest
from realm.index.live import SegmentRows, open_segments, removed_ids

logger = logging.getLogger(__name__)

COMPACTED_KEY = "compacted"
DROPPED_NAME = "compacted-dropped.npy"
COPY_ROWS = 1 << 16  # rows (and blocks) copied per step: memory stays bounded for any N


@dataclass
class ReclaimResult:
    """What `reclaim` did (for the CLI's report)."""

    blocks_before: int
    blocks_after: int
    removed: int
    store_bytes: tuple[int, int]  # segment bytes before, after
    index_bytes: tuple[int, int]  # matrix (+ FAISS file) bytes before, after
    finished_interrupted: bool = False  # an interrupted compaction's publication was completed first
    notes: list[str] = field(default_factory=list)


def staged(path: Path) -> Path:
    return path.with_name(f".{path.name}.compact")


def read_id_map(directory: str | os.PathLike[str]) -> np.ndarray | None:
    """The old id of each block id of a compacted store or index ([M] int64), or None if never compacted."""
    directory = Path(directory)
    data = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    entry = data.get(COMPACTED_KEY) if isinstance(data, dict) else None
    if not entry:
        return None
    file, before = directory / entry["dropped"], int(entry["blocks_before"])
    dropped = np.load(file, allow_pickle=False)
    if dropped.dtype != np.int64 or dropped.ndim != 1 or len(dropped) != int(entry["removed"]) or (
        len(dropped) and (np.any(np.diff(dropped) <= 0) or dropped[0] < 0 or dropped[-1] >= before)
    ):
        raise ValueError(f"{file} does not hold the {entry['removed']} sorted ids its manifest says; the directory is damaged")
    return np.setdiff1d(np.arange(before, dtype=np.int64), dropped)


def old_to_new(id_map: np.ndarray, old_ids: np.ndarray) -> np.ndarray:
    """New ids of `old_ids` under `id_map` (from `read_id_map`); -1 for the blocks compaction dropped."""
    old_ids = np.asarray(old_ids, dtype=np.int64)
    pos = np.clip(np.searchsorted(id_map, old_ids), 0, max(len(id_map) - 1, 0))
    return np.where((len(id_map) > 0) & (id_map[pos] == old_ids), pos, -1)


def reclaim(
    store_dir: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    *,
    sparse_dir: str | os.PathLike[str] | None = None,
) -> ReclaimResult:
    """Rewrite the store without its removed blocks and the index without their rows (see the module doc).

    Removed means removed in the store or in the index (a `realm index remove` killed between its two
    commits leaves the index behind; both are dropped). Safe to run again after a kill at any point.

    Raises:
        ValueError: an index that is not this store's (other fingerprint or size), or of a kind that cannot
            be rebuilt here (the message names the command).
    """
    store_dir, index_dir = Path(store_dir), Path(index_dir)
    with _writer_lock(store_dir):  # no append or removal may land in the store while it is rewritten
        return _reclaim(store_dir, index_dir, sparse_dir)


def _reclaim(store_dir: Path, index_dir: Path, sparse_dir: str | os.PathLike[str] | None) -> ReclaimResult:
    finished = _finish_interrupted(store_dir, index_dir)
    store = BlockStore.open(store_dir)
    manifest = read_manifest(index_dir)
    rebuild = f"realm index build --store {store_dir} --embedder <embedder> --out {index_dir}"
    if manifest.count < len(store) and manifest.extra.get("store_fingerprint") is not None:
        raise ValueError(
            f"{index_dir} has {manifest.count:,} rows but {store_dir} has {len(store):,} blocks: finish the pending "
            "`realm index add` first (run it again), then compact"
        )
    if manifest.count != len(store) or manifest.extra.get("store_fingerprint") != store.fingerprint:
        raise ValueError(
            f"{index_dir} was not built from {store_dir} (its size or recorded store fingerprint differ), so "
            f"compaction cannot keep the two in step; rebuild it with: {rebuild}"
        )
    kind = manifest.index.get("type")
    if kind not in (None, "exact", "faiss"):
        raise ValueError(f"{index_dir} is a {kind} index, which compaction cannot rewrite; rebuild it with: {rebuild}")
    gone = np.union1d(store.removed_ids, removed_ids(index_dir, manifest)).astype(np.int64)
    before = (_store_bytes(store_dir), _index_bytes(index_dir))
    result = ReclaimResult(len(store), len(store), 0, (before[0], before[0]), (before[1], before[1]), finished)
    if len(gone) == 0:
        return result
    if len(gone) == len(store):
        raise ValueError(f"every block of {store_dir} is removed; compaction would leave an empty store")
    keep = np.setdiff1d(np.arange(len(store), dtype=np.int64), gone)
    for path in (staged(store_dir), staged(index_dir)):  # left by a run killed before its first exchange
        shutil.rmtree(path, ignore_errors=True)
        remove_stale_temporaries(path)
    compacted = {"from": store.fingerprint, "dropped": DROPPED_NAME, "removed": int(len(gone)), "blocks_before": len(store)}
    new_store = _stage_store(store, keep, gone, staged(store_dir), compacted)
    _stage_index(index_dir, manifest, keep, gone, staged(index_dir), new_store, compacted)
    _publish(store_dir, index_dir)
    result.blocks_after, result.removed = len(keep), int(len(gone))
    result.store_bytes = (before[0], _store_bytes(store_dir))
    result.index_bytes = (before[1], _index_bytes(index_dir))
    if sparse_dir is not None:
        from realm.index.sparse import build_sparse_index

        build_sparse_index(store_dir, sparse_dir, progress=False)
        result.notes.append(f"BM25 index {sparse_dir} rebuilt over the compacted store")
    else:
        result.notes.append(
            "a BM25 index of this store no longer matches it (ids changed); rebuild it with: "
            f"realm index build-sparse --store {store_dir} --out <sparse>"
        )
    return result


# -- staging ------------------------------------------------------------------------------------------------


def _kept_blocks(store: BlockStore, keep: np.ndarray) -> Iterator[Any]:
    for lo in range(0, len(keep), COPY_ROWS):
        yield from store.get(keep[lo : lo + COPY_ROWS])


def _stage_store(
    store: BlockStore, keep: np.ndarray, gone: np.ndarray, path: Path, compacted: dict[str, Any]
) -> BlockStore:
    old = store.manifest
    create_store(
        path, _kept_blocks(store, keep), store.load_tokenizer(), max_block_tokens=old.get("max_block_tokens"),
        overwrite=False, source_fingerprint=old.get("source_fingerprint"),
        build_info={"compacted_from": store.fingerprint}, batch_rows=int(old["batch_rows"]),
    )  # fmt: skip
    atomic_save_npy(path / DROPPED_NAME, gone)
    manifest = read_store_manifest(path)
    manifest[COMPACTED_KEY] = compacted
    write_json_atomic(path / MANIFEST_NAME, manifest)
    fault_point("compact: store staged")
    return BlockStore.open(path)


def _stage_index(
    index_dir: Path,
    manifest: IndexManifest,
    keep: np.ndarray,
    gone: np.ndarray,
    path: Path,
    store: BlockStore,
    compacted: dict[str, Any],
) -> None:
    parts, _ = open_segments(index_dir)
    rows = SegmentRows(parts)
    tmp = temporary_sibling(path)
    tmp.mkdir()
    try:
        out = np.lib.format.open_memmap(tmp / EMBEDDINGS_NAME, mode="w+", dtype=manifest.dtype,
                                        shape=(len(keep), manifest.dim))  # fmt: skip
        for lo in range(0, len(keep), COPY_ROWS):  # the very bytes of the kept rows, in order
            out[lo : lo + COPY_ROWS] = rows.take(keep[lo : lo + COPY_ROWS]).astype(manifest.dtype)
        out.flush()
        del out
        atomic_save_npy(tmp / DROPPED_NAME, gone)
        extra = {k: v for k, v in manifest.extra.items() if k not in ("segments", "removed", "base_file")}
        extra["store_fingerprint"] = store.fingerprint
        if isinstance(extra.get("build_plan"), dict):  # a later `realm index build` resumes against these
            extra["build_plan"] = {**extra["build_plan"], "count": len(keep), "store_fingerprint": store.fingerprint}
        extra[COMPACTED_KEY] = compacted
        new = IndexManifest(len(keep), manifest.dim, manifest.dtype, dict(manifest.index), extra)
        if manifest.index.get("type") == "faiss":
            new.index = _rebuild_faiss(tmp, manifest.index)
        write_manifest(tmp, new)
        for file in tmp.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        fault_point("compact: index staged")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rebuild_faiss(directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
    from realm.index.faiss_index import FaissIndex

    matrix = np.load(directory / EMBEDDINGS_NAME, mmap_mode="r")
    build = {"ef_construction": meta.get("ef_construction"), "mips_to_l2": meta.get("max_norm") is not None}
    if meta.get("train_size"):
        build["train_size"] = int(meta["train_size"])
    index = FaissIndex.build(matrix, meta["factory"], seed=int(meta.get("seed", 0)), **build, **meta.get("params", {}))
    return index.write_file(directory, f"faiss-{len(matrix):012d}-000000000000.index")


# -- publication --------------------------------------------------------------------------------------------


def _exchange(live: Path, new: Path) -> None:
    if not exchange_paths(new, live):
        raise OSError(
            f"this filesystem cannot swap {live} and {new} in one step (renameat2 RENAME_EXCHANGE), which "
            "compaction needs to publish the store and the index safely; compact on a local Linux filesystem"
        )
    fsync_dir(live.parent)


def _publish(store_dir: Path, index_dir: Path) -> None:
    _exchange(store_dir, staged(store_dir))
    fault_point("compact: store exchanged")
    _exchange(index_dir, staged(index_dir))
    fault_point("compact: index exchanged")
    for path in (staged(store_dir), staged(index_dir)):  # the old pair
        shutil.rmtree(path, ignore_errors=True)


def _finish_interrupted(store_dir: Path, index_dir: Path) -> bool:
    """Complete a publication a kill interrupted between its two exchanges, and delete what a kill after them
    left. True if the index had to be exchanged."""
    if not (store_dir / MANIFEST_NAME).is_file():
        return False
    entry = read_store_manifest(store_dir).get(COMPACTED_KEY)
    if not entry:
        return False
    fingerprint = read_store_manifest(store_dir)["fingerprint"]
    index_from = read_manifest(index_dir).extra.get("store_fingerprint")
    exchanged = False
    if index_from == entry["from"]:
        if not staged(index_dir).is_dir() or read_manifest(staged(index_dir)).extra.get("store_fingerprint") != fingerprint:
            raise ValueError(
                f"{store_dir} was compacted but {staged(index_dir)} is not its index; rebuild the index with: "
                f"realm index build --store {store_dir} --embedder <embedder> --out {index_dir}"
            )
        _exchange(index_dir, staged(index_dir))
        fault_point("compact: index exchanged")
        logger.info("finished an interrupted compaction of %s and %s", store_dir, index_dir)
        exchanged = True
    if read_manifest(index_dir).extra.get("store_fingerprint") == fingerprint:
        for path in (staged(store_dir), staged(index_dir)):
            shutil.rmtree(path, ignore_errors=True)
    return exchanged


def _store_bytes(store_dir: Path) -> int:
    manifest = read_store_manifest(store_dir)
    return sum((store_dir / entry["file"]).stat().st_size for entry in manifest["segments"])


def _index_bytes(index_dir: Path) -> int:
    manifest = read_manifest(index_dir)
    parts, _ = open_segments(index_dir)
    size = sum(m.nbytes for _, m in parts)
    if manifest.index.get("file"):
        size += (index_dir / manifest.index["file"]).stat().st_size
    return size

