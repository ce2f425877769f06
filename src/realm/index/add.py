"""Grow a knowledge corpus: new documents -> new blocks in the store -> only their embeddings computed.

`realm index add` appends the documents' blocks to the store as a new segment, embeds just those blocks
with the resumable builder into a new index segment `segments/<first block id>/` and publishes it by
rewriting only the manifest (`realm.index.update.publish_change`): the existing rows are never read or
rewritten, so the cost is proportional to what is added (a FAISS index beside it gets the new rows, and
is written whole: FAISS has no append to a file). With `replace=True` the older blocks of documents with
the same titles are removed in the same publication (a corrected article replaces the old one).

Run again after a crash (even kill -9), it recognises its own half-done work: a store whose last part
came from the same input and an index shorter than the store resume where they stopped (the builder
skips the chunks already embedded) instead of appending the documents twice; an addition that was
fully published is reported as done.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realm.corpus import BlockStore, BuildConfig, build_store, source_fingerprint
from realm.corpus.removal import find_blocks, remove_blocks
from realm.index.build import IndexBuildConfig, build_index, check_index, embedder_fingerprint
from realm.index.embeddings import read_manifest
from realm.index.live import SEGMENTS_DIR, segment_dir_name
from realm.index.update import IndexChange, publish_change

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
    replaced: int = 0  # older blocks removed because a document of the same title was added
    change: IndexChange | None = None  # None: the addition had already been published


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
    replace: bool = False,
) -> AddResult:
    """Add the documents under `input_path` to a store and its index without re-embedding the rest.

    Args:
        input_path: documents, as for `realm.corpus.build_store`.
        store_dir, index_dir: an existing block store and the index built from it.
        embedder_path: the `RealmEmbedder` checkpoint the index was built with (checked).
        build_config: block-building options; default the store's `max_block_tokens`.
        replace: remove the older blocks of documents that have the same titles as the added ones.
    """
    store_dir, index_dir = Path(store_dir), Path(index_dir)
    store = BlockStore.open(store_dir)
    manifest = read_manifest(index_dir)
    if manifest.extra.get("embedder_fingerprint") != embedder_fingerprint(embedder_path):
        raise ValueError(
            f"{index_dir} was built with a different embedder than {embedder_path}: new blocks would not be "
            f"comparable with the old ones; rebuild with: realm index build --store {store_dir} "
            f"--embedder {embedder_path} --out {index_dir}"
        )
    before = manifest.count
    parts = store.manifest.get("parts", [])
    ours = bool(parts) and parts[-1].get("source_fingerprint") == source_fingerprint(input_path)
    if ours and before == len(store):
        logger.info("%s was already added to %s and %s", input_path, store_dir, index_dir)
        return AddResult(int(parts[-1]["first_block"]), before, True)
    resumed = ours and before < len(store)
    if not resumed:
        check_index(index_dir, store, store_dir=store_dir, embedder_path=embedder_path)
        config = build_config or BuildConfig(max_block_tokens=store.max_block_tokens or 288)
        build_store(
            input_path, store_dir, store.load_tokenizer(), config, progress, append=True, num_workers=num_workers,
        )  # fmt: skip
        store = BlockStore.open(store_dir)
    else:
        logger.info("resuming: %s already holds the blocks of %s", store_dir, input_path)

    replaced = None
    if replace:  # older blocks of the same titles; recomputed identically on a resumed run
        titles = {t for batch in store.iter_batches(columns=("title",), start=before) for t in batch.titles}
        replaced, _, _ = find_blocks(store, titles=titles, below=before)
        remove_blocks(store_dir, replaced)

    plan = manifest.extra["build_plan"]
    segment = index_dir / SEGMENTS_DIR / segment_dir_name(before)
    build_index(
        _Tail(store, before),
        embedder_path,
        segment,
        IndexBuildConfig(**plan["build"]),
        store_fingerprint=f"{store.fingerprint}[{before}:]",
        special_ids=store.special_ids,
        device=device,
        progress=progress,
    )
    extra = {
        "store_fingerprint": store.fingerprint,
        "build_plan": {**plan, "count": len(store), "store_fingerprint": store.fingerprint},
        "additions": [*manifest.extra.get("additions", []), {"first_block": before, "blocks": len(store) - before}],
    }
    change = publish_change(
        index_dir, segment=segment, first=before, remove=replaced, extra=extra,
        rebuild_command=_rebuild_command(store_dir, embedder_path, index_dir, manifest.index),
    )  # fmt: skip
    return AddResult(before, len(store), resumed, int(len(replaced)) if replaced is not None else 0, change)


def _rebuild_command(store_dir: Path, embedder: Any, index_dir: Path, meta: dict[str, Any]) -> str:
    """The `realm index build` command that rebuilds this index as it is (kind and parameters)."""
    from realm.index.ann import build_args_for

    return f"realm index build --store {store_dir} --embedder {embedder} --out {index_dir}{build_args_for(meta)}"
