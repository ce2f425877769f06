"""The block store's on-disk layout: schema, manifest, fingerprints and atomic file helpers.

A store is a directory::

    manifest.json            written last, atomically: the only file that makes the directory a store
    segment-00000.arrow      Arrow IPC *file* format (random access footer), uncompressed so it can be
    segment-00001.arrow      memory-mapped; record batches of exactly ``batch_rows`` rows (the last may
    ...                      be shorter), so block i of a segment is row i % batch_rows of batch i // batch_rows
    tokenizer/               the tokenizer's save_pretrained files

Columns of every segment (`block_schema`): ``title`` string, ``text`` string, ``title_ids`` and
``token_ids`` list<uint16> (list<int32> when the vocabulary has 65,536 entries or more), ``doc_id`` int64,
``sentence_starts`` list<uint16> (offsets into ``token_ids``).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc  # noqa: F401  (registers pa.ipc)

from realm.atomic import fault_point, fsync_dir
from realm.schema import check_store_manifest, read_json_object

FORMAT_NAME = "realm-block-store"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_DIR = "tokenizer"
BATCH_ROWS = 4096
SEGMENT_ROWS = 1 << 20
COLUMNS = ("title", "text", "title_ids", "token_ids", "doc_id", "sentence_starts")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def segment_name(index: int) -> str:
    return f"segment-{index:05d}.arrow"


def token_dtype_for(vocab_size: int) -> str:
    """``"uint16"`` when every id fits (vocabulary below 65,536 entries), else ``"int32"``."""
    return "uint16" if vocab_size < 65536 else "int32"


def block_schema(token_dtype: str) -> Any:
    ids = pa.list_(pa.uint16() if token_dtype == "uint16" else pa.int32())
    return pa.schema(
        [
            ("title", pa.string()),
            ("text", pa.string()),
            ("title_ids", ids),
            ("token_ids", ids),
            ("doc_id", pa.int64()),
            ("sentence_starts", pa.list_(pa.uint16())),
        ],
        metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)},
    )


# ---------------------------------------------------------------------------------------------- fingerprints


def tokenizer_info(tokenizer: Any) -> dict[str, Any]:
    """What identifies a tokenizer: ``fingerprint`` = sha256 over the vocabulary in id order and the
    normalisation flags (``do_lower_case``, ``strip_accents``, ``tokenize_chinese_chars``); plus the vocab
    size and special ids, for readers."""
    vocab = tokenizer.vocab
    tokens = sorted(vocab, key=vocab.__getitem__)
    flags = {
        "do_lower_case": bool(getattr(tokenizer, "do_lower_case", True)),
        "strip_accents": getattr(tokenizer, "strip_accents", None),
        "tokenize_chinese_chars": bool(getattr(tokenizer, "tokenize_chinese_chars", True)),
    }
    digest = hashlib.sha256(b"realm-tokenizer-v1\n")
    for token in tokens:
        digest.update(token.encode("utf-8") + b"\n")
    digest.update(json.dumps(flags, sort_keys=True).encode())
    special = {
        name: int(getattr(tokenizer, f"{name}_token_id")) for name in ("cls", "sep", "pad", "unk", "mask")
    }
    return {
        "fingerprint": "sha256:" + digest.hexdigest(),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokens),
        **flags,
        "special_ids": special,
    }


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over the vocabulary (id order) and normalisation flags; equal for slow and fast tokenizers."""
    return tokenizer_info(tokenizer)["fingerprint"]


def combine_fingerprints(parts: Sequence[str | None]) -> str | None:
    """One fingerprint for several (None if any is unknown; the part itself if there is one)."""
    if any(p is None for p in parts) or not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    digest = hashlib.sha256(b"realm-fingerprints-v1\n")
    for part in parts:
        digest.update(f"{part}\n".encode())
    return "sha256:" + digest.hexdigest()


def content_fingerprint(tokenizer_fingerprint: str, segment_sha256s: Sequence[str]) -> str:
    """A store's content fingerprint: its tokenizer and the sha256 of every segment file, in order."""
    digest = hashlib.sha256(b"realm-block-store-content-v1\n")
    for part in (tokenizer_fingerprint, *segment_sha256s):
        digest.update(f"{part}\n".encode())
    return "sha256:" + digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- atomic files


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary file beside ``path``, fsync, rename over ``path``, fsync the directory."""
    tmp = temp_name(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"{path.name} written")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        if directory.is_dir() and any(directory.glob("segment-*.arrow")):
            problem = "it has segment files but no manifest.json (an interrupted create or append?)"
        elif directory.exists():
            problem = "there is no manifest.json"
        else:
            problem = "it does not exist"
        raise FileNotFoundError(
            f"{directory} is not a complete block store: {problem}; build it with `realm blocks build`"
        )
    manifest = read_json_object(path, "a block store manifest", "; rebuild the store with `realm blocks build`")
    if manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a {FORMAT_NAME} manifest (format={manifest.get('format')!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version!r}; this realm reads up to {FORMAT_VERSION}: upgrade realm-lm"
        )
    return check_store_manifest(manifest, path)
