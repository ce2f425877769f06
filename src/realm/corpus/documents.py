"""Streaming document readers: JSON lines (ours, REALM's, WikiExtractor ``--json``) and folders of ``.txt``.

A path is a file or a directory; a directory is walked in sorted order (names compared as strings, hidden
entries skipped), so the same tree always gives the same documents in the same order. Memory stays
constant: one line (or one ``.txt`` file) at a time.

Formats (``format="auto"`` picks one per file from its name, after dropping ``.gz``/``.bz2``):

* ``jsonl`` -- one JSON object per line with a string ``"title"`` and a string ``"text"`` (REALM's
  ``"body"`` is accepted when ``"text"`` is absent). WikiExtractor ``--json`` output (``AA/wiki_00``, no
  extension, lines with ``id``, ``url``, ``title``, ``text``) is this format; its ``id`` is kept. Picked for
  ``.jsonl``/``.json``/``.ndjson`` and for names without an extension. Blank lines are ignored.
* ``txt`` -- one document per file: the title is the file name without its extensions, the text is the
  whole content. Picked for ``.txt``.

A single file is read whatever its name (as ``txt`` if it ends in ``.txt``, else as JSON lines). In a
directory, files whose format cannot be told from the name (``README.md``, ``.DS_Store``...) are
skipped and counted (`DocumentReader.ignored_files`); pass ``format`` to read every file as one format.

Malformed input raises `CorpusFormatError` naming the file and line (``corpus.jsonl:17: missing "text"``).
With ``on_error="skip"`` such lines are skipped instead, counted in `DocumentReader.malformed` and the
first few logged.

While reading, every file's bytes (as stored, i.e. compressed) are hashed, so a full pass also yields the
source fingerprint (`DocumentReader.fingerprint`) without reading the input twice.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

INPUT_FORMATS = ("auto", "jsonl", "txt")
ON_ERROR = ("raise", "skip")

_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
_COMPRESSED = (".gz", ".bz2")
_LOGGED_BAD_LINES = 5


class CorpusFormatError(ValueError):
    """Malformed corpus input; the message starts with ``file:line:``."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Document:
    """One input document.

    Attributes:
        title: Page title ("" when the source has none).
        text: Page text; paragraphs separated by newlines.
        source: The file it came from (as found under the input path).
        line: 1-based line of the record in the (decompressed) file; 1 for a ``.txt`` document.
        source_id: The source's own id (WikiExtractor's page id), if it has one.
    """

    title: str
    text: str
    source: str
    line: int
    source_id: str | None = None


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One input file as hashed while it was read: its path relative to the input, size and sha256."""

    name: str
    size: int
    sha256: str


def _strip_compression(name: str) -> tuple[str, str | None]:
    for suffix in _COMPRESSED:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, None


def format_of(path: str | os.PathLike[str]) -> str | None:
    """The format ``auto`` picks for a file name: ``"jsonl"``, ``"txt"``, or None when it cannot tell."""
    base, _ = _strip_compression(Path(path).name)
    suffix = Path(base).suffix.lower()
    if suffix == ".txt":
        return "txt"
    if suffix in _JSONL_SUFFIXES or suffix == "":
        return "jsonl"
    return None


def list_input_files(path: str | os.PathLike[str], format: str = "auto") -> tuple[list[Path], list[Path]]:
    """The files a reader will read, in reading order, and those it ignores (unknown format).

    Args:
        path: A file or a directory (walked recursively in sorted order; hidden entries skipped).
        format: ``"auto"``, ``"jsonl"`` or ``"txt"``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: An unknown ``format``.
    """
    if format not in INPUT_FORMATS:
        raise ValueError(f"format must be one of {INPUT_FORMATS}, got {format!r}")
    root = Path(path)
    if root.is_file():
        return [root], []
    if not root.is_dir():
        raise FileNotFoundError(f"corpus input not found: {root}")
    files: list[Path] = []
    ignored: list[Path] = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            file = Path(directory) / name
            (files if format != "auto" or format_of(file) else ignored).append(file)
    return files, ignored


class _HashingReader(io.RawIOBase):
    """A raw binary stream that hashes (and counts) the bytes it reads from ``inner``."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._inner.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.sha256.update(memoryview(buffer)[:n])
            self.bytes_read += n
        return n or 0

    def drain(self) -> None:
        while self._inner.read(1 << 20):
            pass

    def close(self) -> None:
        self._inner.close()
        super().close()


class DocumentReader:
    """Iterate over the documents under a path (see the module docstring for formats and errors).

    Args:
        path: A file or a directory.
        format: ``"auto"``, ``"jsonl"`` (also WikiExtractor ``--json``) or ``"txt"``.
        on_error: ``"raise"`` (default) or ``"skip"`` malformed lines, counting them in `malformed`.

    Attributes:
        files: The files to read, in order. ``ignored_files``: those skipped for an unknown format.
        malformed: Lines skipped so far (``on_error="skip"``).
        bytes_read: Input bytes (as stored) read so far; ``total_bytes``: their total.
        sources: `SourceFile` records of the files read to the end so far.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, format: str = "auto", on_error: str = "raise"
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.root = Path(path)
        self.format = format
        self.on_error = on_error
        self.files, self.ignored_files = list_input_files(path, format)
        if self.ignored_files:
            logger.warning(
                "ignoring %d file(s) under %s whose format is not known from the name (e.g. %s); "
                "pass format='jsonl' or 'txt' to read them",
                len(self.ignored_files),
                self.root,
                self.ignored_files[0],
            )
        self.total_bytes = sum(f.stat().st_size for f in self.files)
        self.malformed = 0
        self.sources: list[SourceFile] = []
        self._done_bytes = 0
        self._current: _HashingReader | None = None

    @property
    def bytes_read(self) -> int:
        return self._done_bytes + (self._current.bytes_read if self._current is not None else 0)

    def __iter__(self) -> Iterator[Document]:
        self.sources = []
        self._done_bytes = 0
        self.malformed = 0
        for file in self.files:
            name = file.relative_to(self.root).as_posix() if file != self.root else file.name
            fmt = self.format if self.format != "auto" else (format_of(file) or "jsonl")
            with open(file, "rb") as raw:
                hashing = _HashingReader(raw)
                self._current = hashing
                stream = self._decompressed(file, hashing)
                if fmt == "txt":
                    yield from self._read_txt(file, stream)
                else:
                    yield from self._read_jsonl(file, stream)
                hashing.drain()
                self.sources.append(SourceFile(name, hashing.bytes_read, hashing.sha256.hexdigest()))
                self._done_bytes += hashing.bytes_read
                self._current = None

    def fingerprint(self) -> str:
        """sha256 over the input files' relative names, sizes and contents (see `source_fingerprint`).

        Raises:
            RuntimeError: The reader has not been iterated to the end.
        """
        if len(self.sources) != len(self.files):
            raise RuntimeError("the source fingerprint is known only after reading every file to the end")
        return _combine(self.sources)

    # ------------------------------------------------------------------ formats

    @staticmethod
    def _decompressed(file: Path, hashing: _HashingReader) -> IO[bytes]:
        _, compression = _strip_compression(file.name)
        if compression is None:
            return io.BufferedReader(hashing, buffer_size=1 << 20)
        if compression == ".gz":
            return gzip.GzipFile(fileobj=hashing, mode="rb")  # type: ignore[return-value]
        return bz2.BZ2File(hashing, mode="rb")  # type: ignore[return-value]

    def _bad(self, path: str, line: int | None, problem: str) -> None:
        error = CorpusFormatError(path, line, problem)
        if self.on_error == "raise":
            raise error
        self.malformed += 1
        if self.malformed <= _LOGGED_BAD_LINES:
            logger.warning("skipping malformed input: %s", error)
        elif self.malformed == _LOGGED_BAD_LINES + 1:
            logger.warning("more malformed input; further lines are skipped silently and counted")

    def _read_jsonl(self, file: Path, stream: IO[bytes]) -> Iterator[Document]:
        path = str(file)
        try:
            for number, raw in enumerate(stream, start=1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    self._bad(path, number, f"not valid UTF-8 ({err})")
                    continue
                if number == 1:
                    line = line.lstrip("\ufeff")  # a byte-order mark
                document = self._parse_json_line(path, number, line)
                if document is not None:
                    yield document
        except (OSError, EOFError) as err:  # a corrupt .gz/.bz2
            raise CorpusFormatError(path, None, f"cannot be read ({err})") from err

    def _parse_json_line(self, path: str, number: int, line: str) -> Document | None:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if line.lstrip().startswith("<doc "):
                problem = "this is WikiExtractor's <doc> output; rerun WikiExtractor with --json"
            else:
                problem = f"not valid JSON ({err})"
            self._bad(path, number, problem)
            return None
        if not isinstance(record, dict):
            self._bad(path, number, f"expected a JSON object, got {type(record).__name__}")
            return None
        if "text" not in record and "body" in record:
            record["text"] = record["body"]
        for key in ("title", "text"):
            if key not in record:
                hint = ' (use "title": "" for untitled documents)' if key == "title" else ""
                self._bad(path, number, f'missing "{key}"{hint}')
                return None
            if not isinstance(record[key], str):
                self._bad(path, number, f'"{key}" must be a string, got {type(record[key]).__name__}')
                return None
        source_id = record.get("id")
        return Document(
            title=record["title"],
            text=record["text"],
            source=path,
            line=number,
            source_id=None if source_id is None else str(source_id),
        )

    def _read_txt(self, file: Path, stream: IO[bytes]) -> Iterator[Document]:
        path = str(file)
        try:
            data = stream.read()
        except (OSError, EOFError) as err:
            raise CorpusFormatError(path, None, f"cannot be read ({err})") from err
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            self._bad(path, data.count(b"\n", 0, err.start) + 1, f"not valid UTF-8 ({err})")
            return
        base, _ = _strip_compression(file.name)
        yield Document(title=Path(base).stem, text=text.lstrip("\ufeff"), source=path, line=1)


def read_documents(
    path: str | os.PathLike[str], *, format: str = "auto", on_error: str = "raise"
) -> Iterator[Document]:
    """Stream the documents under ``path``; see `DocumentReader` for the arguments."""
    return iter(DocumentReader(path, format=format, on_error=on_error))


def _combine(sources: list[SourceFile]) -> str:
    digest = hashlib.sha256(b"realm-corpus-sources-v1\n")
    for source in sources:
        digest.update(f"{source.name}\t{source.size}\t{source.sha256}\n".encode())
    return "sha256:" + digest.hexdigest()


def source_fingerprint(path: str | os.PathLike[str], format: str = "auto") -> str:
    """sha256 over the input files' names (relative to ``path``), sizes and full contents, in reading order.

    Equal to `DocumentReader.fingerprint` after a full read of the same input, so a store can be checked
    against its sources: ``store.source_fingerprint == source_fingerprint(input)``.
    """
    root = Path(path)
    files, _ = list_input_files(root, format)
    sources = []
    for file in files:
        digest = hashlib.sha256()
        size = 0
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
                size += len(chunk)
        name = file.relative_to(root).as_posix() if file != root else file.name
        sources.append(SourceFile(name, size, digest.hexdigest()))
    return _combine(sources)
