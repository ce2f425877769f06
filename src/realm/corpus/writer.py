"""Writing block stores: segment files, `create_store` and `append_blocks` (used by `BlockStore`).

Crash safety: `create_store` builds the whole store in a hidden sibling directory (segments, tokenizer,
manifest last) and renames it into place; `append_blocks` writes new segments under temporary names,
renames them, and only then replaces the manifest atomically. So at every instant the store directory
either opens as the old store, opens as the new one, or does not exist/open at all. Replacing an
existing store (``overwrite``) renames the old one aside first, so a crash at that moment leaves no
store at the path (the old one survives as ``.NAME.old-*``).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc  # noqa: F401  (registers pa.ipc)

from realm.atomic import exchange_paths, fault_point, fsync_dir, remove_stale_temporaries, temporary_sibling

from .blocks import Block
from .segments import (
    BATCH_ROWS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SEGMENT_ROWS,
    TOKENIZER_DIR,
    block_schema,
    combine_fingerprints,
    content_fingerprint,
    file_sha256,
    read_manifest,
    segment_name,
    temp_name,
    token_dtype_for,
    tokenizer_info,
    utc_now,
    write_json_atomic,
)

LOCK_NAME = ".lock"

Fingerprint = str | Callable[[], str | None] | None


class EmptyInputError(ValueError):
    """No block to write: nothing is published (an empty store would only fail later, at question time)."""

Info = dict[str, Any] | Callable[[], dict[str, Any]] | None


@dataclass
class SegmentWriter:
    """Write blocks into one segment file under a temporary name; `finish` renames it into place.

    Args:
        path: Final path of the segment.
        token_dtype: ``"uint16"`` or ``"int32"``.
        vocab_size: Ids must lie in ``[0, vocab_size)``.
        max_block_tokens: If set, every block must satisfy ``3 + len(title_ids) + len(token_ids) <= it``.
        batch_rows: Rows per record batch.
    """

    path: Path
    token_dtype: str
    vocab_size: int
    max_block_tokens: int | None = None
    batch_rows: int = BATCH_ROWS

    def __post_init__(self) -> None:
        self.tmp = temp_name(self.path)
        self._schema = block_schema(self.token_dtype)
        self._sink = pa.OSFile(str(self.tmp), "wb")
        self._writer = pa.ipc.new_file(self._sink, self._schema)
        self._rows: list[Block] = []
        self.num_blocks = 0
        self.num_batches = 0
        self.max_doc_id = -1
        self.longest = 0

    @property
    def rows(self) -> int:
        """Blocks added so far (written or pending)."""
        return self.num_blocks + len(self._rows)

    def add(self, block: Block) -> None:
        length = 3 + len(block.title_ids) + len(block.token_ids)
        if self.max_block_tokens is not None and length > self.max_block_tokens:
            raise ValueError(
                f"block {self.rows} of this segment has 3 + {len(block.title_ids)} + "
                f"{len(block.token_ids)} = {length} wordpieces, over max_block_tokens={self.max_block_tokens}"
            )
        if len(block.token_ids) > 65535:
            raise ValueError(f"a block has {len(block.token_ids)} wordpieces; at most 65,535 are supported")
        self.longest = max(self.longest, length)
        self.max_doc_id = max(self.max_doc_id, block.doc_id)
        self._rows.append(block)
        if len(self._rows) == self.batch_rows:
            self._flush()

    def _list_array(self, rows: list[Sequence[int]], dtype: Any, limit: int, what: str) -> Any:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(offsets[-1]))
        if flat.size and (flat.min() < 0 or flat.max() >= limit):
            raise ValueError(f"{what} must lie in [0, {limit}); got values from {flat.min()} to {flat.max()}")
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.astype(dtype)))

    def _flush(self) -> None:
        if not self._rows:
            return
        rows = self._rows
        ids_dtype = np.uint16 if self.token_dtype == "uint16" else np.int32
        batch = pa.record_batch(
            [
                pa.array([b.title for b in rows], pa.string()),
                pa.array([b.text for b in rows], pa.string()),
                self._list_array([b.title_ids for b in rows], ids_dtype, self.vocab_size, "title_ids"),
                self._list_array([b.token_ids for b in rows], ids_dtype, self.vocab_size, "token_ids"),
                pa.array(np.fromiter((b.doc_id for b in rows), dtype=np.int64, count=len(rows))),
                self._list_array([b.sentence_starts for b in rows], np.uint16, 65536, "sentence_starts"),
            ],
            schema=self._schema,
        )
        self._writer.write_batch(batch)
        self.num_blocks += len(rows)
        self.num_batches += 1
        self._rows = []

    def finish(self) -> dict[str, Any]:
        """Close, fsync and rename the file into place; return its manifest entry."""
        self._flush()
        self._writer.close()
        self._sink.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        entry = {
            "file": self.path.name,
            "num_blocks": self.num_blocks,
            "num_batches": self.num_batches,
            "bytes": self.tmp.stat().st_size,
            "sha256": file_sha256(self.tmp),
        }
        fault_point("segment written")
        os.replace(self.tmp, self.path)
        fault_point("segment renamed")
        return entry

    def abort(self) -> None:
        """Close and delete the temporary file (after an error)."""
        for closer in (self._writer.close, self._sink.close):
            try:
                closer()
            except Exception:  # noqa: BLE001 - best effort clean-up after the real error
                pass
        if self.tmp.exists():
            self.tmp.unlink()


def create_store(
    path: Path,
    blocks: Iterable[Block],
    tokenizer: Any,
    *,
    max_block_tokens: int | None,
    overwrite: bool,
    source_fingerprint: Fingerprint,
    build_info: Info,
    batch_rows: int = BATCH_ROWS,
    segment_rows: int = SEGMENT_ROWS,
) -> dict[str, Any]:
    """Write a new store at ``path``; returns its manifest (arguments: see `BlockStore.create`)."""
    existing = path.exists()
    if existing and not path.is_dir():
        raise FileExistsError(f"{path} is a file; the store's path must be a directory (a new one, or a store to replace)")
    if existing and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) or append to it")
    if existing and not ((path / MANIFEST_NAME).is_file() or (path.is_dir() and not any(path.iterdir()))):
        raise FileExistsError(f"{path} exists and is not a block store; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)  # left by a build that was killed
    tmp = temporary_sibling(path)
    tmp.mkdir()
    try:
        info = tokenizer_info(tokenizer)
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "num_blocks": 0,
            "num_documents": 0,
            "token_dtype": token_dtype_for(info["vocab_size"]),
            "batch_rows": batch_rows,
            "max_block_tokens": max_block_tokens,
            "longest_block_tokens": 0,
            "tokenizer": info,
            "created_at": utc_now(),
            "segments": [],
            "parts": [],
        }
        _write_part(tmp, manifest, blocks, source_fingerprint, build_info, segment_rows)
        if manifest["num_blocks"] == 0:
            raise EmptyInputError(f"no blocks to write into {path}; nothing was created")
        tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
        fault_point("store ready")
        if existing and exchange_paths(tmp, path):  # one step; `tmp` now holds the old store, removed below
            pass
        elif existing:
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def append_blocks(
    path: Path,
    opened: dict[str, Any],
    blocks: Iterable[Block],
    *,
    source_fingerprint: Fingerprint,
    build_info: Info,
    segment_rows: int = SEGMENT_ROWS,
) -> dict[str, Any]:
    """Add ``blocks`` as new segments to the store at ``path`` opened with manifest ``opened``."""
    manifest = json.loads(json.dumps(opened))
    first_new = len(manifest["segments"])
    with _writer_lock(path):
        _remove_orphans(path, opened)
        try:
            _write_part(path, manifest, blocks, source_fingerprint, build_info, segment_rows)
            if manifest["num_blocks"] == opened["num_blocks"]:
                raise EmptyInputError(f"no blocks to append to {path}; the store is unchanged")
            if read_manifest(path)["segments"] != opened["segments"]:
                raise ValueError(
                    f"{path} changed on disk since it was opened (another append?); reopen it and retry"
                )
            fault_point("segments published")
            # The one step that publishes the append: until the manifest lists them, the new segments
            # are invisible to readers (and removed by the next append).
            write_json_atomic(path / MANIFEST_NAME, manifest)
            fault_point("append published")
        except BaseException:
            for entry in manifest["segments"][first_new:]:
                (path / entry["file"]).unlink(missing_ok=True)
            raise
    return manifest


def _remove_orphans(path: Path, manifest: dict[str, Any]) -> None:
    """Delete segment files (and their temporaries) that the manifest does not list: an append killed
    before its manifest was written leaves them, invisible to readers."""
    listed = {entry["file"] for entry in manifest["segments"]}
    for file in path.glob("segment-*.arrow"):
        if file.name not in listed:
            file.unlink(missing_ok=True)
    for file in path.glob(".segment-*.arrow.tmp-*"):
        file.unlink(missing_ok=True)


@contextmanager
def _writer_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory/.lock`` (released by the OS even if the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no advisory locks (Windows): single writer by convention
        yield
        return
    with open(directory / LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another process is writing to {directory}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_part(
    directory: Path,
    manifest: dict[str, Any],
    blocks: Iterable[Block],
    source_fingerprint: Fingerprint,
    build_info: Info,
    segment_rows: int,
) -> None:
    """Write ``blocks`` as new segments of ``directory`` and record them (and the part) in ``manifest``."""
    tokenizer = manifest["tokenizer"]
    first_block = manifest["num_blocks"]
    new_segments: list[dict[str, Any]] = []
    writer: SegmentWriter | None = None
    try:
        for block in blocks:
            if writer is None:
                index = len(manifest["segments"]) + len(new_segments)
                writer = SegmentWriter(
                    directory / segment_name(index),
                    manifest["token_dtype"],
                    tokenizer["vocab_size"],
                    manifest["max_block_tokens"],
                    manifest["batch_rows"],
                )
            writer.add(block)
            if writer.rows >= segment_rows:
                new_segments.append(_finish(writer, manifest))
                writer = None
        if writer is not None:
            new_segments.append(_finish(writer, manifest))
            writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        for entry in new_segments:
            (directory / entry["file"]).unlink(missing_ok=True)
        raise
    fingerprint = source_fingerprint() if callable(source_fingerprint) else source_fingerprint
    info = build_info() if callable(build_info) else (build_info or {})
    num_new = sum(s["num_blocks"] for s in new_segments)
    part = {"first_block": first_block, "num_blocks": num_new, "created_at": utc_now()}
    part.update({"source_fingerprint": fingerprint, **info})
    manifest["segments"].extend(new_segments)
    manifest["parts"].append(part)
    manifest["num_blocks"] = first_block + num_new
    manifest["updated_at"] = part["created_at"]
    manifest["source_fingerprint"] = combine_fingerprints(
        [p["source_fingerprint"] for p in manifest["parts"]]
    )
    manifest["fingerprint"] = content_fingerprint(
        tokenizer["fingerprint"], [s["sha256"] for s in manifest["segments"]]
    )


def _finish(writer: SegmentWriter, manifest: dict[str, Any]) -> dict[str, Any]:
    entry = writer.finish()
    manifest["num_documents"] = max(manifest["num_documents"], writer.max_doc_id + 1)
    manifest["longest_block_tokens"] = max(manifest["longest_block_tokens"], writer.longest)
    return entry
