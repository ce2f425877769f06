"""Change a published index in place: publish an appended segment and/or removed blocks in one manifest
write; remove documents; compact. Layout and reading: `realm.index.live`.

Every change writes its data files first (a segment directory, a tombstone file, a FAISS index under a
new name), then the manifest, atomically: that rename is the commit. Readers that opened the old state
keep it (their memmaps and FAISS copy stay valid); `realm serve` picks the new one up on reload.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from realm.corpus.segments import file_sha256
from realm.index.embeddings import EMBEDDINGS_NAME, IndexManifest, base_file, read_manifest, write_manifest
from realm.index.live import (
    SEGMENTS_DIR,
    SegmentRows,
    open_segments,
    removed_ids,
    segment_entries,
    write_removed,
)

logger = logging.getLogger(__name__)

# Removed rows still in a graph / flat index above this fraction: a rebuild pays (searches fetch k + R).
REBUILD_FRACTION = 0.1


@dataclass
class IndexChange:
    """What a publication did to the index (for the CLI's report)."""

    count: int
    removed: int
    faiss: str | None = None  # "updated (IVF: rows added / removed)" or "filtered at search (HNSW...)"
    rebuild_advice: str | None = None


def publish_change(
    index_dir: str | os.PathLike[str],
    *,
    segment: Path | None = None,
    first: int | None = None,
    remove: np.ndarray | None = None,
    extra: dict[str, Any] | None = None,
    rebuild_command: str = "realm index build --store STORE --embedder EMBEDDER --out INDEX --kind KIND",
) -> IndexChange:
    """Commit an appended segment (a finished index directory under `segments/`) and/or removed block ids.

    A FAISS index in the directory is updated to match (rows added; IVF rows removed) and written under a
    new file name before the manifest names it. Idempotent: a segment already listed is not listed again,
    ids already removed are not counted twice.
    """
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    segments = segment_entries(manifest)
    new_rows = None
    if segment is not None and not any(int(s["first"]) == first for s in segments):
        if first != manifest.count:
            raise ValueError(f"a segment starting at block {first} does not follow the index's {manifest.count:,} rows")
        seg_manifest = read_manifest(segment)
        path = segment / EMBEDDINGS_NAME
        segments.append({"dir": segment.name, "first": first, "count": seg_manifest.count, "sha256": file_sha256(path)})
        new_rows = np.load(path, mmap_mode="r")
        manifest.count += seg_manifest.count
    old_removed = removed_ids(index_dir, manifest)
    all_removed = np.union1d(old_removed, remove if remove is not None else []).astype(np.int64)
    newly = np.setdiff1d(all_removed, old_removed)
    change = IndexChange(manifest.count, int(len(all_removed)))
    if manifest.index.get("type") == "faiss" and (new_rows is not None or len(newly)):
        change.faiss, change.rebuild_advice = _update_faiss(
            index_dir, manifest, segments, new_rows, first, newly, all_removed, rebuild_command
        )
    if len(newly):
        manifest.extra["removed"] = write_removed(index_dir, all_removed)
    manifest.extra["segments"] = segments
    manifest.extra.update(extra or {})
    write_manifest(index_dir, manifest)  # the commit point
    return change


def _update_faiss(
    index_dir: Path,
    manifest: IndexManifest,
    segments: list[dict[str, Any]],
    new_rows: np.ndarray | None,
    first: int | None,
    newly: np.ndarray,
    all_removed: np.ndarray,
    rebuild_command: str,
) -> tuple[str, str | None]:
    from realm.index.faiss_index import FaissIndex, import_faiss

    faiss = import_faiss()
    meta = manifest.index
    base, _ = open_segments(index_dir)  # the rows as currently published (before this change)
    index = FaissIndex(
        faiss.read_index(str(index_dir / meta["file"])), SegmentRows(base), meta["factory"],
        params=meta.get("params", {}),
        build={k: meta[k] for k in ("train_size", "seed", "ef_construction", "ids_removed", "max_norm") if k in meta},
    )  # fmt: skip
    if new_rows is not None:
        index.add_rows(new_rows, int(first))  # type: ignore[arg-type]
    gone = index.remove_rows(newly)
    name = f"faiss-{manifest.count:012d}-{len(all_removed):012d}.index"
    manifest.index = index.write_file(index_dir, name)
    done = "rows added" if new_rows is not None else ""
    if gone:
        done = f"{done}, {gone:,} rows removed" if done else f"{gone:,} rows removed"
    kept = int(len(all_removed)) - index.ids_removed  # removed rows still inside the FAISS index
    advice = None
    if kept:
        share = kept / max(manifest.count, 1)
        done = f"{done}; {kept:,} removed rows stay in the {meta['factory']} index and are filtered at search".lstrip("; ")
        if share > REBUILD_FRACTION:
            advice = (
                f"{share:.0%} of the {meta['factory']} index is removed rows (each search fetches k + {kept:,}): "
                f"a rebuild pays: {rebuild_command}"
            )
    return f"{meta['factory']}: {done}", advice


def sweep(index_dir: str | os.PathLike[str]) -> int:
    """Delete files of the index directory the manifest no longer names (old tombstones, FAISS files,
    unlisted segments from an interrupted add). Returns how many entries were deleted."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    keep = {manifest.extra.get("removed", {}).get("file"), manifest.index.get("file"), base_file(manifest)}
    listed = {s["dir"] for s in segment_entries(manifest)}
    count = 0
    for file in [*index_dir.glob("removed-*.npy"), *index_dir.glob("faiss-*.index"), *index_dir.glob("embeddings*.npy")]:
        if file.name not in keep:
            file.unlink()
            count += 1
    folder = index_dir / SEGMENTS_DIR
    if folder.is_dir():
        for seg in folder.iterdir():
            if seg.name not in listed and not _in_progress(seg):
                shutil.rmtree(seg)
                count += 1
    return count


def _in_progress(segment: Path) -> bool:
    """A segment still being embedded (an interrupted `realm index add` resumes into it)."""
    return (segment / ".build").is_dir()


def compact_index(index_dir: str | os.PathLike[str]) -> int:
    """Merge every segment into one `embeddings.npy` (ids unchanged: every row is kept, removed ones too),
    rewrite the manifest, then sweep the files no longer named. Returns the number of segments merged.

    This rewrites the whole matrix once (O(N)); run it when segments have piled up, not after each add."""
    index_dir = Path(index_dir)
    parts, manifest = open_segments(index_dir)
    if len(parts) > 1:
        # A new file under a new name, named by the manifest last: a reader never sees a half-merged state.
        name = f"embeddings-{manifest.count:012d}.npy"
        out = np.lib.format.open_memmap(index_dir / f".{name}.partial", mode="w+", dtype=manifest.dtype,
                                        shape=(manifest.count, manifest.dim))  # fmt: skip
        step = 1 << 18
        for first, matrix in parts:
            for lo in range(0, len(matrix), step):
                rows = matrix[lo : lo + step]
                out[first + lo : first + lo + len(rows)] = rows
        out.flush()
        del out, parts
        with open(index_dir / f".{name}.partial", "rb+") as f:
            os.fsync(f.fileno())
        os.replace(index_dir / f".{name}.partial", index_dir / name)
        merged = len(segment_entries(manifest))
        manifest.extra["segments"] = []
        manifest.extra["base_file"] = name
        write_manifest(index_dir, manifest)  # the commit point
    else:
        merged = 0
    sweep(index_dir)
    return merged


@dataclass
class RemoveResult:
    blocks: int  # blocks of the named documents (removed now or before)
    newly_removed: int
    missing_titles: list[str]
    missing_doc_ids: list[int]
    change: IndexChange | None


def remove_documents(
    store_dir: str | os.PathLike[str],
    index_dir: str | os.PathLike[str] | None,
    *,
    titles: Sequence[str] = (),
    doc_ids: Sequence[int] = (),
    rebuild_command: str = "realm index build --store STORE --embedder EMBEDDER --out INDEX --kind KIND",
) -> RemoveResult:
    """Remove documents (by title or document id) from a store and its index: their blocks are never
    returned by a search again. Idempotent, so a run killed at any point is finished by running it again.

    The store's tombstone set is committed first, then the index's (with its FAISS index updated): the
    index is what searches read, and each commit is one atomic manifest write.
    """
    from realm.corpus import BlockStore
    from realm.corpus.removal import find_blocks, remove_blocks

    store = BlockStore.open(store_dir)
    blocks, missing_titles, missing_docs = find_blocks(store, titles=titles, doc_ids=doc_ids)
    newly = len(np.setdiff1d(blocks, store.removed_ids))
    remove_blocks(store_dir, blocks)
    change = None
    if index_dir is not None:
        count = read_manifest(index_dir).count
        if count != len(store):
            raise ValueError(
                f"{index_dir} has {count:,} rows but {store_dir} has {len(store):,} blocks: finish the pending "
                f"`realm index add` first (run it again), then remove"
            )
        change = publish_change(index_dir, remove=blocks, rebuild_command=rebuild_command)
    return RemoveResult(int(len(blocks)), int(newly), missing_titles, missing_docs, change)
