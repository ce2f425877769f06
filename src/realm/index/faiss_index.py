"""FAISS indexes (inner product) over the embeddings matrix: flat, IVF, HNSW, PQ, IVF-PQ.

# B queries, N stored vectors, D dim, K = min(k, N)

Needs the optional extra: `pip install 'realm-lm[faiss]'` (faiss-cpu). Any `faiss.index_factory` string
works with the inner-product metric; the usual ones:

    "Flat"                exact (what `ExactIndex` computes, in FAISS)
    "IVF{nlist},Flat"     inverted lists; search `nprobe` of the nlist lists (more: slower, better recall)
    "HNSW{M}"             graph; `ef_search` candidates per query (raised to k when k is larger)
    "PQ{m}", "IVF{nlist},PQ{m}"   product-quantised codes of m bytes per vector (lossy scores);
                          "IVF{nlist},PQ{m}x4fs" is the fast-scan variant (4-bit codes)

`rerank=R` (a search parameter of ours) re-scores the index's best R candidates exactly from the
embeddings matrix and keeps the best k: it turns the lossy scores of PQ into exact ones and recovers most
of the recall PQ loses, at the cost of reading R rows per query.

Indexes that need training are trained on a seeded random sample of rows. The index is saved with
`faiss.write_index` as `faiss.index` beside `embeddings.npy` (never pickled), with its factory string
and search parameters in the manifest's `index` field. `reconstruct` reads the exact vectors from the
embeddings matrix, not from lossy codes. Approximate indexes may return fewer than K hits (e.g. IVF
with a small `nprobe`): missing slots are (-inf, -1), last.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from realm.index.base import (
    MISSING_ID,
    Index,
    SearchResult,
    check_ids,
    check_k,
    check_queries,
    empty_result,
    pad_hits,
)
from realm.index.embeddings import (
    EMBEDDINGS_NAME,
    IndexManifest,
    open_embeddings,
    read_manifest,
    write_embeddings,
    write_manifest,
)
from realm.index.exact import Matrix, read_rows

FAISS_NAME = "faiss.index"
DEFAULT_TRAIN_SIZE = 1 << 17
ADD_CHUNK_ROWS = 1 << 16


def import_faiss() -> Any:
    """The faiss module, or an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            "FaissIndex needs faiss: pip install 'realm-lm[faiss]' (or pip install faiss-cpu)"
        ) from err
    return faiss


def _float32(rows: Any) -> np.ndarray:
    """A C-contiguous float32 numpy copy/view of rows of an array, memmap or tensor."""
    if isinstance(rows, Tensor):
        rows = rows.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(rows, dtype=np.float32)


class FaissIndex(Index):
    """A FAISS index with the inner-product metric, paired with the exact embeddings matrix.

    Build one with `FaissIndex.build(matrix, factory)`, or open a saved one with `FaissIndex.load(dir)`.

    Args:
        index: a `faiss.Index` holding the N rows of `matrix` in order (ids are row numbers).
        matrix: [N, D] float32/float16 array, memmap or tensor: the exact vectors (for `reconstruct`).
        factory: the `faiss.index_factory` string the index was built from (recorded in the manifest).
        params: search parameters applied to the index, e.g. {"nprobe": 16} or {"efSearch": 128}.
        build: how it was built (train_size, seed), recorded in the manifest.
    """

    def __init__(
        self,
        index: Any,
        matrix: Matrix,
        factory: str,
        params: dict[str, Any] | None = None,
        build: dict[str, Any] | None = None,
    ) -> None:
        self.ids_removed = int((build or {}).get("ids_removed", 0))  # rows taken out of an IVF index
        # MIPS -> L2: rows stored as [x, sqrt(M^2 - |x|^2)], queries as [q, 0] (see the module doc).
        self.max_norm: float | None = (build or {}).get("max_norm")
        extra_dim = int(self.max_norm is not None)
        if index.ntotal + self.ids_removed != matrix.shape[0] or index.d != matrix.shape[1] + extra_dim:
            raise ValueError(
                f"the faiss index holds {index.ntotal:,} x {index.d} but the matrix is "
                f"{matrix.shape[0]:,} x {matrix.shape[1]}; rebuild the faiss index"
            )
        faiss = import_faiss()
        metric = faiss.METRIC_L2 if extra_dim else faiss.METRIC_INNER_PRODUCT
        if index.metric_type != metric:
            raise ValueError("the faiss index must use the inner-product metric, or L2 over rows augmented for MIPS")
        self.index = index
        self._hnsw: Any = None  # the HNSW graph of `index` (False: none), found on the first search
        self.matrix = matrix
        self.factory = factory
        self.build_info = {k: v for k, v in (build or {}).items() if k not in ("ids_removed", "max_norm")}
        self.params: dict[str, Any] = {}
        self.set_params(**(params or {}))

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def _rows(self, rows: Any) -> np.ndarray:
        """float32 rows as the FAISS index stores them (augmented with their MIPS -> L2 column if any)."""
        rows = _float32(rows)
        if self.max_norm is None:
            return rows
        # a row added later with a larger norm than the bound gets 0: its distance is then approximate
        extra = np.sqrt(np.maximum(self.max_norm**2 - (rows * rows).sum(1), 0.0))[:, None]
        return np.ascontiguousarray(np.hstack([rows, extra.astype(np.float32)]))

    def __len__(self) -> int:
        return int(self.index.ntotal) + self.ids_removed  # ids are row numbers, removed ones included

    def __repr__(self) -> str:
        return f"FaissIndex({self.factory!r}, {len(self):,} x {self.dim}, params={self.params})"

    @classmethod
    def build(
        cls,
        matrix: Matrix,
        factory: str = "Flat",
        train_size: int = DEFAULT_TRAIN_SIZE,
        seed: int = 0,
        ef_construction: int | None = None,
        mips_to_l2: bool = False,
        **params: Any,
    ) -> FaissIndex:
        """Build (train on a seeded sample if needed, then add every row in order) a FAISS index.

        Args:
            matrix: [N, D] float32/float16 array, memmap or tensor; read in chunks.
            factory: a `faiss.index_factory` string ("Flat", "IVF1024,Flat", "HNSW32", "IVF1024,PQ16").
            train_size: rows sampled (without replacement, seeded) to train IVF centroids / PQ codebooks.
            seed: the sample's and k-means' seed.
            ef_construction: HNSW build-time candidates (FAISS default 40).
            mips_to_l2: index [x, sqrt(M^2 - |x|^2)] with L2 (M: the largest row norm), so that nearest
                in L2 = largest inner product for queries [q, 0]: partitions and graphs built for L2 then
                serve inner products of unnormalised vectors (Bachrach et al. 2014); hits re-scored exactly.
            params: search parameters, e.g. nprobe=16, efSearch=128 (see `set_params`).
        """
        faiss = import_faiss()
        count, dim = (int(s) for s in matrix.shape)
        max_norm = None
        if mips_to_l2 and "PQ" in factory:
            raise ValueError(
                f"mips_to_l2 adds a dimension (D + 1 = {dim + 1}) that PQ sub-quantizers cannot split evenly; "
                "for IVF-PQ keep inner product and re-score exactly with rerank=100..400"
            )
        if mips_to_l2:
            max_norm = max(
                float(np.sqrt((_float32(matrix[lo : lo + ADD_CHUNK_ROWS]) ** 2).sum(1).max()))
                for lo in range(0, count, ADD_CHUNK_ROWS)
            )
        metric = faiss.METRIC_L2 if mips_to_l2 else faiss.METRIC_INNER_PRODUCT
        index = faiss.index_factory(dim + int(mips_to_l2), factory, metric)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed
        if ef_construction is not None:
            hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
            if hnsw is None:
                raise ValueError(f"ef_construction is an HNSW setting; {factory!r} has no HNSW graph")
            hnsw.efConstruction = ef_construction
        build = {"train_size": 0, "seed": seed, "ef_construction": ef_construction, "max_norm": max_norm}
        shaper = cls.__new__(cls)  # only for `_rows` (the augmentation) before the index is complete
        shaper.max_norm = max_norm
        if not index.is_trained:
            size = min(count, train_size)
            sample = np.sort(np.random.default_rng(seed).choice(count, size=size, replace=False))
            index.train(
                shaper._rows(matrix[sample] if isinstance(matrix, np.ndarray) else matrix[torch.from_numpy(sample)])
            )
            build["train_size"] = size
        for start in range(0, count, ADD_CHUNK_ROWS):
            index.add(shaper._rows(matrix[start : start + ADD_CHUNK_ROWS]))
        if max_norm is not None:
            params.setdefault("rerank", 0)  # L2 distances are not scores: search() always re-scores exactly
        return cls(index, matrix, factory, params=params, build=build)

    def set_params(self, **params: Any) -> None:
        """Set search parameters: `rerank` (ours, see the module doc), or FAISS's by name: nprobe (IVF),
        efSearch (HNSW), or any other `faiss.ParameterSpace` name. `ef_search=` is accepted for efSearch."""
        faiss = import_faiss()
        if "ef_search" in params:
            params["efSearch"] = params.pop("ef_search")
        if "rerank" in params:
            rerank = params.pop("rerank")
            if rerank is not None and (isinstance(rerank, bool) or int(rerank) < 0):
                raise ValueError(f"rerank must be a number of candidates >= 0, got {rerank!r}")
            self.params["rerank"] = int(rerank or 0)
        space = faiss.ParameterSpace()
        for name, value in params.items():
            if value is None:
                continue
            try:
                space.set_index_parameter(self.index, name, value)
            except RuntimeError as err:
                raise ValueError(f"{self.factory!r} index has no search parameter {name!r}") from err
            self.params[name] = value

    @property
    def nprobe(self) -> int | None:
        return self.params.get("nprobe")

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.set_params(nprobe=value)

    @property
    def ef_search(self) -> int | None:
        return self.params.get("efSearch")

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self.set_params(efSearch=value)

    def search(self, queries: Tensor, k: int, texts: Sequence[str] | None = None) -> SearchResult:
        """Top-k by inner product as FAISS finds it (exact for "Flat"); see `Index.search`.

        With `rerank=R` the index proposes max(k, R) candidates whose scores are recomputed exactly
        (float32, from the embeddings matrix) before the best k are kept."""
        faiss = import_faiss()
        queries = check_queries(queries, self.dim)
        k = check_k(k, len(self))
        if queries.shape[0] == 0 or k == 0:
            return empty_result(queries.shape[0], k, queries.device)
        fetch = min(int(self.index.ntotal), max(k, self.params.get("rerank", 0)))
        if fetch == 0:
            return empty_result(queries.shape[0], k, queries.device)
        kwargs = {}
        if self._hnsw is None:  # looked up once: downcast_index costs more than a small search
            self._hnsw = getattr(faiss.downcast_index(self.index), "hnsw", False)
        if self._hnsw and self._hnsw.efSearch < fetch:
            kwargs["params"] = faiss.SearchParametersHNSW(efSearch=fetch)  # HNSW finds at most efSearch hits
        q = _float32(queries)
        if self.max_norm is not None:
            q = np.ascontiguousarray(np.hstack([q, np.zeros((len(q), 1), np.float32)]))
        scores, ids = self.index.search(q, fetch, **kwargs)  # [B, F] numpy
        missing = ids == MISSING_ID
        if self.params.get("rerank", 0) or self.max_norm is not None:
            rows = read_rows(self.matrix, torch.from_numpy(np.maximum(ids, 0))).numpy()  # [B, F, D] exact
            scores = np.einsum("bfd,bd->bf", rows, q[:, : self.dim])  # [B, F]
        scores[missing] = -np.inf
        # small hit lists sorted in numpy (per-call torch overhead dominates a single-query ANN search):
        # score descending, then id ascending, as `order_hits` orders them
        order = np.lexsort((ids, -scores), axis=1)[:, :k]
        scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        result = pad_hits(SearchResult(torch.from_numpy(scores), torch.from_numpy(ids).long()), k)
        return SearchResult(result.scores.to(queries.device), result.ids.to(queries.device))

    # -----------------------------------------------------------------------------------------------------
    # Kept in sync with the matrix: `realm index add` / `remove` (see `realm.index.live`).

    @property
    def can_remove(self) -> bool:
        """True for an IVF index (explicit ids: `remove_ids` keeps every other id); HNSW, flat and PQ
        renumber or cannot remove, so their removed rows stay in the index and are filtered at search."""
        return import_faiss().try_extract_index_ivf(self.index) is not None

    def add_rows(self, rows: Matrix, first: int) -> None:
        """Append rows `first .. first + len(rows) - 1` (the new blocks) without retraining.

        Args:
            rows: [n, D] float array, memmap or tensor; their ids continue the index's."""
        if first != len(self):
            raise ValueError(f"new rows must start at id {len(self)}, not {first}")
        for start in range(0, len(rows), ADD_CHUNK_ROWS):
            chunk = self._rows(rows[start : start + ADD_CHUNK_ROWS])
            if self.can_remove:
                ids = np.arange(first + start, first + start + len(chunk), dtype=np.int64)
                self.index.add_with_ids(chunk, ids)
            else:
                self.index.add(chunk)

    def remove_rows(self, ids: np.ndarray) -> int:
        """Take rows out of an IVF index (`remove_ids`); other kinds keep them (filtered at search time).
        Returns how many left the index."""
        if not self.can_remove or len(ids) == 0:
            return 0
        faiss = import_faiss()
        gone = int(self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64))))
        self.ids_removed += gone
        return gone

    def write_file(self, directory: str | os.PathLike[str], name: str) -> dict[str, Any]:
        """Write the FAISS index to `directory/name` atomically; its manifest `index` entry (not written)."""
        faiss = import_faiss()
        tmp = Path(directory) / f".{name}.tmp"
        faiss.write_index(self.index, str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, Path(directory) / name)
        return {"type": "faiss", "file": name, "factory": self.factory, "params": self.params,
                **self.build_info, "ids_removed": self.ids_removed, "max_norm": self.max_norm,
                "faiss_version": faiss.__version__}

    def reconstruct(self, ids: Tensor) -> Tensor:
        """The exact stored vectors of `ids` [...] as float32 [..., D] (from the matrix, not the codes)."""
        ids = torch.as_tensor(ids)
        return read_rows(self.matrix, check_ids(ids, len(self))).to(ids.device)

    def save(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> None:
        """Write `faiss.index` and the manifest; and `embeddings.npy` unless the matrix already is that
        file (an index built from a directory's memmap saves back into it without rewriting it).

        Args:
            directory: the index directory.
            extra: provenance fields for the manifest (merged over those already there).
        """
        faiss = import_faiss()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "type": "faiss",
            "file": FAISS_NAME,
            "factory": self.factory,
            "params": self.params,
            **self.build_info,
            "ids_removed": self.ids_removed,
            "max_norm": self.max_norm,
            "faiss_version": faiss.__version__,
        }
        target = directory / EMBEDDINGS_NAME
        own = (
            isinstance(self.matrix, np.memmap)
            and target.exists()
            and os.path.samefile(self.matrix.filename, target)
        )
        if own:
            manifest = read_manifest(directory)
            manifest.index = meta
            manifest.extra.update(extra or {})
        else:
            manifest = write_embeddings(directory, self.matrix, extra=extra, index=meta)
        tmp = directory / f".{FAISS_NAME}.tmp"
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, directory / FAISS_NAME)
        write_manifest(directory, manifest)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], mmap: bool = True, **params: Any) -> FaissIndex:
        """Open a directory written by `save`: `faiss.read_index` + the memory-mapped matrix.

        Args:
            directory: the index directory.
            mmap: False reads the matrix into memory.
            params: search parameters overriding the saved ones (nprobe=..., efSearch=...).
        """
        from realm.index.live import SegmentRows, open_segments, segment_entries

        faiss = import_faiss()
        directory = Path(directory)
        manifest = read_manifest(directory)
        if segment_entries(manifest):  # rows appended by `realm index add`: read across the segments
            parts, _ = open_segments(directory, mmap=mmap)
            matrix: Matrix = SegmentRows(parts)  # type: ignore[assignment]
        else:
            matrix, manifest = open_embeddings(directory, mmap=mmap)
        meta = _faiss_meta(manifest, directory)
        index = faiss.read_index(str(directory / meta.get("file", FAISS_NAME)))
        build = {k: meta[k] for k in ("train_size", "seed", "ef_construction", "ids_removed", "max_norm") if k in meta}
        return cls(index, matrix, meta["factory"], params={**meta.get("params", {}), **params}, build=build)


def _faiss_meta(manifest: IndexManifest, directory: Path) -> dict[str, Any]:
    meta = manifest.index
    if meta.get("type") != "faiss" or not (directory / meta.get("file", FAISS_NAME)).is_file():
        raise FileNotFoundError(
            f"{directory} holds no FAISS index (manifest index={meta}); build one with "
            "FaissIndex.build(matrix, factory).save(directory)"
        )
    return meta
