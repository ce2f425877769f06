"""`BlockStore`: REALM's retrieval corpus on disk, memory-mapped, gathered by block id.

Layout and columns: see `realm.corpus.segments`. Opening a store reads ``manifest.json`` and each
segment's Arrow footer, and memory-maps the segments; no column data is read until a block is asked for,
so opening takes milliseconds whatever the size. Gathering ``ids`` touches only the record batches (4,096
rows each) that hold them.

Writes never leave a store that opens as incomplete: `create` builds the whole store in a hidden sibling
directory and renames it into place once its manifest is written; `append` writes new segment files under
temporary names, renames them, and only then replaces the manifest (atomically) to list them. Old segment
files are never rewritten. One writer at a time: a concurrent append is detected and refused.

Shapes: n gathered blocks, L longest of them in wordpieces.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc  # noqa: F401  (registers pa.ipc)

from .blocks import Block
from .segments import BATCH_ROWS, COLUMNS, SEGMENT_ROWS, TOKENIZER_DIR, read_manifest, tokenizer_info
from .writer import Fingerprint, Info, append_blocks, create_store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlockBatch:
    """Consecutive blocks ``start .. stop - 1`` from `BlockStore.iter_batches`; unrequested columns are None."""

    start: int
    stop: int
    titles: list[str] | None = None
    texts: list[str] | None = None
    title_ids: list[list[int]] | None = None
    token_ids: list[list[int]] | None = None
    doc_ids: np.ndarray | None = None
    sentence_starts: list[list[int]] | None = None

    @property
    def ids(self) -> np.ndarray:
        """[n] int64 block ids."""
        return np.arange(self.start, self.stop, dtype=np.int64)

    def __len__(self) -> int:
        return self.stop - self.start


class BlockStore:
    """A read-only view of a block store directory (use `open`, `create`; `append` adds segments).

    Attributes:
        path: The store directory.
        manifest: The parsed ``manifest.json``.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.batch_rows = int(manifest["batch_rows"])
        self._readers = []
        counts = []
        for entry in manifest["segments"]:
            file = path / entry["file"]
            if not file.is_file():
                raise FileNotFoundError(f"{path}: segment {entry['file']} listed in the manifest is missing")
            if file.stat().st_size != entry["bytes"]:
                raise ValueError(
                    f"{file} has {file.stat().st_size:,} bytes but the manifest says {entry['bytes']:,}: the "
                    "store was modified or damaged; rebuild it"
                )
            reader = pa.ipc.open_file(pa.memory_map(str(file), "r"))
            if reader.num_record_batches != entry["num_batches"]:
                raise ValueError(
                    f"{file}: {reader.num_record_batches} record batches, manifest says {entry['num_batches']}"
                )
            self._readers.append(reader)
            counts.append(int(entry["num_blocks"]))
        self._ends = np.cumsum(np.asarray(counts, dtype=np.int64))
        self._starts = self._ends - np.asarray(counts, dtype=np.int64)
        self._batches: dict[tuple[int, int], Any] = {}
        if sum(counts) != manifest["num_blocks"]:
            raise ValueError(
                f"{path}: segments hold {sum(counts)} blocks, manifest says {manifest['num_blocks']}"
            )

    # ------------------------------------------------------------------ opening and metadata

    def __getstate__(self) -> dict[str, Any]:
        """Pickles as its path and manifest (e.g. into DataLoader workers); unpickling maps the files again."""
        return {"path": str(self.path), "manifest": self.manifest}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(Path(state["path"]), state["manifest"])  # type: ignore[misc]

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> BlockStore:
        """Open a store: read the manifest and segment footers, memory-map the segments (no column data).

        Raises:
            FileNotFoundError: No store at ``path``, or an incomplete one (no manifest), or a missing segment.
            ValueError: A manifest of another format or a newer version, or segments that do not match it.
        """
        path = Path(path)
        return cls(path, read_manifest(path))

    def __len__(self) -> int:
        return int(self.manifest["num_blocks"])

    def __repr__(self) -> str:
        return (
            f"BlockStore({str(self.path)!r}, blocks={len(self):,}, segments={len(self._readers)}, "
            f"max_block_tokens={self.max_block_tokens})"
        )

    @property
    def removed_ids(self) -> np.ndarray:
        """Sorted int64 ids of removed blocks (`realm index remove`; see `realm.corpus.removal`)."""
        from realm.corpus.removal import store_removed_ids

        return store_removed_ids(self.path, self.manifest)

    @property
    def num_documents(self) -> int:
        """One more than the largest ``doc_id`` stored (the next document id for `append`)."""
        return int(self.manifest["num_documents"])

    @property
    def max_block_tokens(self) -> int | None:
        return self.manifest.get("max_block_tokens")

    @property
    def tokenizer_fingerprint(self) -> str:
        return self.manifest["tokenizer"]["fingerprint"]

    @property
    def source_fingerprint(self) -> str | None:
        """Fingerprint of the input files (see `realm.corpus.documents.source_fingerprint`), if known."""
        return self.manifest.get("source_fingerprint")

    @property
    def fingerprint(self) -> str:
        """Identifies the stored content: the tokenizer and every segment file's sha256."""
        return self.manifest["fingerprint"]

    @property
    def special_ids(self) -> tuple[int, int, int]:
        """``(cls, sep, pad)`` ids of the store's tokenizer."""
        ids = self.manifest["tokenizer"]["special_ids"]
        return ids["cls"], ids["sep"], ids["pad"]

    def load_tokenizer(self) -> Any:
        """The tokenizer the store was built with (saved in ``tokenizer/``): fast if its files allow."""
        from realm.tokenization import RealmTokenizer, RealmTokenizerFast

        directory = self.path / TOKENIZER_DIR
        cls = RealmTokenizerFast if (directory / "tokenizer.json").is_file() else RealmTokenizer
        return cls.from_pretrained(directory)

    # ------------------------------------------------------------------ gathering

    def _batch(self, segment: int, index: int) -> Any:
        key = (segment, index)
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = self._readers[segment].get_batch(index)
        return batch

    def _gather(self, ids: Sequence[int] | np.ndarray, columns: Sequence[str]) -> dict[str, Any]:
        """Arrow arrays of ``columns`` for ``ids``, in the order asked, reading only the batches needed."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = len(self)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            bad = ids[(ids < 0) | (ids >= n)][0]
            raise IndexError(f"block id {bad} is out of range for a store of {n:,} blocks")
        segment = np.searchsorted(self._ends, ids, side="right")
        local = ids - self._starts[segment]
        batch_index = local // self.batch_rows
        key = segment * (1 << 40) + batch_index
        order = np.argsort(key, kind="stable")
        key_sorted = key[order]
        bounds = np.flatnonzero(np.diff(key_sorted)) + 1
        pieces: dict[str, list[Any]] = {c: [] for c in columns}
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, ids.size], strict=True):
            if lo == hi:
                continue
            first = order[lo]
            batch = self._batch(int(segment[first]), int(batch_index[first]))
            rows = pa.array(local[order[lo:hi]] % self.batch_rows)
            for c in columns:
                pieces[c].append(batch.column(c).take(rows))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        schema = self._readers[0].schema if self._readers else None
        out = {}
        for c in columns:
            if not pieces[c]:
                out[c] = pa.array([], type=schema.field(c).type if schema is not None else pa.null())
                continue
            joined = pieces[c][0] if len(pieces[c]) == 1 else pa.concat_arrays(pieces[c])
            out[c] = (
                joined if ids.size < 2 or np.all(order[:-1] < order[1:]) else joined.take(pa.array(inverse))
            )
        return out

    def texts(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        """Block texts of ``ids`` (any order, repeats allowed)."""
        return self._gather(ids, ["text"])["text"].to_pylist()

    def titles(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        return self._gather(ids, ["title"])["title"].to_pylist()

    def token_ids(self, ids: Sequence[int] | np.ndarray) -> list[list[int]]:
        """Wordpiece ids of the block texts (no special tokens)."""
        return self._gather(ids, ["token_ids"])["token_ids"].to_pylist()

    def title_ids(self, ids: Sequence[int] | np.ndarray) -> list[list[int]]:
        return self._gather(ids, ["title_ids"])["title_ids"].to_pylist()

    def doc_ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """[n] int64 document ids."""
        return self._gather(ids, ["doc_id"])["doc_id"].to_numpy(zero_copy_only=False).astype(np.int64)

    def sentence_starts(self, ids: Sequence[int] | np.ndarray) -> list[list[int]]:
        return self._gather(ids, ["sentence_starts"])["sentence_starts"].to_pylist()

    def token_ids_array(
        self, ids: Sequence[int] | np.ndarray, pad_id: int = 0, length: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Block token ids as one padded array.

        Args:
            ids: Block ids.
            pad_id: Filler after each block's ids.
            length: Columns of the result (longer blocks are truncated); default the longest block.

        Returns:
            ``(token_ids [n, L] int32, lengths [n] int64)``, lengths before truncation.
        """
        column = self._gather(ids, ["token_ids"])["token_ids"]
        lengths = column.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int32)
        width = int(lengths.max(initial=0)) if length is None else length
        out = np.full((lengths.size, width), pad_id, dtype=np.int32)
        longest = int(lengths.max(initial=0))
        present = np.arange(longest)[None, :] < lengths[:, None]  # [n, longest], row-major = values' order
        if width >= longest:
            out[:, :longest][present] = values
        else:  # keep each block's first `width` ids
            out[present[:, :width]] = values[np.broadcast_to(np.arange(longest) < width, present.shape)[present]]
        return out, lengths

    def get(self, ids: Sequence[int] | np.ndarray) -> list[Block]:
        """Whole `Block` records of ``ids``."""
        cols = self._gather(ids, COLUMNS)
        lists = {c: cols[c].to_pylist() for c in COLUMNS}
        return [
            Block(t, x, ti, tok, d, s)
            for t, x, ti, tok, d, s in zip(
                *(lists[c] for c in ("title", "text", "title_ids", "token_ids", "doc_id", "sentence_starts")),
                strict=True,
            )
        ]

    def __getitem__(self, index: int) -> Block:
        return self.get([index])[0]

    def iter_batches(
        self,
        batch_size: int = BATCH_ROWS,
        columns: Sequence[str] = ("title_ids", "token_ids"),
        start: int = 0,
        stop: int | None = None,
    ) -> Iterator[BlockBatch]:
        """Blocks ``start .. stop - 1`` in order, ``batch_size`` at a time (the last batch may be shorter).

        Args:
            batch_size: Blocks per batch.
            columns: Which of ``title``, ``text``, ``title_ids``, ``token_ids``, ``doc_id``, ``sentence_starts``
                to fill (decoding fewer columns is faster).
            start: First block id.
            stop: One past the last block id (default: the end).
        """
        unknown = set(columns) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown column(s) {sorted(unknown)}; choose from {COLUMNS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        stop = len(self) if stop is None else min(stop, len(self))
        names = {"title": "titles", "text": "texts", "doc_id": "doc_ids"}
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            cols = self._gather(np.arange(lo, hi), list(columns))
            fields: dict[str, Any] = {}
            for c in columns:
                value = cols[c].to_numpy(zero_copy_only=False) if c == "doc_id" else cols[c].to_pylist()
                fields[names.get(c, c)] = value
            yield BlockBatch(lo, hi, **fields)

    # ------------------------------------------------------------------ writing

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        blocks: Iterable[Block],
        tokenizer: Any,
        *,
        max_block_tokens: int | None = None,
        overwrite: bool = False,
        source_fingerprint: Fingerprint = None,
        build_info: Info = None,
        batch_rows: int = BATCH_ROWS,
        segment_rows: int = SEGMENT_ROWS,
    ) -> BlockStore:
        """Write a new store from a stream of blocks (constant memory: one record batch at a time).

        Args:
            path: The store directory to create.
            blocks: `Block`s with token ids from ``tokenizer``.
            tokenizer: Identifies the ids (fingerprint, vocab size, special ids); saved into ``tokenizer/``.
            max_block_tokens: If set, recorded and enforced: ``3 + len(title_ids) + len(token_ids)`` <= it.
            overwrite: Replace an existing store at ``path``.
            source_fingerprint: The input's fingerprint, or a callable giving it once ``blocks`` is
                exhausted (a streaming reader knows it only then).
            build_info: Extra manifest fields for this part (e.g. ``build_config``, ``stats``), or a
                callable giving them at the end.
            batch_rows: Rows per Arrow record batch.
            segment_rows: Blocks per segment file before starting a new one.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is false, or it is not a store.
            ValueError: A block over ``max_block_tokens`` or with ids outside the vocabulary.
        """
        path = Path(path)
        manifest = create_store(
            path,
            blocks,
            tokenizer,
            max_block_tokens=max_block_tokens,
            overwrite=overwrite,
            source_fingerprint=source_fingerprint,
            build_info=build_info,
            batch_rows=batch_rows,
            segment_rows=segment_rows,
        )
        logger.info(
            "created %s: %s blocks in %d segment(s)",
            path,
            f"{manifest['num_blocks']:,}",
            len(manifest["segments"]),
        )
        return cls.open(path)

    def append(
        self,
        blocks: Iterable[Block],
        tokenizer: Any = None,
        *,
        source_fingerprint: Fingerprint = None,
        build_info: Info = None,
        segment_rows: int = SEGMENT_ROWS,
    ) -> BlockStore:
        """Add blocks in new segment(s); existing segments are never rewritten. Returns the reopened store
        (this object keeps its old snapshot).

        Args:
            blocks: New blocks; their block ids continue after the current last one.
            tokenizer: If given, must have the store's tokenizer fingerprint.
            source_fingerprint, build_info, segment_rows: As in `create`.

        Raises:
            ValueError: A different tokenizer, or the store changed on disk since it was opened.
            RuntimeError: Another process is appending.
        """
        if tokenizer is not None:
            fingerprint = tokenizer_info(tokenizer)["fingerprint"]
            if fingerprint != self.tokenizer_fingerprint:
                raise ValueError(
                    f"{self.path} was built with tokenizer {self.tokenizer_fingerprint}, not {fingerprint}: "
                    "append with the store's tokenizer (BlockStore.load_tokenizer()) or build a new store"
                )
        manifest = append_blocks(
            self.path,
            self.manifest,
            blocks,
            source_fingerprint=source_fingerprint,
            build_info=build_info,
            segment_rows=segment_rows,
        )
        logger.info("appended %s blocks to %s", f"{manifest['num_blocks'] - len(self):,}", self.path)
        return BlockStore.open(self.path)
