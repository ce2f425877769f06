"""Verify before use: the checks every caller runs on a store, an index, a sparse index and a checkpoint.

One path for all callers. `Pipeline.from_pretrained` (hence `realm ask`, `realm serve` at start-up and
`realm evaluate`) and the server's `/reload` call `check_corpus`; `realm verify DIR` calls `verify_path`.
What is checked:

- every manifest and `config.json` field by field (`realm.schema`, run by the readers themselves);
- a store's segment files against the sha256 its manifest records (`verify_store`: on `/reload` and by
  `realm verify`, where reading every byte is affordable; opening a store checks sizes only);
- that an index was built from this store (its recorded store fingerprint) and with the embedder the
  model pairs with (`embedder_weights_fingerprint`, a sha256 over the embedder's tensors, recorded by
  `realm index build`): the model's own query tower, or, for a fine-tuned model whose query tower moved
  away from the frozen block tower, the block embedder recorded in its config as
  `index_embedder_fingerprint` (written by `realm finetune`). Indexes and checkpoints written before these
  fields existed carry none and are checked by size and store only;
- that the store's vocabulary fits the model's (a larger one would index past the embedding table).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from realm.config import CONFIG_NAME, RealmConfig
from realm.corpus import BlockStore
from realm.corpus.segments import FORMAT_NAME as STORE_FORMAT
from realm.corpus.segments import content_fingerprint, file_sha256
from realm.index.build import check_index
from realm.index.embeddings import MANIFEST_FORMAT as INDEX_FORMAT
from realm.modeling.checkpoint import check_vocabulary, module_fingerprint
from realm.schema import SchemaError, read_json_object

logger = logging.getLogger(__name__)

FINGERPRINT_KEY = "embedder_weights_fingerprint"  # in an index manifest: the embedder it was built with
PAIRED_KEY = "index_embedder_fingerprint"  # in a model's config.json: the block embedder it was tuned with


class IntegrityError(ValueError):
    """An artefact whose bytes or provenance do not match what its manifest says."""


def record_index_embedder(model_config: RealmConfig, index_manifest_extra: dict[str, Any]) -> None:
    """Note in a model's config which block embedder its index was built with (a fine-tuned query tower no
    longer equals it), so that `check_corpus` accepts that index, and only that one, with this model."""
    built_with = index_manifest_extra.get(FINGERPRINT_KEY)
    if built_with is not None:
        model_config.extra[PAIRED_KEY] = built_with


def verify_store(store: BlockStore) -> None:
    """Read every segment file and compare its sha256 with the manifest's (then the content fingerprint).

    Raises:
        IntegrityError: naming the segment that differs and the fix.
    """
    digests = []
    for entry in store.manifest["segments"]:
        path = store.path / entry["file"]
        digest = file_sha256(path)
        if digest != entry["sha256"].removeprefix("sha256:"):
            raise IntegrityError(
                f"{path} is damaged: its sha256 is {digest[:12]}... but the manifest records "
                f"{entry['sha256'][:12]}...; rebuild the store with `realm blocks build`"
            )
        digests.append(entry["sha256"])
    if content_fingerprint(store.tokenizer_fingerprint, digests) != store.fingerprint:
        raise IntegrityError(
            f"{store.path / 'manifest.json'}: its fingerprint does not match its segments; rebuild the store"
        )


def check_corpus(
    store: BlockStore,
    index_dir: str | os.PathLike[str],
    embedder: torch.nn.Module,
    model: str | os.PathLike[str] | None = None,
) -> None:
    """The checks before a model answers from `store` through the index at `index_dir`.

    Args:
        store: the opened block store.
        index_dir: the dense index directory.
        embedder: the model's query tower (a `RealmEmbedder`, already loaded).
        model: the checkpoint directory, for messages.
    Raises:
        ValueError: an empty store, a vocabulary too large for the model, an index of another size, built
            from another store or with another embedder, or of another embedding size; each names the fix.
    """
    model = model or "the model"
    config: RealmConfig = embedder.config
    if len(store) == 0:
        raise ValueError(f"the store {store.path} holds no blocks; build it from documents with `realm blocks build`")
    check_vocabulary(int(store.manifest["tokenizer"]["vocab_size"]), store.path, config, model)
    manifest = check_index(index_dir, store, store_dir=store.path)
    rebuild = f"realm index build --store {store.path} --embedder <the model's embedder> --out {index_dir}"
    if manifest.dim != config.retriever_proj_size:
        raise ValueError(
            f"{index_dir} holds {manifest.dim}-d embeddings but {model} makes {config.retriever_proj_size}-d "
            f"ones; rebuild it with: {rebuild}"
        )
    built_with = manifest.extra.get(FINGERPRINT_KEY)
    if built_with is None:
        logger.info("%s records no embedder fingerprint (an older index): not compared", index_dir)
        return
    paired = config.extra.get(PAIRED_KEY)
    expected = paired if paired is not None else module_fingerprint(embedder)
    if built_with != expected:
        whose = "the block embedder it was fine-tuned with" if paired is not None else "its embedder"
        raise ValueError(
            f"{index_dir} was built with another embedder (weights {built_with.removeprefix('sha256:')[:12]}) "
            f"than {whose} ({expected.removeprefix('sha256:')[:12]}), so retrieval scores would not mean "
            f"anything to {model}; rebuild it with: {rebuild}"
        )


# ---------------------------------------------------------------------------------------------- realm verify


@dataclass
class Report:
    """What `verify_path` found: the kind of artefact, what was checked, and the first problem if any."""

    path: Path
    kind: str
    checked: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        state = "intact" if self.ok else f"DAMAGED: {self.problem}"
        return f"{self.path}: {self.kind}; {state}" + (f" (checked: {', '.join(self.checked)})" if self.checked else "")


def _kind(path: Path) -> str:
    if (path / CONFIG_NAME).is_file() and not (path / "manifest.json").is_file():
        return "checkpoint"
    manifest = path / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{path} is not a block store, index, sparse index or checkpoint (no manifest.json or config.json)"
        )
    data = read_json_object(manifest, "a manifest")
    fmt = data.get("format")
    if fmt == STORE_FORMAT:
        return "block store"
    if fmt == INDEX_FORMAT or (fmt is None and "count" in data):
        return "dense index"
    if data.get("kind") == "bm25":
        return "sparse index"
    raise SchemaError(f"{manifest}: format {fmt!r} is none of the artefacts realm writes")


def verify_path(path: str | os.PathLike[str]) -> Report:
    """Say what `path` is and whether it is intact: every manifest field, every file's checksum or shape.

    Raises:
        FileNotFoundError: `path` is none of the artefacts (the report cannot even name a kind).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory; pass a store, index, sparse index or checkpoint directory")
    report = Report(path, _kind(path))
    try:
        if report.kind == "block store":
            store = BlockStore.open(path)
            report.checked.append(f"manifest ({len(store):,} blocks)")
            verify_store(store)
            report.checked.append(f"sha256 of {len(store.manifest['segments'])} segment(s)")
        elif report.kind == "dense index":
            from realm.index import open_index

            index = open_index(path)  # a FAISS index is read too
            report.checked.append(f"manifest and matrix ({len(index):,} x {index.dim})")
            report.checked.append(_finite(path))
        elif report.kind == "sparse index":
            from realm.index.sparse import SparseIndex

            sparse = SparseIndex.open(path)
            report.checked.append(f"manifest and BM25 arrays ({len(sparse):,} blocks)")
        else:
            report.checked.extend(_verify_checkpoint(path))
    except (OSError, ValueError, ImportError) as err:
        report.problem = str(err)
    return report


def _finite(directory: Path) -> str:
    import numpy as np

    from realm.index.embeddings import open_embeddings

    matrix, _ = open_embeddings(directory)
    for start in range(0, len(matrix), 1 << 16):
        if not np.isfinite(matrix[start : start + (1 << 16)]).all():
            raise IntegrityError(f"{directory}: rows from {start} on hold NaN or infinite values; rebuild the index")
    return "every value finite"


def _verify_checkpoint(path: Path) -> list[str]:
    from realm.modeling.checkpoint import read_state_dict, resolve_weights

    config = RealmConfig.from_pretrained(path)
    weights = resolve_weights(path)
    state = read_state_dict(weights)  # reads every tensor: a truncated or damaged file fails here
    return [f"config.json ({config.num_hidden_layers} layers, hidden {config.hidden_size})",
            f"{weights.name} ({len(state)} tensors read)"]  # fmt: skip
