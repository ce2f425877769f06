"""Entry points: build a block store from documents (`build_store`) or import the port's ``block_records.npy``."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from .blocks import Block, BlockBuilder, BuildConfig
from .documents import Document, DocumentReader, source_fingerprint
from .sentences import split_sentences
from .stats import BuildStats
from .store import BlockStore
from .writer import EmptyInputError

logger = logging.getLogger(__name__)

_POSTFIX_SECONDS = 0.5


def _progress(enabled: bool, **kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    return tqdm(disable=not enabled, file=sys.stderr, dynamic_ncols=True, **kwargs)


def _counted(reader: DocumentReader, stats: BuildStats, progress: bool) -> Iterator[Document]:
    """Documents of ``reader`` with a progress bar (documents/s, blocks written, input read)."""
    bar = _progress(progress, unit=" docs", desc="blocks build", mininterval=1.0)
    last = 0.0
    try:
        for document in reader:
            yield document
            bar.update(1)
            now = time.monotonic()
            if now - last > _POSTFIX_SECONDS:
                last = now
                done = reader.bytes_read / reader.total_bytes if reader.total_bytes else 1.0
                bar.set_postfix(blocks=f"{stats.blocks:,}", input=f"{done:.1%}", refresh=False)
    finally:
        bar.close()
    if reader.malformed:
        stats.documents += reader.malformed
        stats.skipped["malformed"] += reader.malformed


# Worker processes (``num_workers > 0``): each holds a BlockBuilder and turns a batch of documents into
# blocks; the main process keeps a bounded number of batches in flight and writes the results in order,
# so the store is byte-for-byte the one a single process writes.
_WORKER: BlockBuilder | None = None


def _init_worker(tokenizer: Any, config: BuildConfig) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core instead
    _WORKER = BlockBuilder(tokenizer, config)


def _build_in_worker(first_doc_id: int, documents: list[Document]) -> tuple[list[Block], BuildStats]:
    assert _WORKER is not None
    _WORKER.stats = BuildStats()
    return list(_WORKER.build(documents, first_doc_id)), _WORKER.stats


def _parallel_blocks(
    documents: Iterator[Document],
    tokenizer: Any,
    config: BuildConfig,
    stats: BuildStats,
    first_doc_id: int,
    num_workers: int,
) -> Iterator[Block]:
    import multiprocessing

    per_task = config.docs_per_batch * 4
    context = multiprocessing.get_context("spawn")  # fork would copy a tokenizer whose threads already ran
    with context.Pool(num_workers, _init_worker, (tokenizer, config)) as pool:
        pending: deque[Any] = deque()
        doc_id = first_doc_id
        while True:
            while len(pending) < 2 * num_workers and (batch := list(islice(documents, per_task))):
                pending.append(pool.apply_async(_build_in_worker, (doc_id, batch)))
                doc_id += len(batch)
            if not pending:
                return
            blocks, worker_stats = pending.popleft().get()
            stats.merge(worker_stats)
            yield from blocks


def build_store(
    input_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    tokenizer: Any,
    config: BuildConfig | None = None,
    progress: bool = True,
    *,
    append: bool = False,
    overwrite: bool = False,
    num_workers: int = 0,
) -> BuildStats:
    """Documents under ``input_path`` -> blocks -> a `BlockStore` at ``out``, streaming (constant memory).

    Args:
        input_path: A file or directory of JSONL / WikiExtractor ``--json`` / ``.txt`` documents.
        out: The store directory.
        tokenizer: `RealmTokenizerFast` (recommended: much faster) or `RealmTokenizer`.
        config: Block-building options (`BuildConfig`); recorded in the manifest.
        progress: Show a progress bar on stderr (documents/s, blocks written, share of the input read).
        append: Add the blocks to the existing store at ``out`` as new segment(s) (same tokenizer and
            ``max_block_tokens`` required); document ids continue after the store's.
        overwrite: Replace an existing store at ``out``.
        num_workers: Worker processes for splitting, tokenizing and packing (0: in this process, with the
            fast tokenizer's own threads). The store is identical whatever the number.

    Returns:
        The build's `BuildStats` (``summary()`` for a readable report); also recorded in the manifest.

    Raises:
        CorpusFormatError: Malformed input (with ``on_error="raise"``), naming file and line.
        FileExistsError: ``out`` exists and neither ``append`` nor ``overwrite`` is set.
    """
    config = config or BuildConfig()
    if append and overwrite:
        raise ValueError("choose append or overwrite, not both")
    started = time.perf_counter()
    reader = DocumentReader(input_path, format=config.input_format, on_error=config.on_error)
    stats = BuildStats(files=len(reader.files))
    store = BlockStore.open(out) if append else None
    if store is not None and store.max_block_tokens != config.max_block_tokens:
        raise ValueError(
            f"{out} has max_block_tokens={store.max_block_tokens}, the config {config.max_block_tokens}; "
            "append with the same budget or build a new store"
        )
    documents = _counted(reader, stats, progress)
    first_doc_id = store.num_documents if store is not None else 0
    if num_workers > 0:
        blocks = _parallel_blocks(documents, tokenizer, config, stats, first_doc_id, num_workers)
    else:
        blocks = BlockBuilder(tokenizer, config, stats).build(documents, first_doc_id)

    def info() -> dict[str, Any]:
        stats.seconds = time.perf_counter() - started
        return {"input": str(input_path), "build_config": config.to_dict(), "stats": stats.to_dict()}

    logger.info("building blocks from %d file(s) under %s into %s", len(reader.files), input_path, out)
    if not reader.files:
        raise EmptyInputError(_nothing_to_read(input_path, reader))
    try:
        if store is not None:
            store.append(blocks, tokenizer, source_fingerprint=reader.fingerprint, build_info=info)
        else:
            BlockStore.create(
                out,
                blocks,
                tokenizer,
                max_block_tokens=config.max_block_tokens,
                overwrite=overwrite,
                source_fingerprint=reader.fingerprint,
                build_info=info,
            )
    except EmptyInputError:
        raise EmptyInputError(
            f"{input_path}: no text to build blocks from ({stats.documents:,} document(s) read, "
            f"{stats.documents_kept:,} kept); {out} was not {'changed' if store is not None else 'created'}. "
            "Give JSONL lines with a non-empty \"text\" or .txt files with content"
        ) from None
    stats.seconds = time.perf_counter() - started
    logger.info("%s\n%s", out, stats.summary())
    return stats


def _nothing_to_read(input_path: str | os.PathLike[str], reader: DocumentReader) -> str:
    ignored = reader.ignored_files
    shown = ", ".join(p.name for p in ignored[:3]) + (" ..." if len(ignored) > 3 else "")
    what = f"only files of unknown format ({shown})" if ignored else "no files"
    return (
        f"{input_path} holds {what}: nothing to build blocks from. Give .jsonl/.json/.ndjson files "
        "(one {\"title\", \"text\"} per line) or .txt files (one document each)"
    )


# ---------------------------------------------------------------------------------------------- import


def _npy_dtype(path: Path) -> np.dtype:
    """The dtype in an ``.npy`` header (without loading or unpickling anything)."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        major, _ = fmt.read_magic(f)
        read_header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
        _, _, dtype = read_header(f)
    return dtype


def load_block_records(path: str | os.PathLike[str], allow_pickle: bool = False) -> np.ndarray:
    """Open ``block_records.npy``: a fixed-width bytes/str array is memory-mapped; the port's pickled object
    array is loaded whole, and only with ``allow_pickle=True``.

    Raises:
        ValueError: A pickled file without ``allow_pickle``, or not a 1-D array of texts.
    """
    path = Path(path)
    dtype = _npy_dtype(path)
    if dtype.hasobject:
        if not allow_pickle:
            raise ValueError(
                f"{path} is a pickled object array (the transformers port's block_records.npy format). "
                "Unpickling can run arbitrary code; if you trust the file, pass allow_pickle=True "
                "(realm blocks import --allow-pickle)"
            )
        records = np.load(path, allow_pickle=True)
    elif dtype.kind in "SU":
        records = np.load(path, mmap_mode="r")
    else:
        raise ValueError(f"{path} holds {dtype} values; expected texts (bytes or str)")
    if records.ndim != 1:
        raise ValueError(f"{path} has shape {records.shape}; expected a 1-D array of block texts")
    return records


def _as_text(record: Any) -> str:
    return record.decode("utf-8") if isinstance(record, bytes | np.bytes_) else str(record)


def _imported_blocks(
    records: np.ndarray, builder: BlockBuilder, batch_size: int, bar: Any
) -> Iterator[Block]:
    for lo in range(0, len(records), batch_size):
        texts = [_as_text(r) for r in records[lo : lo + batch_size]]
        token_ids = builder.encode(texts)
        sentences = [split_sentences(t) for t in texts]
        flat_ids = iter(builder.encode([s for group in sentences for s in group]))
        for i, (text, ids, group) in enumerate(zip(texts, token_ids, sentences, strict=True)):
            starts, position = [], 0
            for _ in group:
                length = len(next(flat_ids))
                if length:
                    starts.append(position)
                    position += length
            if position != len(ids):  # sentences that do not tokenize like the whole text: no alignment
                starts = [0] if ids else []
            yield Block("", text, [], ids, lo + i, starts)
        bar.update(len(texts))


def import_block_records(
    npy_path: str | os.PathLike[str],
    tokenizer: Any,
    out: str | os.PathLike[str],
    allow_pickle: bool = False,
    *,
    overwrite: bool = False,
    progress: bool = True,
    batch_size: int = 4096,
) -> BlockStore:
    """Import the transformers port's ``block_records.npy`` (one UTF-8 text per block) into a store.

    Titles are empty (the port has none); ``token_ids`` are the tokenizer's ids of each text, ``doc_id`` is
    the record index, and ``sentence_starts`` come from `split_sentences` (``[0]`` when they cannot be
    aligned with the text's ids). Block ids equal record indices, so an index built for the port's
    records (e.g. ``block_emb``) stays valid.

    Args:
        npy_path: The ``.npy`` file: the port's pickled object array (needs ``allow_pickle=True`` and is
            loaded whole) or a fixed-width bytes array (memory-mapped, no flag needed).
        tokenizer: The tokenizer of the model that will read the blocks.
        out: The store directory.
        allow_pickle: Allow unpickling (only for files you trust).
        overwrite: Replace an existing store at ``out``.
        progress: Progress bar on stderr.
        batch_size: Records tokenized per call.
    """
    records = load_block_records(npy_path, allow_pickle)
    builder = BlockBuilder(tokenizer)
    with _progress(progress, total=len(records), unit=" blocks", desc="blocks import") as bar:
        store = BlockStore.create(
            out,
            _imported_blocks(records, builder, batch_size, bar),
            tokenizer,
            overwrite=overwrite,
            source_fingerprint=lambda: source_fingerprint(npy_path),
            build_info={"input": str(npy_path), "imported_from": "block_records.npy"},
        )
    logger.info("imported %s blocks from %s into %s", f"{len(store):,}", npy_path, out)
    return store
