"""Search indexes over the block-embedding matrix: exact (chunked), FAISS (optional extra), sharded;
BM25 over the block texts (optional extra) and the hybrid of both.

    from realm.index import ExactIndex, open_index

    index = open_index("path/to/index")          # ExactIndex, or FaissIndex if the manifest says so
    scores, ids = index.search(query_emb, k=8)   # [B, D] -> [B, 8] float32, [B, 8] int64, best first
    block_emb = index.reconstruct(ids)           # [B, 8, D] exact float32 vectors (for retrieval logits)

Directory layout and manifest: `realm.index.embeddings`. Search contract: `realm.index.base`. BM25:
`realm.index.sparse`; fusion: `realm.index.hybrid`.
"""

from __future__ import annotations

import os
from typing import Any

from realm.index.base import Index, SearchResult
from realm.index.embeddings import (
    EMBEDDINGS_NAME,
    MANIFEST_NAME,
    IndexManifest,
    create_embeddings,
    finish_embeddings,
    open_embeddings,
    read_manifest,
    write_embeddings,
    write_manifest,
)
from realm.index.exact import ExactIndex
from realm.index.faiss_index import FaissIndex
from realm.index.hybrid import HybridIndex, reciprocal_rank_fusion, weighted_score_fusion
from realm.index.live import FilteredIndex, SegmentedIndex, open_segments, removed_ids, segment_entries
from realm.index.sharded import ShardedIndex, shard_bounds
from realm.index.sparse import SparseConfig, SparseIndex

__all__ = [
    "EMBEDDINGS_NAME",
    "MANIFEST_NAME",
    "ExactIndex",
    "FaissIndex",
    "FilteredIndex",
    "HybridIndex",
    "Index",
    "IndexManifest",
    "SearchResult",
    "SegmentedIndex",
    "ShardedIndex",
    "SparseConfig",
    "SparseIndex",
    "create_embeddings",
    "finish_embeddings",
    "open_embeddings",
    "open_index",
    "read_manifest",
    "removed_ids",
    "reciprocal_rank_fusion",
    "shard_bounds",
    "weighted_score_fusion",
    "write_embeddings",
    "write_manifest",
]


def open_index(directory: str | os.PathLike[str], **kwargs: Any) -> Index:
    """Open an index directory as the kind its manifest names: `FaissIndex` for {"type": "faiss"},
    else `ExactIndex` (memory-mapped; a `SegmentedIndex` of them when `realm index add` appended
    segments), wrapped in a `FilteredIndex` when blocks were removed (`realm.index.live`). kwargs go to
    that class's `load` (or to each segment's `ExactIndex`)."""
    manifest = read_manifest(directory)
    index: Index
    if manifest.index.get("type") == "faiss":
        index = FaissIndex.load(directory, **kwargs)
    elif segment_entries(manifest):
        mmap = kwargs.pop("mmap", True)
        parts, manifest = open_segments(directory, mmap=mmap)
        index = SegmentedIndex([ExactIndex(matrix, id_offset=first, **kwargs) for first, matrix in parts])
    else:
        index = ExactIndex.load(directory, **kwargs)
    removed = removed_ids(directory, manifest)
    return FilteredIndex(index, removed) if len(removed) else index
