"""BM25 over a block store: the sparse half of hybrid retrieval, built with the `bm25s` library.

# B queries, N blocks, K = min(k, N)

Needs the optional extra: `pip install 'realm-lm[sparse]'` (bm25s, PyStemmer).

What is indexed: "title. text" of every block, lower-cased, split into runs of two or more word characters
(scikit-learn's pattern, as `bm25s.tokenize`), English stop words removed, each word stemmed (Snowball
English, PyStemmer) unless `SparseConfig(stemmer=None)`. Questions go through the same steps. The score
is the Lucene variant of BM25 that `bm25s` computes by default:

    score(q, d) = sum over the question's tokens t (repeats count) of
                  idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

with |d| the number of tokens of block d after stop-word removal and avgdl their mean over the store.

A sparse index directory holds bm25s's own files, written by `bm25s.BM25.save` with allow_pickle=False
(`data/indices/indptr.csc.index.npy`: plain numeric .npy, read back with allow_pickle=False;
`vocab.index.json`, `params.index.json`) and our `manifest.json`:

    {"format": "realm-sparse-index", "version": 1, "kind": "bm25", "count": N,
     "store_fingerprint": "...", "store": "/path/to/store", "bm25": {"k1": 1.5, "b": 0.75, "method": "lucene"},
     "tokenization": {"lower": true, "token_pattern": "...", "stopwords": [...], "stemmer": "english"},
     "bm25s_version": "0.3.16"}

The stop-word list itself is recorded, so questions are tokenised as the blocks were even if a later bm25s
changes its list. The directory is built under a temporary name and renamed into place whole.

Ties: among equal scores the lower block id comes first. A block that shares no token with the question
scores 0 and is not a hit: its slot holds id -1 and score -inf, after every real hit (as an approximate
index's missing hits, see `realm.index.base`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realm.atomic import atomic_directory
from realm.index.base import MISSING_ID, SearchResult, check_k, chunk_topk, empty_result, order_hits
from realm.index.live import drop_removed
from realm.schema import check_sparse_manifest_fields

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SPARSE_FORMAT = "realm-sparse-index"
SPARSE_VERSION = 1
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
BUILD_BATCH = 4096


def import_bm25s() -> Any:
    """The bm25s module, or an ImportError that says how to install it."""
    try:
        import bm25s
    except ImportError as err:
        raise ImportError(
            "the sparse (BM25) index needs bm25s: pip install 'realm-lm[sparse]' (or pip install bm25s PyStemmer)"
        ) from err
    # bm25s sets its own logger to DEBUG on import, which prints its debug lines under any root config;
    # let it inherit the application's level instead.
    logging.getLogger("bm25s").setLevel(logging.NOTSET)
    return bm25s


def load_stemmer(name: str | None) -> Any:
    """A PyStemmer stemmer for the Snowball algorithm `name` ("english"), or None for no stemming."""
    if name is None:
        return None
    try:
        import Stemmer
    except ImportError as err:
        raise ImportError(
            f"this sparse index stems with {name!r} and needs PyStemmer: pip install 'realm-lm[sparse]' "
            "(or pip install PyStemmer); or build one without stemming (--no-stem)"
        ) from err
    return Stemmer.Stemmer(name)


@dataclass(frozen=True)
class SparseConfig:
    """How a BM25 index is built (recorded in its manifest; questions are tokenised the same way).

    Attributes:
        k1: term-frequency saturation.
        b: document-length normalisation (0: none, 1: full).
        stemmer: Snowball algorithm for PyStemmer ("english"), or None for no stemming.
        stopwords: "en" for bm25s's English list (its words are recorded in the manifest), or None.
    """

    k1: float = 1.5
    b: float = 0.75
    stemmer: str | None = "english"
    stopwords: str | None = "en"

    def __post_init__(self) -> None:
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")
        if self.stopwords not in ("en", None):
            raise ValueError(f'stopwords must be "en" or None, got {self.stopwords!r}')


def block_text(title: str, text: str) -> str:
    """What BM25 sees of a block: its title and text, "title. text"."""
    return f"{title}. {text}" if title else text


def tokenize(texts: Sequence[str], tokenization: dict[str, Any], stemmer: Any) -> list[list[str]]:
    """Tokenise texts for BM25 with the settings a manifest records (one code path for blocks and questions)."""
    bm25s = import_bm25s()
    return bm25s.tokenize(
        list(texts),
        lower=tokenization["lower"],
        token_pattern=tokenization["token_pattern"],
        stopwords=tokenization["stopwords"],
        stemmer=stemmer,
        return_ids=False,
        show_progress=False,
    )


class SparseIndex:
    """BM25 search over the blocks of one store (ids are block ids 0..N-1).

    Build one with `SparseIndex.build(store)`, write it with `save`, open it with `SparseIndex.open`.

    Args:
        bm25: a `bm25s.BM25` holding the N blocks in order.
        tokenization: {"lower", "token_pattern", "stopwords" (list of words), "stemmer"}.
        store_fingerprint: the fingerprint of the block store it was built from.
    """

    def __init__(self, bm25: Any, tokenization: dict[str, Any], store_fingerprint: str) -> None:
        self.bm25 = bm25
        self.tokenization = dict(tokenization)
        self.store_fingerprint = store_fingerprint
        self._stemmer = load_stemmer(self.tokenization.get("stemmer"))
        # Blocks removed from the store (`realm index remove`): never returned; set by `open` with a store.
        self.removed_ids = torch.zeros(0, dtype=torch.int64)

    def __len__(self) -> int:
        return int(self.bm25.scores["num_docs"])

    def __repr__(self) -> str:
        return (
            f"SparseIndex(bm25, {len(self):,} blocks, k1={self.bm25.k1}, b={self.bm25.b}, "
            f"stemmer={self.tokenization.get('stemmer')})"
        )

    # -----------------------------------------------------------------------------------------------------
    # Tokenisation and search.

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """The BM25 tokens of each text (lower-cased, stop words removed, stemmed as the index was)."""
        return tokenize(texts, self.tokenization, self._stemmer)

    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        """BM25 score of every block for each text: [B, N] float32 (for small stores and tests)."""
        rows = [self._score_row(tokens) for tokens in self.tokenize(texts)]
        return torch.stack(rows) if rows else torch.zeros(0, len(self))

    def score_ids(self, texts: Sequence[str], ids: torch.Tensor) -> torch.Tensor:
        """BM25 scores [B, C] float32 of blocks `ids` [B, C] for each text (0 where an id is -1).

        Memory O(N) whatever B: one text's scores of every block at a time."""
        ids = torch.as_tensor(ids).cpu().long()
        if ids.dim() != 2 or ids.shape[0] != len(texts):
            raise ValueError(f"ids must be [B, C] with B = {len(texts)} texts, got {list(ids.shape)}")
        out = torch.zeros(ids.shape, dtype=torch.float32)
        for b, tokens in enumerate(self.tokenize(texts)):
            out[b] = self._score_row(tokens)[ids[b].clamp(min=0)].masked_fill(ids[b] < 0, 0.0)
        return out

    def _score_row(self, tokens: list[str]) -> torch.Tensor:
        ids = self.bm25.get_tokens_ids(tokens)
        if not ids:  # no token of the question is in the corpus
            return torch.zeros(len(self))
        return torch.from_numpy(np.asarray(self.bm25.get_scores_from_ids(ids), dtype=np.float32))  # [N]

    def search_text(self, texts: Sequence[str], k: int) -> SearchResult:
        """The k best blocks of each text by BM25.

        Args:
            texts: B questions.
            k: hits wanted per question (>= 1); clamped to N.
        Returns:
            SearchResult(scores [B, K] float32, ids [B, K] int64) on the CPU, best first, ties towards lower
            ids; blocks with no token in common with the question are missing hits (-inf, -1).
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        k = check_k(k, len(self))
        if not texts:
            return empty_result(0, k, torch.device("cpu"))
        fetch = min(len(self), k + len(self.removed_ids))  # room for removed blocks, dropped below
        rows = []
        for tokens in self.tokenize(texts):
            scores = self._score_row(tokens)[None]  # [1, N], one row at a time: memory O(N), not O(B N)
            rows.append(order_hits(*chunk_topk(scores, fetch)))
        scores = torch.cat([r.scores for r in rows])  # [B, K]
        ids = torch.cat([r.ids for r in rows])
        unmatched = scores <= 0  # BM25 of a shared token is > 0 (idf > 0, tf > 0)
        found = SearchResult(scores.masked_fill(unmatched, float("-inf")), ids.masked_fill(unmatched, MISSING_ID))
        return drop_removed(found, self.removed_ids, k)

    # -----------------------------------------------------------------------------------------------------
    # Build, save, open.

    @classmethod
    def build(cls, store: Any, config: SparseConfig | None = None, progress: bool = True) -> SparseIndex:
        """Tokenise every block of `store` ("title. text") and build the BM25 index in memory.

        Args:
            store: a `BlockStore` (anything with `iter_batches(columns=("title", "text"))`, `fingerprint`).
            config: BM25 and tokenisation settings.
        """
        from tqdm.auto import tqdm

        bm25s = import_bm25s()
        config = config or SparseConfig()
        stopwords = sorted(bm25s.stopwords.STOPWORDS_EN) if config.stopwords == "en" else []
        tokenization = {"lower": True, "token_pattern": TOKEN_PATTERN, "stopwords": stopwords,
                        "stemmer": config.stemmer}  # fmt: skip
        stemmer = load_stemmer(config.stemmer)
        corpus: list[list[str]] = []
        with tqdm(total=len(store), unit="block", desc="BM25 tokenising", disable=not progress) as bar:
            for batch in store.iter_batches(BUILD_BATCH, columns=("title", "text")):
                texts = [block_text(t, x) for t, x in zip(batch.titles, batch.texts, strict=True)]
                corpus.extend(tokenize(texts, tokenization, stemmer))
                bar.update(len(batch))
        bm25 = bm25s.BM25(k1=config.k1, b=config.b, method="lucene")
        bm25.index(corpus, show_progress=False)
        if int(bm25.scores["num_docs"]) != len(store):
            raise RuntimeError(f"bm25s indexed {bm25.scores['num_docs']} documents for {len(store)} blocks")
        return cls(bm25, tokenization, store.fingerprint)

    def manifest(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        bm25s = import_bm25s()
        return {
            "format": SPARSE_FORMAT,
            "version": SPARSE_VERSION,
            "kind": "bm25",
            "count": len(self),
            "store_fingerprint": self.store_fingerprint,
            **(extra or {}),
            "bm25": {"k1": self.bm25.k1, "b": self.bm25.b, "method": self.bm25.method},
            "tokenization": self.tokenization,
            "bm25s_version": bm25s.__version__,
        }

    def save(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> None:
        """Write the index directory atomically (built under a temporary name, then renamed over `directory`).

        Args:
            directory: the sparse index directory; an existing sparse index there is replaced, anything else
                is refused.
            extra: provenance for the manifest (e.g. {"store": path}).
        """
        directory = Path(directory)
        if (
            directory.exists()
            and any(directory.iterdir())
            and _read_sparse_manifest(directory, strict=False) is None
        ):
            raise FileExistsError(f"{directory} exists and is not a sparse index; choose another --out")
        with atomic_directory(directory) as tmp:
            self.bm25.save(tmp, allow_pickle=False, show_progress=False)
            (tmp / MANIFEST_NAME).write_text(json.dumps(self.manifest(extra), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def open(cls, directory: str | os.PathLike[str], store: Any = None, *, mmap: bool = False) -> SparseIndex:
        """Open a sparse index directory; with `store`, refuse it unless it was built from that store.

        Args:
            directory: written by `save` (or `realm index build-sparse`).
            store: the `BlockStore` it will be used with (checked by fingerprint and block count).
            mmap: memory-map bm25s's arrays instead of reading them.
        Raises:
            ValueError: built from another store, with the command that rebuilds it.
        """
        bm25s = import_bm25s()
        directory = Path(directory)
        manifest = _read_sparse_manifest(directory, strict=True)
        if store is not None:
            check_sparse_manifest(manifest, directory, store)
        bm25 = bm25s.BM25.load(
            directory, mmap=mmap, allow_pickle=False, load_corpus=False, show_progress=False
        )
        if int(bm25.scores["num_docs"]) != manifest["count"]:
            raise ValueError(
                f"{directory}: bm25s holds {bm25.scores['num_docs']} documents but the manifest says "
                f"{manifest['count']}; rebuild it with: realm index build-sparse --store STORE --out {directory}"
            )
        index = cls(bm25, manifest["tokenization"], manifest["store_fingerprint"])
        if store is not None and hasattr(store, "removed_ids"):
            index.removed_ids = torch.from_numpy(np.asarray(store.removed_ids, dtype=np.int64))
        return index


def check_sparse_manifest(manifest: dict[str, Any], directory: Path, store: Any) -> None:
    """Refuse a sparse index built from another store than `store` (a `BlockStore`)."""
    rebuild = f"realm index build-sparse --store {store.path} --out {directory}"
    if manifest["count"] != len(store):
        raise ValueError(
            f"sparse index {directory} has {manifest['count']:,} blocks but the store has {len(store):,}; "
            f"rebuild it with: {rebuild}"
        )
    if manifest["store_fingerprint"] != store.fingerprint:
        raise ValueError(
            f"sparse index {directory} was built from another block store (fingerprint "
            f"{manifest['store_fingerprint'][:12]}, this store's is {store.fingerprint[:12]}); "
            f"rebuild it with: {rebuild}"
        )


def _read_sparse_manifest(directory: Path, strict: bool) -> dict[str, Any] | None:
    """The manifest of a sparse index directory; None (strict=False) or an error if it is not one."""
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # not JSON, not UTF-8
        if not strict:
            return None
        raise ValueError(f"{path}: not valid JSON ({err}); rebuild it with `realm index build-sparse`") from None
    except FileNotFoundError:
        if not strict:
            return None
        raise FileNotFoundError(
            f"{path} not found: {directory} is not a sparse index; build one with: "
            f"realm index build-sparse --store STORE --out {directory}"
        ) from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != SPARSE_FORMAT
        or manifest.get("kind") != "bm25"
    ):
        if not strict:
            return None
        shown = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path} is not a sparse (BM25) index manifest (format={shown!r})")
    check_sparse_manifest_fields(manifest, path)
    if manifest["version"] > SPARSE_VERSION:
        raise ValueError(
            f"{path}: sparse index version {manifest['version']} is newer than this library's "
            f"({SPARSE_VERSION}); upgrade realm-lm"
        )
    return manifest


def build_sparse_index(
    store_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: SparseConfig | None = None,
    progress: bool = True,
) -> SparseIndex:
    """Build the BM25 index of the store at `store_dir` and save it to `out_dir` (what the CLI runs)."""
    from realm.corpus import BlockStore

    store = BlockStore.open(store_dir)
    index = SparseIndex.build(store, config, progress=progress)
    index.save(
        out_dir, extra={"store": str(Path(store_dir).resolve()), "config": asdict(config or SparseConfig())}
    )
    logger.info("wrote %s: BM25 over %s blocks", out_dir, f"{len(index):,}")
    return index
