"""Removed documents of a block store: a tombstone set, and `compact` that drops their text later.

A removal never rewrites a segment: the ids of the removed blocks go to a new file
`removed-<count>-<hash>.npy` (sorted int64, written atomically) and the store manifest, rewritten
atomically last, names it under "removed" ({"file", "count"}). Block ids never change. The content
fingerprint stays that of the segments, so an index built from the store still matches it; the index
keeps its own copy of the set (`realm.index.live`), and the BM25 index applies the store's.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from realm.atomic import atomic_save_npy
from realm.corpus.segments import MANIFEST_NAME, read_manifest, write_json_atomic
from realm.corpus.writer import _writer_lock  # the store's one writer lock

REMOVED_KEY = "removed"


def store_removed_ids(path: str | os.PathLike[str], manifest: dict[str, Any]) -> np.ndarray:
    """Sorted int64 ids of a store's removed blocks (empty if none)."""
    entry = manifest.get(REMOVED_KEY)
    if not entry:
        return np.zeros(0, dtype=np.int64)
    file = Path(path) / entry["file"]
    ids = np.load(file, allow_pickle=False)
    if ids.dtype != np.int64 or ids.ndim != 1 or len(ids) != int(entry["count"]):
        raise ValueError(f"{file} does not hold the {entry['count']} removed block ids its manifest says; the store is damaged")
    return ids


def find_blocks(
    store: Any, titles: Iterable[str] = (), doc_ids: Iterable[int] = (), *, below: int | None = None
) -> tuple[np.ndarray, list[str], list[int]]:
    """Block ids of the documents named by title or document id (scans those two columns once).

    Args:
        store: a `BlockStore`.
        titles, doc_ids: the documents (a title names every document with that title).
        below: only blocks with ids below this (e.g. the blocks that existed before an addition).
    Returns:
        (sorted block ids, titles not found, document ids not found).
    """
    titles, doc_ids = set(titles), {int(d) for d in doc_ids}
    found: list[np.ndarray] = []
    seen_titles: set[str] = set()
    seen_docs: set[int] = set()
    for batch in store.iter_batches(columns=("title", "doc_id")):
        ids = np.arange(batch.start, batch.stop, dtype=np.int64)
        docs = np.asarray(batch.doc_ids, dtype=np.int64)
        hit = np.isin(docs, list(doc_ids)) if doc_ids else np.zeros(len(ids), bool)
        if titles:
            by_title = np.asarray([t in titles for t in batch.titles], dtype=bool)
            seen_titles.update(t for t, h in zip(batch.titles, by_title, strict=True) if h)
            hit |= by_title
        seen_docs.update(int(d) for d in docs[np.isin(docs, list(doc_ids))]) if doc_ids else None
        if below is not None:
            hit &= ids < below
        found.append(ids[hit])
    blocks = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    return blocks, sorted(titles - seen_titles), sorted(doc_ids - seen_docs)


def removed_file_name(ids: np.ndarray) -> str:
    return f"removed-{len(ids):012d}-{hashlib.sha256(ids.tobytes()).hexdigest()[:12]}.npy"


def remove_blocks(path: str | os.PathLike[str], block_ids: np.ndarray) -> int:
    """Add `block_ids` to the store's removed set (idempotent). Returns how many were newly removed."""
    path = Path(path)
    with _writer_lock(path):  # not while an append or a compaction rewrites the store
        return _remove_blocks(path, block_ids)


def _remove_blocks(path: Path, block_ids: np.ndarray) -> int:
    manifest = read_manifest(path)
    old = store_removed_ids(path, manifest)
    ids = np.union1d(old, np.asarray(block_ids, dtype=np.int64)).astype(np.int64)
    if len(ids) == len(old):
        return 0
    if len(ids) and (ids[0] < 0 or ids[-1] >= int(manifest["num_blocks"])):
        raise IndexError(f"block ids must be in [0, {manifest['num_blocks']}) for {path}")
    name = removed_file_name(ids)
    atomic_save_npy(path / name, ids)
    manifest[REMOVED_KEY] = {"file": name, "count": int(len(ids))}
    write_json_atomic(path / MANIFEST_NAME, manifest)  # the commit point
    return int(len(ids) - len(old))


def sweep_removed_files(path: Path, keep: str | None) -> int:
    """Delete tombstone files the manifest no longer names (left by earlier removals). Returns how many."""
    count = 0
    for file in path.glob("removed-*.npy"):
        if file.name != keep:
            file.unlink()
            count += 1
    return count
