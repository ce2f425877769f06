"""ONNX export of the query tower and the reader, and running the exported graphs with onnxruntime.

`export_onnx(model, out)` writes, atomically (`realm.atomic.atomic_directory`: a complete directory or none):

    query_embedder.onnx   input_ids, attention_mask, token_type_ids [B, Q] int64 -> projected_score [B, D] float32
    reader.onnx           input_ids, attention_mask, token_type_ids, block_mask [R, T] int64
                          -> span_logits [R, S] float32, span_starts [S] int64, span_ends [S] int64
    config.json           the model's `RealmConfig`
    manifest.json         format, opset, the graphs' inputs and outputs, the versions that wrote them

Batch and length axes are dynamic (B, Q, R, T; T >= max_span_width for the reader, at most
max_position_embeddings). `span_logits` are the reader's span logits with spans leaving the block at
finfo(float32).min, exactly `RealmReader.span_scores` before the retrieval logit is added: the joint score
of block r and span s is `span_logits[r, s] + retrieval_logit[r]`, the answer its argmax (`realm.qa.read`).
A `RealmForOpenQA` checkpoint gives both graphs; a `RealmEmbedder` checkpoint the query tower only (which
embeds blocks too: in the released checkpoints queries and blocks share the tower).

The export uses `torch.onnx.export(dynamo=True)` (torch.export, then onnxscript); running the graphs uses
onnxruntime (`OnnxQueryTower`, `OnnxReader`, `load_onnx`). All three come with the `onnx` extra:
`pip install 'realm-lm[onnx]'`.

Shapes: B questions, Q question tokens, D retriever_proj_size, R reader rows, T reader tokens, S span candidates.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from realm.atomic import atomic_directory
from realm.config import RealmConfig
from realm.modeling.checkpoint import read_state_dict, resolve_weights
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.inference import bucketed_span_logits
from realm.modeling.outputs import RealmEmbedderOutput
from realm.modeling.reader import RealmReader

logger = logging.getLogger(__name__)

FORMAT, VERSION = "realm-onnx", 1
QUERY_FILE, READER_FILE = "query_embedder.onnx", "reader.onnx"
DEFAULT_OPSET = 18
INSTALL_HINT = "pip install 'realm-lm[onnx]'"
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def require(*modules: str) -> None:
    """Import each module or raise an ImportError that names the `onnx` extra."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export and inference need {', '.join(missing)}: {INSTALL_HINT}")


class QueryTowerGraph(nn.Module):
    """What `query_embedder.onnx` computes: `RealmEmbedder(...).projected_score`."""

    def __init__(self, embedder: RealmEmbedder) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        out = self.embedder(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.projected_score  # [B, D]


class ReaderGraph(nn.Module):
    """What `reader.onnx` computes: the reader trunk and span scorer of every row, without the retrieval logit."""

    def __init__(self, reader: RealmReader) -> None:
        super().__init__()
        self.reader = reader

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor, block_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.reader.read_rows(input_ids, attention_mask, token_type_ids, block_mask)  # [R, S], [S], [S]


@dataclass(frozen=True)
class OnnxExport:
    """What `export_onnx` wrote: the directory and the graphs in it (file names, relative)."""

    directory: Path
    files: tuple[str, ...]


def load_towers_for_export(model: str | os.PathLike[str]) -> tuple[RealmConfig, RealmEmbedder, RealmReader | None]:
    """The query tower (and the reader, for a `RealmForOpenQA` checkpoint) of a checkpoint directory, in eval mode."""
    config = RealmConfig.from_pretrained(model)
    weights = resolve_weights(model)
    names = read_state_dict(weights, "").keys()
    if any(name.startswith("embedder.") for name in names):  # RealmForOpenQA: both towers under prefixes
        embedder, reader = RealmEmbedder(config), RealmReader(config)
        embedder.load_checkpoint(weights, prefix="embedder.")
        reader.load_checkpoint(weights, prefix="reader.")
        return config, embedder.eval(), reader.eval()
    if any(name.startswith("qa_outputs.") for name in names):
        raise ValueError(
            f"{model} is a RealmReader checkpoint: export the RealmForOpenQA checkpoint it belongs to (both towers), "
            "or a RealmEmbedder checkpoint (the query tower alone)"
        )
    embedder = RealmEmbedder(config)
    embedder.load_checkpoint(weights)
    return config, embedder.eval(), None


def export_onnx(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> OnnxExport:
    """Export a checkpoint's query tower (and reader) to ONNX graphs in `out` (see the module docstring).

    Args:
        model: a `RealmForOpenQA` checkpoint directory (both graphs) or a `RealmEmbedder` one (query tower).
        out: the directory to write; replaced in one step if `overwrite`, else it must not exist.
        opset: the ONNX opset of the graphs.
    Raises:
        ImportError: onnx, onnxscript or onnxruntime is missing (`pip install 'realm-lm[onnx]'`).
        FileExistsError: `out` exists and `overwrite` is false.
    """
    require("onnx", "onnxscript")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: choose another --out, or replace it with --overwrite")
    config, embedder, reader = load_towers_for_export(model)
    graphs: dict[str, dict[str, Any]] = {}
    with atomic_directory(out) as tmp:
        graphs[QUERY_FILE] = _export(QueryTowerGraph(embedder), tmp / QUERY_FILE, config, reader=False, opset=opset)
        if reader is not None:
            graphs[READER_FILE] = _export(ReaderGraph(reader), tmp / READER_FILE, config, reader=True, opset=opset)
        config.save_pretrained(tmp)
        manifest = {
            "format": FORMAT, "version": VERSION, "opset": opset, "source": str(model), "graphs": graphs,
            "torch": torch.__version__, "realm_lm": _realm_version(),
        }  # fmt: skip
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("wrote %s to %s", ", ".join(graphs), out)
    return OnnxExport(out, tuple(graphs))


def _export(module: nn.Module, path: Path, config: RealmConfig, *, reader: bool, opset: int) -> dict[str, Any]:
    """One graph: trace `module` with dynamic row and token axes, write it as a single .onnx file."""
    from torch.export import Dim

    rows = Dim("rows", min=1, max=1 << 20)
    # The reader needs T >= max_span_width (span candidates of every width); both need T <= max positions.
    tokens = Dim("tokens", min=config.max_span_width if reader else 1, max=config.max_position_embeddings)
    length = max(config.max_span_width + 2, 8)
    example = torch.ones(2, length, dtype=torch.long)
    inputs = [*TEXT_INPUTS, "block_mask"] if reader else list(TEXT_INPUTS)
    outputs = ["span_logits", "span_starts", "span_ends"] if reader else ["projected_score"]
    args = tuple(example.clone() for _ in inputs)
    dynamic = {name: {0: rows, 1: tokens} for name in inputs}  # the graphs' forward arguments bear these names
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed": none of its operators is used here
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on axis names and deprecations
        program = torch.onnx.export(
            module, args, dynamo=True, input_names=inputs, output_names=outputs, dynamic_shapes=dynamic,
            opset_version=opset, external_data=False, verbose=False,
        )  # fmt: skip
    registration.setLevel(level)
    program.save(str(path), external_data=False)
    return {"inputs": inputs, "outputs": outputs, "bytes": path.stat().st_size}


def _realm_version() -> str:
    from realm import __version__

    return __version__


# -- running the graphs ------------------------------------------------------------------------------------


def _session(path: Path, threads: int | None) -> Any:
    require("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the graph optimiser's notes are not the user's business
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _int64(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.cpu().numpy()
    return np.ascontiguousarray(array, dtype=np.int64)


class OnnxQueryTower:
    """`query_embedder.onnx` in onnxruntime: [B, Q] ids, mask, types -> projected_score [B, D] (float32 numpy)."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        self.session = _session(Path(path), threads)

    def __call__(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> np.ndarray:
        feeds = dict(zip(TEXT_INPUTS, map(_int64, (input_ids, attention_mask, token_type_ids)), strict=True))
        return self.session.run(None, feeds)[0]


class OnnxReader:
    """`reader.onnx` in onnxruntime: [R, T] ids, mask, types, block mask -> span logits [R, S], starts, ends [S]."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        self.session = _session(Path(path), threads)

    def __call__(
        self, input_ids: Any, attention_mask: Any, token_type_ids: Any, block_mask: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        names = (*TEXT_INPUTS, "block_mask")
        feeds = dict(zip(names, map(_int64, (input_ids, attention_mask, token_type_ids, block_mask)), strict=True))
        span_logits, starts, ends = self.session.run(None, feeds)
        return span_logits, starts, ends


class OnnxQueryModule:
    """The query tower graph where a `RealmEmbedder` is expected (`realm.qa.retrieve`, `Pipeline`,
    `realm.index.build.embed_blocks`): called with torch tensors, returns a `RealmEmbedderOutput` whose
    `projected_score` [B, D] came from onnxruntime."""

    device = torch.device("cpu")

    def __init__(self, graph: OnnxQueryTower, config: RealmConfig) -> None:
        self.graph = graph
        self.config = config

    def eval(self) -> OnnxQueryModule:
        return self

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None
    ) -> RealmEmbedderOutput:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        return RealmEmbedderOutput(projected_score=torch.from_numpy(self.graph(input_ids, mask, types)))


class OnnxReaderModule:
    """The reader graph where a `RealmReader` is read through (`realm.qa.read`, `Pipeline`): `span_logits` in
    length buckets, as `RealmReader.span_logits`."""

    device = torch.device("cpu")

    def __init__(self, graph: OnnxReader, config: RealmConfig) -> None:
        self.graph = graph
        self.config = config

    def eval(self) -> OnnxReaderModule:
        return self

    def span_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        block_mask: torch.Tensor,
        bucket_rows: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        def rows(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.graph(ids, mask, types, block)[0])  # [m, S_l]

        return bucketed_span_logits(
            rows, input_ids, attention_mask, token_type_ids, block_mask, bucket_rows, self.config.max_span_width
        )


def onnx_towers(directory: str | os.PathLike[str], threads: int | None = None) -> tuple[OnnxQueryModule, OnnxReaderModule]:
    """An export of a `RealmForOpenQA` checkpoint as the (embedder, reader) pair a `realm.pipeline.Pipeline` takes:

        embedder, reader = onnx_towers("model-onnx")
        pipeline = Pipeline(embedder, reader, BlockStore.open(store), open_index(index))
    """
    models = load_onnx(directory, threads)
    if models.reader is None:
        raise ValueError(f"{directory} holds the query tower only: export a RealmForOpenQA checkpoint for the reader")
    return OnnxQueryModule(models.query, models.config), OnnxReaderModule(models.reader, models.config)


@dataclass
class OnnxModels:
    """An export directory opened in onnxruntime: the query tower, the reader (None if not exported), the config."""

    query: OnnxQueryTower
    reader: OnnxReader | None
    config: RealmConfig
    manifest: dict[str, Any]


def load_onnx(directory: str | os.PathLike[str], threads: int | None = None) -> OnnxModels:
    """Open what `export_onnx` wrote (`threads`: onnxruntime's intra-op threads, default all cores)."""
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{directory} has no manifest.json: write one with `realm export onnx --model M --out {directory}`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: format is {manifest.get('format')!r}, not {FORMAT!r}")
    reader = OnnxReader(directory / READER_FILE, threads) if READER_FILE in manifest["graphs"] else None
    return OnnxModels(OnnxQueryTower(directory / QUERY_FILE, threads), reader, RealmConfig.from_pretrained(directory), manifest)
