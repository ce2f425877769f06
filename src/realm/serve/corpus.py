"""The knowledge corpus a server answers from, and opening a new one for a swap without restart."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from realm.corpus import BlockStore
from realm.index import open_index, read_manifest
from realm.index.hybrid import HybridIndex, with_sparse
from realm.pipeline import Pipeline
from realm.verify import check_corpus, verify_store

logger = logging.getLogger(__name__)


class CorpusError(Exception):
    """A store/index pair that cannot be served; `status` is the HTTP code, `field` the request field."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


@dataclass(frozen=True)
class Corpus:
    """A pipeline and where its store and index came from (None when built in memory)."""

    pipeline: Pipeline
    store_dir: Path | None
    index_dir: Path | None
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def of(cls, pipeline: Pipeline, store_dir: str | None = None, index_dir: str | None = None) -> Corpus:
        store_dir = store_dir or getattr(pipeline.store, "path", None)
        return cls(pipeline, Path(store_dir) if store_dir else None, Path(index_dir) if index_dir else None)

    def describe(self) -> dict[str, object]:
        index = self.pipeline.index
        return {
            "retrieval": self.pipeline.retrieval(),
            "corpus": {
                "name": self.store_dir.name if self.store_dir else "in-memory",
                "blocks": len(self.pipeline.store),
            },
            "index": {
                "type": type(index).__name__,
                "name": self.index_dir.name if self.index_dir else "in-memory",
                "blocks": len(index),
                "dim": index.dim,
            },
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
        }


def open_corpus(
    base: Pipeline, store_dir: str | os.PathLike[str], index_dir: str | os.PathLike[str]
) -> Corpus:
    """A pipeline with `base`'s models over another store and index, checked before anything is swapped.

    The checks are `realm.verify`'s, the same as `Pipeline.from_pretrained` runs, plus the sha256 of every
    store segment. Messages name only the paths the client gave, never what else is on the server: a path
    that does not exist and one that is no store get the same answer (the reason is logged).

    Raises:
        CorpusError: 422 for a directory that is not a usable store / index, 409 for a pair that does not
            match (index not built from this store or with this embedder, other size, other tokenizer).
    """
    store_dir, index_dir = Path(store_dir), Path(index_dir)
    try:
        store = BlockStore.open(store_dir)
        verify_store(store)
    except (OSError, ValueError, KeyError) as err:
        logger.warning("reload refused: store %s: %s", store_dir, err)
        raise CorpusError(422, "store", _unusable(store_dir, "block store", err)) from None
    try:
        read_manifest(index_dir)
    except (OSError, ValueError, KeyError) as err:
        logger.warning("reload refused: index %s: %s", index_dir, err)
        raise CorpusError(422, "index", _unusable(index_dir, "index", err)) from None
    ours = getattr(base.store, "tokenizer_fingerprint", None)
    if ours is not None and store.tokenizer_fingerprint != ours:
        # Block ids from another vocabulary would be read as nonsense by this reader.
        raise CorpusError(409, "store", f"{store_dir} was tokenized with another tokenizer than the model's")
    try:
        check_corpus(store, index_dir, base.embedder)
    except ValueError as err:
        raise CorpusError(409, "index", str(err)) from err
    try:
        index = open_index(index_dir)
    except (OSError, ValueError, ImportError) as err:
        logger.warning("reload refused: index %s: %s", index_dir, err)
        raise CorpusError(422, "index", _unusable(index_dir, "index", err)) from None
    if isinstance(base.index, HybridIndex):  # keep retrieving as the server was started: hybrid
        hybrid = base.index
        try:
            index = with_sparse(index, hybrid.sparse, store, fusion=hybrid.fusion, depth=hybrid.depth,
                                weight=hybrid.weight, k0=hybrid.k0)  # fmt: skip
        except ValueError as err:
            raise CorpusError(
                409, "store", f"this server retrieves with dense + BM25 and its BM25 index does not fit {store_dir}: "
                f"{err}; then restart realm serve with --sparse pointing to the new one",
            ) from err
    pipeline = Pipeline(
        base.embedder, base.reader, store, index,
        tokenizer=base.tokenizer, k=base.k, max_question_length=base.max_question_length,
        threshold=base.threshold, marginal_spans=base.marginal_spans, temperature=base.temperature,
        inference=base.inference,
    )  # fmt: skip
    return Corpus(pipeline, store_dir, index_dir)


def _unusable(path: Path, what: str, err: Exception) -> str:
    """The client's path and, for a file that exists and was read, what is wrong with its content."""
    if isinstance(err, OSError):  # missing, not a directory, unreadable: all alike to the client
        return f"{path} is not a {what} this server can open"
    return f"{path} is not a usable {what}: {err}"
