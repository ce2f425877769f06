"""`pipeline.json`: one directory a user can point to, naming everything a `Pipeline` answers with.

    {"format": "realm-pipeline", "version": 1,
     "model": "reader/run/last", "store": "blocks/store", "index": "index/index", "sparse": "sparse/bm25",
     "k": 5, "fusion": "weighted", "depth": 100, "weight": 0.5, "threshold": 0.3, "temperature": 1.0,
     "max_question_length": 32}

Paths inside the bundle's directory are written relative to it (the directory can be moved as a whole);
others are absolute. `sparse` is null for dense retrieval only. `realm demo` writes one in its cache
directory; `Pipeline.from_pretrained(directory)` loads it, and `realm ask`, `realm serve` and
`realm evaluate` use the last demo's when no `--model/--store/--index` is given.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realm.atomic import atomic_write_text
from realm.index.hybrid import DEFAULT_DEPTH, DEFAULT_WEIGHT, FUSIONS

BUNDLE_NAME = "pipeline.json"
BUNDLE_FORMAT = "realm-pipeline"
BUNDLE_VERSION = 1
DEFAULT_THRESHOLD = 0.3  # Pipeline's default "sure" threshold on the answer probability


@dataclass(frozen=True)
class PipelineBundle:
    """What `pipeline.json` names (paths as absolute `Path`s once read).

    Attributes:
        model: the `RealmForOpenQA` checkpoint directory (embedder + reader).
        store: the block store; index: its dense index; sparse: its BM25 index, or None (dense only).
        k: blocks read per question.
        fusion, depth, weight: how the hybrid fuses dense and BM25 (`realm.index.hybrid.HybridIndex`).
        threshold: answers with a lower probability are "not sure".
        temperature: divides the reader's joint scores before answer probabilities are taken (fitted on a
            dev set by `realm.eval.calibration.fit_temperature`; 1: the reader's own).
        max_question_length: question tokens kept, special tokens included.
    """

    model: Path
    store: Path
    index: Path
    sparse: Path | None = None
    k: int = 5
    fusion: str = "weighted"
    depth: int = DEFAULT_DEPTH
    weight: float = DEFAULT_WEIGHT
    threshold: float = DEFAULT_THRESHOLD
    temperature: float = 1.0
    max_question_length: int = 64

    def __post_init__(self) -> None:
        if self.k < 1 or self.depth < 1 or self.max_question_length < 3:
            raise ValueError(
                f"pipeline bundle: k and depth must be >= 1 and max_question_length >= 3, got k={self.k}, "
                f"depth={self.depth}, max_question_length={self.max_question_length}"
            )
        if self.fusion not in FUSIONS:
            raise ValueError(f"pipeline bundle: fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if not self.temperature > 0:
            raise ValueError(f"pipeline bundle: temperature must be > 0, got {self.temperature}")
        if self.weight < 0 or not 0 <= self.threshold <= 1:
            raise ValueError(
                f"pipeline bundle: weight must be >= 0 and threshold in [0, 1], got {self.weight}, {self.threshold}"
            )

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `Pipeline.from_pretrained` this bundle stands for."""
        return dict(
            model=self.model, store=self.store, index=self.index, sparse=self.sparse, k=self.k, fusion=self.fusion,
            depth=self.depth, weight=self.weight, threshold=self.threshold, temperature=self.temperature,
            max_question_length=self.max_question_length,
        )  # fmt: skip


def _relative(path: Path | None, root: Path) -> str | None:
    if path is None:
        return None
    path = Path(path).resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # outside the bundle's directory: keep it absolute
        return str(path)


def write_bundle(directory: str | os.PathLike[str], bundle: PipelineBundle) -> Path:
    """Write `directory/pipeline.json` atomically (paths inside `directory` relative to it)."""
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION}
    for f in dataclasses.fields(PipelineBundle):
        value = getattr(bundle, f.name)
        record[f.name] = _relative(value, root) if f.name in ("model", "store", "index", "sparse") else value
    return atomic_write_text(root / BUNDLE_NAME, json.dumps(record, indent=2) + "\n")


def is_bundle(directory: str | os.PathLike[str]) -> bool:
    """Whether `directory` holds a `pipeline.json`."""
    return (Path(directory) / BUNDLE_NAME).is_file()


def read_bundle(directory: str | os.PathLike[str]) -> PipelineBundle:
    """Read `directory/pipeline.json`; relative paths are taken relative to `directory`.

    Raises:
        FileNotFoundError: no pipeline.json there. ValueError: not a bundle, unknown or missing keys, bad values
            (the message names the file and the key).
    """
    root = Path(directory).resolve()
    path = root / BUNDLE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run `realm demo` first, or pass --model, --store and --index"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not JSON ({err}); rerun `realm demo` to rewrite it") from None
    if not isinstance(record, dict) or record.get("format") != BUNDLE_FORMAT:
        raise ValueError(f'{path}: not a pipeline bundle (no "format": "{BUNDLE_FORMAT}")')
    if record.get("version") != BUNDLE_VERSION:
        raise ValueError(
            f"{path}: bundle version {record.get('version')!r}; this realm reads version {BUNDLE_VERSION}"
        )
    names = {f.name for f in dataclasses.fields(PipelineBundle)}
    unknown = sorted(set(record) - names - {"format", "version"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known: {sorted(names)}")
    missing = [name for name in ("model", "store", "index") if not isinstance(record.get(name), str)]
    if missing:
        raise ValueError(f"{path}: {missing} must be directory paths (strings)")
    values = {k: v for k, v in record.items() if k in names}
    for name in ("model", "store", "index", "sparse"):
        if values.get(name) is not None:
            values[name] = root / values[name]  # an absolute path stays absolute
    try:
        return PipelineBundle(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None
