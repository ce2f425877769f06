"""Grow a knowledge corpus: new documents -> new blocks in the store -> only their embeddings computed.

`realm index add` appends the documents' blocks to the store as a new segment, embeds just those blocks
(with the resumable builder, into a side directory) and publishes a new `embeddings.npy` = old rows + new
rows, atomically. Run again after a crash, it recognises its own half-done work: a store whose last part
came from the same input and an index that is shorter than the store resume where they stopped instead of
appending the documents twice.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realm.corpus import BlockStore, BuildConfig, build_store, source_fingerprint
from realm.index.build import IndexBuildConfig, build_index, check_index, embedder_fingerprint
from realm.index.embeddings import IndexManifest, create_embeddings, finish_embeddings, open_embeddings

logger = logging.getLogger(__name__)


class _Tail:
    """The blocks of a store from `start` on, renumbered from 0 (what the builder embeds)."""

    def __init__(self, store: BlockStore, start: int) -> None:
        self.store, self.start = store, start

    def __len__(self) -> int:
        return len(self.store) - self.start

    def title_ids(self, ids: Sequence[int]) -> list[list[int]]:
        return self.store.title_ids([self.start + i for i in ids])

    def token_ids(self, ids: Sequence[int]) -> list[list[int]]:
        return self.store.token_ids([self.start + i for i in ids])


@dataclass
class AddResult:
    blocks_before: int
    blocks_after: int
    resumed: bool


def add_documents(
    input_path: str | os.PathLike[str],
    store_dir: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    embedder_path: str | os.PathLike[str],
    build_config: BuildConfig | None = None,
    *,
    device: Any = None,
    progress: bool = True,
    num_workers: int = 0,
) -> AddResult:
    """Add the documents under `input_path` to a store and its index without re-embedding the rest.

    Args:
        input_path: documents, as for `realm.corpus.build_store`.
        store_dir, index_dir: an existing block store and the index built from it.
        embedder_path: the `RealmEmbedder` checkpoint the index was built with (checked).
        build_config: block-building options; default the store's `max_block_tokens`.
    """
    store_dir, index_dir = Path(store_dir), Path(index_dir)
    store = BlockStore.open(store_dir)
    _, manifest = open_embeddings(index_dir)
    if manifest.extra.get("embedder_fingerprint") != embedder_fingerprint(embedder_path):
        raise ValueError(
            f"{index_dir} was built with a different embedder than {embedder_path}: new blocks would not be "
            f"comparable with the old ones; rebuild with: realm index build --store {store_dir} "
            f"--embedder {embedder_path} --out {index_dir}"
        )
    before = manifest.count
    parts = store.manifest.get("parts", [])
    resumed = (
        before < len(store)
        and bool(parts)
        and parts[-1].get("source_fingerprint") == source_fingerprint(input_path)
    )
    if not resumed:
        check_index(index_dir, store, store_dir=store_dir, embedder_path=embedder_path)
        config = build_config or BuildConfig(max_block_tokens=store.max_block_tokens or 288)
        build_store(
            input_path,
            store_dir,
            store.load_tokenizer(),
            config,
            progress,
            append=True,
            num_workers=num_workers,
        )
        store = BlockStore.open(store_dir)
    else:
        logger.info("resuming: %s already holds the blocks of %s", store_dir, input_path)

    plan = manifest.extra["build_plan"]
    side = index_dir / f".add-{before}"
    build_index(
        _Tail(store, before),
        embedder_path,
        side,
        IndexBuildConfig(**plan["build"]),
        store_fingerprint=f"{store.fingerprint}[{before}:]",
        special_ids=store.special_ids,
        device=device,
        progress=progress,
    )
    _publish(index_dir, side, manifest, store, plan)
    return AddResult(before, len(store), resumed)


def _publish(
    index_dir: Path, side: Path, manifest: IndexManifest, store: BlockStore, plan: dict[str, Any]
) -> None:
    old, _ = open_embeddings(index_dir)
    new, _ = open_embeddings(side)
    total = len(old) + len(new)
    out = create_embeddings(index_dir, total, manifest.dim, manifest.dtype)
    step = 1 << 18  # rows copied at a time: memory stays bounded whatever the index size
    for offset, source in ((0, old), (len(old), new)):
        for start in range(0, len(source), step):
            rows = source[start : start + step]
            out[offset + start : offset + start + len(rows)] = rows
    out.flush()
    del out, old, new
    extra = dict(manifest.extra)
    extra["store_fingerprint"] = store.fingerprint
    extra["build_plan"] = {**plan, "count": total, "store_fingerprint": store.fingerprint}
    extra["additions"] = [
        *extra.get("additions", []),
        {"first_block": manifest.count, "blocks": total - manifest.count},
    ]
    finish_embeddings(
        index_dir, IndexManifest(total, manifest.dim, manifest.dtype, index=manifest.index, extra=extra)
    )
    shutil.rmtree(side, ignore_errors=True)
