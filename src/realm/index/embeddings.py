"""The on-disk block-embedding matrix and its manifest.

# N blocks, D dim

An index directory holds:

    embeddings.npy   [N, D] float32 or float16, C order: a plain .npy (`np.load(path, mmap_mode="r")`)
    manifest.json    {"format": "realm-embeddings", "version": 1, "count": N, "dim": D, "dtype": "float16",
                      ...provenance written by whoever built the matrix (embedder checkpoint fingerprint,
                      block store fingerprint, training step, ...), kept as they are on every rewrite}
    faiss.index      (only for a FaissIndex) the FAISS index, written by `faiss.write_index`

Row i of the matrix is block i. Nothing here is pickled. Writing is atomic per file: a matrix is written
under a temporary name (`embeddings.npy.partial`) and renamed when complete, the manifest is written to a
temporary file and renamed. Readers that already mapped the old matrix keep reading the old file. To swap a
whole index (matrix + manifest + faiss.index) at once, build it in a new directory and rename the directory.

A resumable builder: `create_embeddings(dir, N, D, dtype)` (or `resume=True` to reopen the partial file),
fill rows chunk by chunk, `flush()`, and `finish_embeddings(dir, manifest)` to publish.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realm.atomic import atomic_write_bytes
from realm.schema import check_index_manifest, read_json_object

EMBEDDINGS_NAME = "embeddings.npy"
PARTIAL_NAME = "embeddings.npy.partial"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "realm-embeddings"
MANIFEST_VERSION = 1
DTYPES = ("float32", "float16")

PathLike = str | os.PathLike[str]


@dataclass
class IndexManifest:
    """What `manifest.json` says about the matrix beside it.

    Args:
        count: N, rows of the matrix (blocks).
        dim: D, the embedding size.
        dtype: "float32" or "float16", the storage dtype.
        index: how to search it, e.g. {"type": "faiss", "factory": "IVF1024,Flat", "nprobe": 16};
            empty for a plain matrix (searched exactly).
        extra: every other key of the JSON object (provenance filled in by the index builder), kept
            unchanged through read/write.
    """

    count: int
    dim: int
    dtype: str
    index: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = MANIFEST_FORMAT
    version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"manifest dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.count < 0 or self.dim < 1:
            raise ValueError(
                f"manifest needs count >= 0 and dim >= 1, got count={self.count}, dim={self.dim}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: known fields first, then the extra keys at top level."""
        known = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        clash = sorted(set(known) & set(self.extra))
        if clash:
            raise ValueError(f"manifest extra keys {clash} clash with its own fields; rename them")
        return {**known, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexManifest:
        """Parse a manifest JSON object; keys it does not know go to `extra`."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = sorted({"count", "dim", "dtype"} - set(data))
        if missing:
            raise ValueError(f"manifest lacks {missing}")
        if data.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
            raise ValueError(f"not a realm embeddings manifest: format={data.get('format')!r}")
        if int(data.get("version", MANIFEST_VERSION)) > MANIFEST_VERSION:
            raise ValueError(
                f"manifest version {data['version']} is newer than this library's ({MANIFEST_VERSION}); "
                "upgrade realm-lm"
            )
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})


# ---------------------------------------------------------------------------------------------------------
# Manifest I/O.


def write_manifest(directory: PathLike, manifest: IndexManifest) -> Path:
    """Write `manifest.json` atomically."""
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n"
    return atomic_write_bytes(Path(directory) / MANIFEST_NAME, text.encode("utf-8"))


def read_manifest(directory: PathLike) -> IndexManifest:
    """Read `manifest.json` of an index directory."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not an index directory (no manifest)")
    data = read_json_object(path, "an index manifest", "; rebuild the index with `realm index build`")
    return IndexManifest.from_dict(check_index_manifest(data, path))


def base_file(manifest: IndexManifest) -> str:
    """The file of the first rows: `embeddings.npy`, or the merged matrix `realm index compact` wrote."""
    return str(manifest.extra.get("base_file", EMBEDDINGS_NAME))


# ---------------------------------------------------------------------------------------------------------
# The matrix.


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"embeddings are stored as {' or '.join(DTYPES)}, not {name}")
    return name


def create_embeddings(
    directory: PathLike, count: int, dim: int, dtype: Any = "float16", resume: bool = False
) -> np.memmap:
    """A writable [count, dim] memmap under the temporary name, to be filled chunk by chunk.

    Args:
        directory: the index directory (created if needed).
        count, dim: N and D.
        dtype: "float32" or "float16" (numpy or torch dtypes work too).
        resume: reopen an existing partial file of the same shape and dtype instead of creating a new one
            (its rows keep what was written before; the caller knows which rows are done).
    Returns:
        np.memmap [count, dim] opened read-write; call `finish_embeddings` when every row is written.
    """
    path = Path(directory) / PARTIAL_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = _dtype_name(dtype)
    if resume and path.exists():
        matrix = np.lib.format.open_memmap(path, mode="r+")
        if matrix.shape != (count, dim) or matrix.dtype.name != dtype:
            raise ValueError(
                f"{path} is {matrix.dtype.name} {list(matrix.shape)}, not {dtype} [{count}, {dim}]; "
                "delete it or create with resume=False"
            )
        return matrix
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(count, dim))


def finish_embeddings(directory: PathLike, manifest: IndexManifest) -> Path:
    """Publish the partial matrix: fsync, rename it to `embeddings.npy`, then write the manifest.

    The manifest's count, dim and dtype must match the file.
    """
    directory = Path(directory)
    partial = directory / PARTIAL_NAME
    header = np.load(partial, mmap_mode="r")
    _check_matches(header, manifest, partial)
    del header
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(partial, directory / EMBEDDINGS_NAME)
    write_manifest(directory, manifest)
    return directory / EMBEDDINGS_NAME


def write_embeddings(
    directory: PathLike,
    matrix: np.ndarray | torch.Tensor,
    dtype: Any = None,
    extra: dict[str, Any] | None = None,
    index: dict[str, Any] | None = None,
    chunk_rows: int = 1 << 18,
) -> IndexManifest:
    """Write a whole matrix (array, memmap or tensor on any device) and its manifest, atomically.

    Copies `chunk_rows` rows at a time, so a memmap source is never loaded whole.

    Args:
        directory: the index directory.
        matrix: [N, D] floating array or tensor.
        dtype: storage dtype ("float32"/"float16"); default: the matrix's own if it is one of those,
            else float32.
        extra: provenance fields for the manifest.
        index: the manifest's `index` field.
    Returns:
        The manifest written.
    """
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {list(matrix.shape)}")
    if dtype is None:
        source = str(matrix.dtype).removeprefix("torch.")
        dtype = source if source in DTYPES else "float32"
    count, dim = (int(s) for s in matrix.shape)
    out = create_embeddings(directory, count, dim, dtype)
    for start in range(0, count, chunk_rows):
        rows = matrix[start : start + chunk_rows]
        if isinstance(rows, torch.Tensor):
            rows = rows.detach().to("cpu", torch.float32).numpy()
        out[start : start + chunk_rows] = rows
    out.flush()
    del out
    manifest = IndexManifest(count, dim, _dtype_name(dtype), index=dict(index or {}), extra=dict(extra or {}))
    finish_embeddings(directory, manifest)
    return manifest


def _check_matches(matrix: np.ndarray, manifest: IndexManifest, path: Path) -> None:
    if (
        matrix.ndim != 2
        or matrix.shape != (manifest.count, manifest.dim)
        or matrix.dtype.name != manifest.dtype
    ):
        raise ValueError(
            f"{path} is {matrix.dtype.name} {list(matrix.shape)} but its manifest says "
            f"{manifest.dtype} [{manifest.count}, {manifest.dim}]; rebuild the index"
        )
    if not matrix.flags.c_contiguous:
        raise ValueError(f"{path} is stored in Fortran order; rewrite it with write_embeddings")


def open_embeddings(directory: PathLike, mmap: bool = True) -> tuple[np.ndarray, IndexManifest]:
    """Open `embeddings.npy` read-only (memory-mapped: O(1) time and memory) and its manifest.

    Args:
        directory: the index directory.
        mmap: False reads the whole matrix into memory instead.
    Returns:
        (matrix [N, D] read-only np.memmap or ndarray, manifest)
    """
    directory = Path(directory)
    manifest = read_manifest(directory) if (directory / MANIFEST_NAME).is_file() else None
    path = directory / (base_file(manifest) if manifest else EMBEDDINGS_NAME)
    if manifest is not None and manifest.extra.get("segments"):
        raise ValueError(
            f"{directory} has rows appended in segments (realm index add): open it with "
            f"realm.index.open_index, or merge them first with: realm index compact --index {directory}"
        )
    if not path.is_file():
        if (directory / PARTIAL_NAME).exists():
            raise FileNotFoundError(
                f"{path} not found: a partial build is there; finish it (finish_embeddings)"
            )
        raise FileNotFoundError(f"{path} not found: {directory} is not an index directory")
    manifest = manifest or read_manifest(directory)
    matrix = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    _check_matches(matrix, manifest, path)
    return matrix, manifest
