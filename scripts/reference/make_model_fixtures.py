#!/usr/bin/env python
"""Generate reference fixtures for realm-lm from Hugging Face transformers' REALM port.

This script is the ONLY place in the project that imports ``transformers``. It is run once, by hand, in a
throwaway virtualenv (see ``scripts/reference/README.md``); the library and its tests never import
transformers and only read the files written here.

For every case it builds a tiny random REALM model with the port, runs one forward pass (plus a backward pass
for train-mode cases) and writes, under ``tests/fixtures/reference/<case>/``:

* ``config.json`` + ``model.safetensors`` (and for some cases ``pytorch_model.bin``), written by the port's own
  ``save_pretrained``;
* ``io.safetensors``: a flat dict ``input.<kwarg>``, ``output.<field>[.<i>]``, ``grad.<param>`` (train cases),
  and for the Open-QA cases ``retriever.<key>`` and ``intermediate.<name>``;
* ``case.json``: class, mode, non-tensor kwargs, output field order, dtype of every io tensor, notes;
* ``state_dict_keys.json``: ``state_dict()`` keys/shapes in order, the keys present in each saved weights file,
  weight tying facts and the loading report of ``from_pretrained``.

Finally every case is reloaded with ``from_pretrained`` and re-run; outputs (and gradients) must be bitwise
identical to what was saved. This checks the fixtures, not realm-lm.

Usage: ``/work/refenv/bin/python scripts/reference/make_model_fixtures.py [--out DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    RealmConfig,
    RealmEmbedder,
    RealmForOpenQA,
    RealmKnowledgeAugEncoder,
    RealmReader,
    RealmRetriever,
    RealmScorer,
    RealmTokenizer,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.models.deprecated.realm.modeling_realm import RealmLMPredictionHead
from transformers.utils import ModelOutput

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "reference"
FORMAT_VERSION = 1

# ---------------------------------------------------------------------------------------------------------------
# Toy vocabulary and evidence blocks
# ---------------------------------------------------------------------------------------------------------------

# WordPiece vocab (line index = id). [PAD]=0 as in the real uncased BERT vocab; note that RealmConfig.pad_token_id
# keeps its default 1 (= [UNK] here), which only sets nn.Embedding(padding_idx=1): row 1 gets no gradient.
TOY_VOCAB: list[str] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "the", "is", "of", "a", "in", "and", "what", "which", "capital", "city", "largest", "country",
    "france", "paris", "germany", "berlin", "italy", "rome", "england", "london", "spain", "madrid",
    "japan", "tokyo", "river", "seine", "flow", "##s", "through", "eiffel", "tower", "famous", "many",
    "old", "bridge", "are", "known", "as", "has", "its", "museum", "##ed", "##ly", "?", ".", ",",
]  # fmt: skip

# Evidence blocks (UTF-8 bytes in the port). "paris" occurs in blocks 0, 2, 4 and 7; "tokyo" in none.
# Block 4 is long enough to be truncated at reader_seq_len; block 7 contains out-of-vocabulary words ([UNK]).
BLOCK_RECORDS: list[str] = [
    "paris is the capital of france.",
    "berlin is the capital and largest city of germany.",
    "the eiffel tower is a famous tower in paris.",
    "rome is the capital of italy.",
    "the river seine flows through paris and many old bridges are known as famous bridges of the city.",
    "london is the capital of england.",
    "madrid is the largest city of spain.",
    "notre dame is an old church in paris.",
]
QUESTION = "the capital of france?"
ANSWER = "paris"
NO_ANSWER = "tokyo"


def tiny_config(train: bool, **overrides: Any) -> RealmConfig:
    """The tiny config shared by all cases. Train-mode cases disable dropout so that runs are deterministic."""
    kwargs: dict[str, Any] = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        retriever_proj_size=16,
        span_hidden_size=24,
        max_span_width=4,
        reader_beam_size=3,
        searcher_beam_size=5,
        reader_seq_len=24,
        num_candidates=3,
        num_block_records=8,
        max_position_embeddings=64,
        hidden_act="gelu_new",
    )
    if train:
        kwargs.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    kwargs.update(overrides)
    return RealmConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Random weights
# ---------------------------------------------------------------------------------------------------------------


def randomize_(model: PreTrainedModel, seed: int) -> None:
    """Overwrite every parameter (and the `block_emb` buffer) with seeded random values.

    Non-trivial LayerNorm/bias values make sure a missing bias or LayerNorm in a re-implementation cannot hide.
    `named_parameters()` de-duplicates shared tensors, so tied weights (encoder decoder <-> word embeddings,
    decoder.bias <-> predictions.bias, scorer query_embedder <-> embedder) receive a single value and stay tied.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    with torch.no_grad():
        for name, param in model.named_parameters():
            is_layer_norm = "LayerNorm" in name or "layer_normalization" in name
            if is_layer_norm and name.endswith("weight"):
                param.copy_(1.0 + normal(param.shape, 0.1))
            elif name.endswith("bias"):
                param.copy_(normal(param.shape, 0.1))
            else:  # matrices and embeddings
                param.copy_(normal(param.shape, 0.2))
        for name, buf in model.named_buffers():
            if name == "block_emb":
                buf.copy_(normal(buf.shape, 0.2))


# ---------------------------------------------------------------------------------------------------------------
# Helpers: flattening outputs, gradients, tying facts, saving
# ---------------------------------------------------------------------------------------------------------------


def flatten_into(prefix: str, value: Any, out: dict[str, torch.Tensor]) -> None:
    """Flatten (nested) ModelOutputs / tuples of tensors into `out` with dotted keys; None fields are skipped."""
    if value is None:
        return
    if isinstance(value, torch.Tensor):
        out[prefix] = value.detach().clone().contiguous()
    elif isinstance(value, ModelOutput):
        for key, item in value.items():  # ModelOutput.items() yields only non-None fields, in field order
            flatten_into(f"{prefix}.{key}", item, out)
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            flatten_into(f"{prefix}.{i}", item, out)
    else:
        raise TypeError(f"cannot flatten {prefix}: {type(value)}")


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def collect_grads(model: PreTrainedModel) -> tuple[dict[str, torch.Tensor], list[str]]:
    """`grad.<name>` for every parameter with a gradient, plus the names of parameters that got none."""
    grads: dict[str, torch.Tensor] = {}
    without: list[str] = []
    for name, param in model.named_parameters():
        if param.grad is None:
            without.append(name)
        else:
            grads[f"grad.{name}"] = param.grad.detach().clone()
    return grads, without


def tying_facts(model: PreTrainedModel) -> dict[str, Any]:
    """For every MLM prediction head: is decoder.weight the word-embedding tensor, is decoder.bias predictions.bias."""
    facts: dict[str, Any] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if not isinstance(module, RealmLMPredictionHead):
            continue
        owner = name[: -len("cls.predictions")]  # "", "embedder.", "reader.", "query_embedder."
        word_emb = model.get_submodule(owner + "realm").embeddings.word_embeddings.weight
        dec_w = module.decoder.weight
        facts[name] = {
            "word_embeddings_key": owner + "realm.embeddings.word_embeddings.weight",
            "decoder_weight_is_word_embeddings": dec_w is word_emb,
            "decoder_weight_same_storage_as_word_embeddings": dec_w.untyped_storage().data_ptr()
            == word_emb.untyped_storage().data_ptr(),
            "decoder_bias_is_predictions_bias": module.decoder.bias is module.bias,
        }
    if isinstance(model, RealmScorer):
        facts["query_embedder_is_embedder"] = model.query_embedder is model.embedder
    return facts


def weights_file_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    return list(torch.load(path, map_location="cpu", weights_only=True).keys())


# The port itself refuses `save_pretrained(safe_serialization=True)` for RealmReader, RealmScorer and RealmForOpenQA
# ("shared tensors ... mismatching the transformers base configuration"), because the aliases
# (reader `cls.predictions.decoder.bias` <-> `cls.predictions.bias`; scorer `query_embedder.*` <-> `embedder.*`)
# are not declared in `_tied_weights_keys`. We follow the error message's own advice: declare them on the
# instance via `_dynamic_tied_weights_keys`, so transformers' normal de-duplication writes the safetensors file.
# These classes additionally get a `pytorch_model.bin` (the port's native format, what the hub ships).
EXTRA_TIED_KEYS: dict[type[PreTrainedModel], list[str]] = {
    RealmReader: [r"^cls\.predictions\.decoder\.bias$"],
    RealmScorer: [r"^query_embedder\."],
    RealmForOpenQA: [r"^reader\.cls\.predictions\.decoder\.bias$"],
}


def save_weights(model: PreTrainedModel, case_dir: Path, also_bin: bool) -> dict[str, str]:
    """Save config + weights with the port's save_pretrained; return {file name: how it was produced}."""
    produced: dict[str, str] = {}
    extra = EXTRA_TIED_KEYS.get(type(model))
    if extra is None:
        model.save_pretrained(case_dir, safe_serialization=True)
        produced["model.safetensors"] = "save_pretrained(safe_serialization=True)"
    else:
        try:
            model.save_pretrained(case_dir, safe_serialization=True)
            raise AssertionError(f"{type(model).__name__}: expected the port to refuse safetensors saving")
        except RuntimeError as err:
            assert "shared tensors" in str(err), err
        model._dynamic_tied_weights_keys = extra  # instance attribute, see EXTRA_TIED_KEYS
        model.save_pretrained(case_dir, safe_serialization=True)
        del model._dynamic_tied_weights_keys
        produced["model.safetensors"] = (
            "save_pretrained(safe_serialization=True) with instance _dynamic_tied_weights_keys="
            f"{extra} (the port alone raises RuntimeError on shared tensors for this class)"
        )
    if also_bin:
        model.save_pretrained(case_dir, safe_serialization=False)
        produced["pytorch_model.bin"] = (
            "save_pretrained(safe_serialization=False): torch.save of the full state_dict"
        )
    return produced


# ---------------------------------------------------------------------------------------------------------------
# Case description and execution
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    model_cls: type[PreTrainedModel]
    mode: str  # "eval" | "train"
    seed: int
    inputs: dict[str, torch.Tensor]  # tensor forward kwargs
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # non-tensor forward kwargs
    loss_fn: Callable[[Any], torch.Tensor] | None = None  # train mode: what .backward() is called on
    loss_fn_desc: str | None = None
    notes: str = ""
    also_bin: bool = False
    openqa: bool = False  # RealmForOpenQA: needs a retriever, records retrieval intermediates
    save_retriever: bool = False  # also write retriever.save_pretrained(case_dir) -> block_records.npy
    emulate_old_bin: bool = False  # encoder_bin: only pytorch_model.bin, with an old-style position_ids key
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # extra facts for case.json


class RecordingRetriever(RealmRetriever):
    """RealmRetriever that remembers what the model passed in and what it returned (no behaviour change)."""

    def __init__(self, block_records: np.ndarray, tokenizer: RealmTokenizer) -> None:
        super().__init__(block_records, tokenizer)
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self,
        retrieved_block_ids: torch.Tensor,
        question_input_ids: torch.Tensor,
        answer_ids: list[list[int]] | None,
        max_length: int | None = None,
        return_tensors: str = "pt",
    ) -> tuple[Any, Any, Any, Any]:
        result = super().__call__(
            retrieved_block_ids, question_input_ids, answer_ids, max_length, return_tensors
        )
        self.calls.append({"retrieved_block_ids": retrieved_block_ids.clone(), "result": result})
        return result


def make_tokenizer(tmp_dir: Path) -> RealmTokenizer:
    vocab_file = tmp_dir / "vocab.txt"
    vocab_file.write_text("\n".join(TOY_VOCAB) + "\n", encoding="utf-8")
    return RealmTokenizer(str(vocab_file))


def block_records_array() -> np.ndarray:
    return np.array([b.encode("utf-8") for b in BLOCK_RECORDS], dtype=object)


def build_model(case: Case, tokenizer: RealmTokenizer) -> PreTrainedModel:
    torch.manual_seed(case.seed)  # construction-time init is overwritten anyway
    config = tiny_config(train=case.mode == "train")
    if case.openqa:
        retriever = RecordingRetriever(block_records_array(), tokenizer)
        model = RealmForOpenQA(config, retriever=retriever)
    else:
        model = case.model_cls(config)
    randomize_(model, case.seed)
    return model


def run_case(model: PreTrainedModel, case: Case) -> tuple[Any, dict[str, torch.Tensor], list[str]]:
    """Run the forward (and backward in train mode); return (output, extra io tensors, params without grad)."""
    extra: dict[str, torch.Tensor] = {}
    hooks = []
    if case.openqa:
        assert isinstance(model, RealmForOpenQA) and isinstance(model.retriever, RecordingRetriever)
        model.retriever.calls.clear()

        def embedder_hook(_mod: torch.nn.Module, _args: Any, out: Any) -> None:
            extra["intermediate.question_projection"] = out.projected_score.detach().clone()

        def reader_pre_hook(_mod: torch.nn.Module, _args: Any, kwargs: dict[str, Any]) -> None:
            extra["intermediate.relevance_score"] = kwargs["relevance_score"].detach().clone()
            extra["intermediate.block_mask"] = kwargs["block_mask"].detach().clone()

        hooks.append(model.embedder.register_forward_hook(embedder_hook))
        hooks.append(model.reader.register_forward_pre_hook(reader_pre_hook, with_kwargs=True))

    model.train(case.mode == "train")
    model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(case.mode == "train"):
        output = model(**case.inputs, **case.kwargs)
        if case.mode == "train":
            assert case.loss_fn is not None
            case.loss_fn(output).backward()
    for h in hooks:
        h.remove()

    grads: dict[str, torch.Tensor] = {}
    without_grad: list[str] = []
    if case.mode == "train":
        grads, without_grad = collect_grads(model)
    extra.update(grads)

    if case.openqa:
        assert isinstance(model, RealmForOpenQA)
        (call,) = model.retriever.calls
        has_answers, start_pos, end_pos, concat = call["result"]
        ids = call["retrieved_block_ids"]
        # Recompute the exact MIPS the port does (einsum + topk over block_emb) and check it matches.
        with torch.no_grad():
            scores = torch.einsum("BD,QD->QB", model.block_emb, extra["intermediate.question_projection"])
            expected = torch.topk(scores, k=model.searcher_beam_size, dim=-1).indices.squeeze()
        assert torch.equal(ids, expected), (ids, expected)
        extra["intermediate.batch_scores"] = scores.clone()
        extra["output.retrieved_block_ids"] = ids
        for key in ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask"):
            extra[f"retriever.{key}"] = concat[key].clone()
        if has_answers is not None:
            extra["output.has_answers"] = torch.tensor(has_answers, dtype=torch.bool)
            extra["output.start_pos_all"] = torch.tensor(start_pos, dtype=torch.long)
            extra["output.end_pos_all"] = torch.tensor(end_pos, dtype=torch.long)
    return output, extra, without_grad


def io_tensors(case: Case, output: Any, extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {f"input.{k}": v.clone().contiguous() for k, v in case.inputs.items()}
    flatten_into("output", output, tensors)
    for key, value in extra.items():
        tensors[key] = value.contiguous()
    return tensors


def compare(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], what: str) -> None:
    assert expected.keys() == got.keys(), (what, sorted(set(expected) ^ set(got)))
    bad = []
    for key, exp in expected.items():
        g = got[key]
        if exp.dtype != g.dtype or exp.shape != g.shape:
            bad.append(f"{key}: {exp.dtype}{list(exp.shape)} vs {g.dtype}{list(g.shape)}")
        elif not torch.equal(exp, g):
            bad.append(f"{key}: max abs diff {(exp.double() - g.double()).abs().max().item():.3g}")
    assert not bad, f"{what}: " + "; ".join(bad)


# ---------------------------------------------------------------------------------------------------------------
# Writing one case
# ---------------------------------------------------------------------------------------------------------------


def write_case(case: Case, out_root: Path, tmp_dir: Path) -> dict[str, Any]:
    case_dir = out_root / case.name
    case_dir.mkdir(parents=True)
    tokenizer = make_tokenizer(tmp_dir)
    model = build_model(case, tokenizer)

    # The state dict as the port builds it, before saving (keys in order, with shapes).
    sd_info = [
        {"key": k, "shape": list(v.shape), "dtype": dtype_name(v)} for k, v in model.state_dict().items()
    ]
    tying = tying_facts(model)
    original_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    named_params = [n for n, _ in model.named_parameters()]

    output, extra, without_grad = run_case(model, case)
    tensors = io_tensors(case, output, extra)

    # ---- weights ----
    weights_files: dict[str, str]
    if case.emulate_old_bin:
        # Emulate a 2022 hub file: pytorch_model.bin that still carries the then-persistent position_ids buffer.
        model.save_pretrained(case_dir, safe_serialization=False)
        bin_path = case_dir / "pytorch_model.bin"
        old = torch.load(bin_path, map_location="cpu", weights_only=True)
        new: OrderedDict[str, torch.Tensor] = OrderedDict()
        for k, v in old.items():
            if k == "realm.embeddings.word_embeddings.weight":
                # RealmEmbeddings has no own parameters, so its own buffers came first in old state dicts.
                max_pos = model.config.max_position_embeddings
                new["realm.embeddings.position_ids"] = torch.arange(max_pos).expand((1, -1)).clone()
            new[k] = v
        torch.save(new, bin_path)
        weights_files = {
            "pytorch_model.bin": "save_pretrained(safe_serialization=False), then re-saved with torch.save after "
            "inserting realm.embeddings.position_ids = arange(max_position_embeddings)[None] (int64) before "
            "realm.embeddings.word_embeddings.weight, to emulate 2022 hub checkpoints"
        }
    else:
        weights_files = save_weights(model, case_dir, case.also_bin)

    # ---- Open-QA side files: tokenizer, block records ----
    extra_case: dict[str, Any] = {}
    if case.openqa:
        assert isinstance(model, RealmForOpenQA)
        tokenizer.save_pretrained(case_dir)
        (case_dir / "block_records.json").write_text(
            json.dumps(BLOCK_RECORDS, indent=1) + "\n", encoding="utf-8"
        )
        if case.save_retriever:
            # block_records.npy (pickled numpy object array of bytes) + tokenizer files
            model.retriever.save_pretrained(str(case_dir))
        pred = tensors["output.predicted_answer_ids"]
        extra_case = {
            "question": QUESTION,
            **case.meta,
            "block_records_file": "block_records.json",
            "block_records_npy": "block_records.npy" if case.save_retriever else None,
            "retrieved_block_ids": tensors["output.retrieved_block_ids"].tolist(),
            "retrieved_blocks": [BLOCK_RECORDS[i] for i in tensors["output.retrieved_block_ids"].tolist()],
            "decoded_answer": tokenizer.decode(pred),
            "searcher_beam_size_used": int(tensors["output.retrieved_block_ids"].numel()),
        }

    # ---- io.safetensors + case.json ----
    # a single metadata key: safetensors writes metadata keys in random order, which would break byte-determinism
    save_file(tensors, str(case_dir / "io.safetensors"), metadata={"format": "pt"})
    field_order = [f.name for f in dataclasses.fields(output)]
    present = list(output.keys())
    case_json: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "class": case.model_cls.__name__,
        "mode": case.mode,
        "seed": case.seed,
        "kwargs": case.kwargs,
        "outputs": present,
        "output_fields_all": field_order,
        "loss_fn": case.loss_fn_desc,
        "params_without_grad": without_grad if case.mode == "train" else None,
        "weights_files": weights_files,
        "dtypes": {k: dtype_name(v) for k, v in tensors.items()},
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "bool_storage": "bool tensors are stored with safetensors dtype BOOL (torch.bool), not uint8",
        "generated_with": {"torch": torch.__version__, "transformers": transformers.__version__},
        "notes": case.notes,
        **extra_case,
    }
    (case_dir / "case.json").write_text(json.dumps(case_json, indent=1) + "\n", encoding="utf-8")

    # ---- verification: reload with the port and re-run ----
    load_reports: dict[str, Any] = {}
    reloads: list[tuple[str, dict[str, Any]]] = []
    if "model.safetensors" in weights_files:
        reloads.append(("model.safetensors", {"use_safetensors": True}))
    if "pytorch_model.bin" in weights_files:
        reloads.append(("pytorch_model.bin", {"use_safetensors": False}))
    saved_io = load_file(str(case_dir / "io.safetensors"))
    for file_name, load_kwargs in reloads:
        if case.openqa:
            if case.save_retriever:
                os.environ["TRUST_REMOTE_CODE"] = "True"  # RealmRetriever.from_pretrained unpickles the .npy
                retriever = RecordingRetriever.from_pretrained(str(case_dir))
            else:
                loaded_records = json.loads((case_dir / "block_records.json").read_text(encoding="utf-8"))
                records = np.array([r.encode("utf-8") for r in loaded_records], dtype=object)
                retriever = RecordingRetriever(records, RealmTokenizer.from_pretrained(str(case_dir)))
            load_kwargs = {**load_kwargs, "retriever": retriever}
        reloaded, info = case.model_cls.from_pretrained(
            str(case_dir), output_loading_info=True, **load_kwargs
        )
        # Saved weights must be exactly the weights we ran with.
        reloaded_sd = reloaded.state_dict()
        for key, value in original_sd.items():
            assert torch.equal(reloaded_sd[key], value), (case.name, file_name, key)
        # from_pretrained leaves parameters in memory at arbitrary (unaligned) offsets of the safetensors/bin
        # buffer, and CPU BLAS then rounds differently (~1 ulp, e.g. 3e-7 on the question projection). Copy them
        # into fresh allocations, like the original model had, so that the re-run can be compared bitwise.
        with torch.no_grad():
            for prm in reloaded.parameters():
                prm.data = prm.data.clone()
            for mod in reloaded.modules():
                for bname, buf in list(mod._buffers.items()):
                    if buf is not None:
                        mod._buffers[bname] = buf.clone()
        load_reports[file_name] = {k: sorted(v) if isinstance(v, (list, set)) else v for k, v in info.items()}
        # inputs are taken back from io.safetensors, so the saved inputs are the ones that produced the outputs
        reread = dataclasses.replace(
            case, inputs={k[len("input.") :]: v for k, v in saved_io.items() if k.startswith("input.")}
        )
        out2, extra2, _ = run_case(reloaded, reread)
        compare(saved_io, io_tensors(reread, out2, extra2), f"{case.name} reloaded from {file_name}")
        assert tying_facts(reloaded) == tying, (case.name, file_name, tying_facts(reloaded), tying)

    # ---- state_dict_keys.json ----
    saved_keys = {f: weights_file_keys(case_dir / f) for f in weights_files}
    all_keys = [e["key"] for e in sd_info]
    sd_json = {
        "class": case.model_cls.__name__,
        "state_dict": sd_info,
        "named_parameters": named_params,
        "saved_keys": saved_keys,
        "not_saved": {f: [k for k in all_keys if k not in set(keys)] for f, keys in saved_keys.items()},
        "extra_saved": {f: [k for k in keys if k not in set(all_keys)] for f, keys in saved_keys.items()},
        "tying": tying,
        "from_pretrained_loading_info": load_reports,
    }
    (case_dir / "state_dict_keys.json").write_text(json.dumps(sd_json, indent=1) + "\n", encoding="utf-8")

    return {
        "case": case.name,
        "class": case.model_cls.__name__,
        "mode": case.mode,
        "outputs": present,
        "files": {p.name: p.stat().st_size for p in sorted(case_dir.iterdir())},
    }


# ---------------------------------------------------------------------------------------------------------------
# Inputs for each case
# ---------------------------------------------------------------------------------------------------------------


def seq_batch(
    gen: torch.Generator, batch: int, seq_len: int, lengths: list[int], first_seg: list[int]
) -> dict[str, torch.Tensor]:
    """Random "[CLS] a.. [SEP] b.. [SEP] [PAD].." rows: right padding, token types 0 then 1.

    Token ids are drawn from [1, 64) so that id 1 (= config.pad_token_id, the embedding padding_idx) can occur.
    """
    ids = torch.randint(1, 64, (batch, seq_len), generator=gen)
    types = torch.zeros(batch, seq_len, dtype=torch.long)
    mask = torch.zeros(batch, seq_len, dtype=torch.long)
    for b, (n, a) in enumerate(zip(lengths, first_seg, strict=True)):
        ids[b, 0] = 2  # [CLS]
        ids[b, a - 1] = 3  # [SEP] closing segment A
        ids[b, n - 1] = 3  # [SEP] closing segment B
        ids[b, n:] = 0  # [PAD]
        types[b, a:n] = 1
        mask[b, :n] = 1
    ids[0, 2] = 1  # make sure the padding_idx row is used at least once
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def embedder_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(100)
    return seq_batch(gen, 4, 9, lengths=[9, 7, 5, 8], first_seg=[4, 3, 5, 5])


def scorer_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(200)
    query = seq_batch(gen, 3, 7, lengths=[7, 5, 6], first_seg=[7, 5, 6])  # single segment queries
    cand = seq_batch(gen, 9, 8, lengths=[8, 6, 7, 8, 5, 8, 4, 7, 8], first_seg=[3, 3, 4, 2, 5, 3, 4, 3, 2])
    inputs = dict(query)
    for k, v in cand.items():
        inputs[f"candidate_{k}"] = v.view(3, 3, 8)  # [batch, num_candidates, seq]
    return inputs


def encoder_inputs(with_mlm_mask: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(300)
    joint = seq_batch(gen, 6, 10, lengths=[10, 8, 9, 10, 7, 10], first_seg=[5, 5, 5, 4, 4, 4])
    inputs = {k: v.view(2, 3, 10) for k, v in joint.items()}  # [batch, num_candidates, seq]
    inputs["relevance_score"] = torch.randn(2, 3, generator=gen)
    labels = torch.full((2, 10), -100, dtype=torch.long)
    labels[0, 2], labels[0, 3], labels[0, 7] = 17, 1, 40
    labels[1, 1], labels[1, 6] = 63, 8
    inputs["labels"] = labels
    if with_mlm_mask:
        mlm = (labels != -100).long()
        mlm[0, 7] = 0  # a labelled position that the mask excludes
        # an unlabelled position that the mask counts (adds 0 to the numerator and 1 to the denominator)
        mlm[1, 9] = 1
        inputs["mlm_mask"] = mlm
    return inputs


def reader_inputs(tokenizer: RealmTokenizer, labels: str) -> dict[str, torch.Tensor]:
    """Reader inputs built like the retriever does: (question, block) pairs, here padded to a fixed length 12.

    labels: "none" (no start/end/has_answers), "mixed" (some gold spans, with corner cases), "no_positive".
    """
    blocks = ["paris is the capital", "berlin", "the city of paris and france"]
    # rows 3-4 only enter via relevance_score / has_answers / block_mask
    extra_blocks = ["london is old", "tokyo in japan"]
    enc = tokenizer(
        [QUESTION] * 5,
        blocks + extra_blocks,
        padding="max_length",
        truncation=True,
        max_length=12,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    # reader rows (positions 0-6 are "[CLS] the capital of france ? [SEP]", the block starts at 7):
    # 0: ... [SEP] paris is the capital [SEP]            -> "paris" at 7
    # 1: ... [SEP] berlin [SEP] [PAD] [PAD] [PAD]         -> no answer, right padding
    # 2: ... [SEP] the city of paris [SEP]               -> block truncated (longest_first), "paris" at 10
    paris = tokenizer.convert_tokens_to_ids("paris")
    assert enc["input_ids"][0, 7].item() == paris and enc["input_ids"][2, 10].item() == paris
    assert enc["attention_mask"][1].tolist() == [1] * 9 + [0] * 3
    # block_mask as RealmForOpenQA builds it: type 1 and not a special token (pads are flagged special)
    block_mask = enc["token_type_ids"].bool() & ~enc["special_tokens_mask"].bool()
    gen = torch.Generator().manual_seed(400)
    inputs: dict[str, torch.Tensor] = {
        "input_ids": enc["input_ids"][:3].clone(),
        "attention_mask": enc["attention_mask"][:3].clone(),
        "token_type_ids": enc["token_type_ids"][:3].clone(),
        "relevance_score": torch.randn(5, generator=gen),  # searcher_beam_size entries
        "block_mask": block_mask,  # [searcher_beam_size, seq] bool
    }
    if labels == "mixed":
        inputs["start_positions"] = torch.tensor([[7, 2], [-1, -1], [10, 7], [8, -1], [-1, -1]])
        inputs["end_positions"] = torch.tensor([[7, 2], [-1, -1], [10, 11], [8, -1], [-1, -1]])
        # row 0: (2, 2) lies in the question: a span candidate (reader_correct=True) but its logit is finfo.min-masked.
        # row 2: (7, 11) is wider than max_span_width=4, so it is not a span candidate at all.
        inputs["has_answers"] = torch.tensor([True, False, True, True, False])
    elif labels == "out_of_range":
        # out-of-range gold positions are clamped to [-1, seq_len=12] and then never match a span candidate
        inputs["start_positions"] = torch.tensor([[7, 15], [-1, -1], [10, 12], [-3, -1], [-1, -1]])
        inputs["end_positions"] = torch.tensor([[7, 16], [-1, -1], [10, 40], [-3, -1], [-1, -1]])
        inputs["has_answers"] = torch.tensor([True, False, True, True, False])
    elif labels == "no_positive":
        inputs["start_positions"] = torch.full((5, 2), -1)
        inputs["end_positions"] = torch.full((5, 2), -1)
        inputs["has_answers"] = torch.zeros(5, dtype=torch.bool)
    else:
        assert labels == "none"
    return inputs


def openqa_inputs(tokenizer: RealmTokenizer, answer: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Question padded to max_length 10 (so it contains pads) and answer ids without special tokens."""
    q = tokenizer([QUESTION], padding="max_length", max_length=10, return_tensors="pt")
    assert q["attention_mask"][0, -1].item() == 0  # the question contains pads
    answer_ids = tokenizer([answer], add_special_tokens=False).input_ids
    inputs = {
        "input_ids": q["input_ids"],
        "attention_mask": q["attention_mask"],
        "token_type_ids": q["token_type_ids"],
    }
    return inputs, {"answer_ids": answer_ids}


def build_cases(tokenizer: RealmTokenizer) -> list[Case]:
    emb = embedder_inputs()
    cases = [
        Case(
            name="embedder_eval",
            model_cls=RealmEmbedder,
            mode="eval",
            seed=1,
            inputs=emb,
            kwargs={"output_hidden_states": True, "output_attentions": True},
            notes="projected_score = LayerNorm(dense(pooler_output)); hidden_states has num_hidden_layers+1 entries.",
        ),
        Case(
            name="embedder_train",
            model_cls=RealmEmbedder,
            mode="train",
            seed=2,
            inputs=emb,
            kwargs={"output_hidden_states": True, "output_attentions": True},
            loss_fn=lambda o: o.projected_score.square().sum(),
            loss_fn_desc="output.projected_score.square().sum()",
            notes="dropout 0. cls.predictions.* (unused MLM head) gets no gradient; word-embedding row 1 "
            "(config.pad_token_id, the nn.Embedding padding_idx) gets a zero gradient although id 1 occurs.",
        ),
        Case(
            name="scorer_eval",
            model_cls=RealmScorer,
            mode="eval",
            seed=3,
            inputs=scorer_inputs(),
            also_bin=True,
            notes="query_embedder is the same module as embedder; candidate tensors are [batch, num_candidates, seq].",
        ),
        Case(
            name="encoder_eval_mlm_mask",
            model_cls=RealmKnowledgeAugEncoder,
            mode="eval",
            seed=4,
            inputs=encoder_inputs(True),
            kwargs={"output_hidden_states": True},
            notes="logits are flattened to [batch*num_candidates, seq, vocab]; loss = marginal MLM loss with mlm_mask.",
        ),
        Case(
            name="encoder_train_no_mlm_mask",
            model_cls=RealmKnowledgeAugEncoder,
            mode="train",
            seed=5,
            inputs=encoder_inputs(False),
            loss_fn=lambda o: o.loss,
            loss_fn_desc="output.loss",
            notes="dropout 0. Without mlm_mask the loss divides by batch*seq (all positions). decoder.weight is tied "
            "to realm.embeddings.word_embeddings.weight, so its gradient is included in that single parameter.",
        ),
        Case(
            name="reader_eval_labels",
            model_cls=RealmReader,
            mode="eval",
            seed=6,
            inputs=reader_inputs(tokenizer, "mixed"),
            also_bin=True,
            notes="relevance_score/block_mask/start/end/has_answers have searcher_beam_size=5 rows, input_ids 3 rows. "
            "Gold (2,2) in row 0 lies in the question (reader_correct True but logit masked); gold (7,11) in row 2 "
            "is wider than max_span_width.",
        ),
        Case(
            name="reader_train_labels",
            model_cls=RealmReader,
            mode="train",
            seed=7,
            inputs=reader_inputs(tokenizer, "out_of_range"),
            loss_fn=lambda o: o.loss,
            loss_fn_desc="output.loss",
            notes="dropout 0. Gold positions outside [-1, seq] are clamped to -1 / seq (12) and never match.",
        ),
        Case(
            name="reader_eval_nolabels",
            model_cls=RealmReader,
            mode="eval",
            seed=8,
            inputs=reader_inputs(tokenizer, "none"),
            kwargs={"output_hidden_states": True, "output_attentions": True},
            notes="No labels: only block_idx, candidate, start_pos, end_pos (+ hidden_states/attentions).",
        ),
        Case(
            name="reader_eval_no_positive",
            model_cls=RealmReader,
            mode="eval",
            seed=9,
            inputs=reader_inputs(tokenizer, "no_positive"),
            notes="No positive anywhere: retriever_loss, reader_loss and loss are exactly 0.",
        ),
    ]
    qa_inputs, qa_kwargs = openqa_inputs(tokenizer, ANSWER)
    na_inputs, na_kwargs = openqa_inputs(tokenizer, NO_ANSWER)
    openqa_notes = (
        "RealmForOpenQA with RealmRetriever over block_records.json and the toy tokenizer. output.reader_output.* is "
        "the RealmReaderOutput; output.retrieved_block_ids = topk(einsum(block_emb, q)) (K = searcher_beam_size in "
        "train, reader_beam_size in eval); retriever.* = the retriever's concat inputs for those ids; "
        "output.has_answers/start_pos_all/end_pos_all = what the retriever returned (as tensors, like the port); "
        "intermediate.* = question projection, full score row, relevance_score and block_mask passed to the reader."
    )
    cases += [
        Case(
            name="openqa_eval",
            model_cls=RealmForOpenQA,
            mode="eval",
            seed=10,
            inputs=qa_inputs,
            kwargs=qa_kwargs,
            notes=openqa_notes,
            openqa=True,
            save_retriever=True,
            also_bin=True,
            meta={"answer_texts": [ANSWER]},
        ),
        Case(
            name="openqa_train",
            model_cls=RealmForOpenQA,
            mode="train",
            seed=10,
            inputs=qa_inputs,
            kwargs=qa_kwargs,
            loss_fn=lambda o: o.reader_output.loss,
            loss_fn_desc="output.reader_output.loss",
            notes=openqa_notes + " dropout 0; same weights as openqa_eval (same seed).",
            openqa=True,
            meta={"answer_texts": [ANSWER]},
        ),
        Case(
            name="openqa_eval_noanswer",
            model_cls=RealmForOpenQA,
            mode="eval",
            seed=10,
            inputs=na_inputs,
            kwargs=na_kwargs,
            notes=openqa_notes
            + " Answer 'tokyo' occurs in no block: start/end_pos_all are [K, 0], all losses 0.",
            openqa=True,
            meta={"answer_texts": [NO_ANSWER]},
        ),
        Case(
            name="encoder_bin",
            model_cls=RealmKnowledgeAugEncoder,
            mode="eval",
            seed=11,
            inputs=encoder_inputs(True),
            emulate_old_bin=True,
            notes="Weights only as an old-style pytorch_model.bin with a realm.embeddings.position_ids key "
            "(from_pretrained ignores it silently). Same inputs as encoder_eval_mlm_mask.",
        ),
    ]
    return cases


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output directory (its model cases are rewritten; tokenizer/ is kept)"
    )
    args = parser.parse_args(argv)
    out_root: Path = args.out

    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    # Rewrite only what this script owns: make_tokenizer_fixtures.py writes tokenizer/ beside the cases.
    out_root.mkdir(parents=True, exist_ok=True)
    for child in out_root.iterdir():
        if child.name != "tokenizer":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    tmp_dir = out_root / "_tmp"
    tmp_dir.mkdir()

    # shared toy vocab at the top level too (the tokenizer fixtures reuse it)
    (out_root / "vocab.txt").write_text("\n".join(TOY_VOCAB) + "\n", encoding="utf-8")
    tokenizer = make_tokenizer(tmp_dir)

    summary = [write_case(case, out_root, tmp_dir) for case in build_cases(tokenizer)]
    shutil.rmtree(tmp_dir)

    index = {
        "format_version": FORMAT_VERSION,
        "generated_with": {"torch": torch.__version__, "transformers": transformers.__version__},
        "cases": [{k: s[k] for k in ("case", "class", "mode")} for s in summary],
    }
    (out_root / "index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")

    total = sum(p.stat().st_size for p in out_root.rglob("*") if p.is_file())
    print(f"{'case':<28} {'class':<26} {'mode':<5} {'KiB':>7}  outputs / files")
    for s in summary:
        size = sum(s["files"].values()) / 1024
        print(f"{s['case']:<28} {s['class']:<26} {s['mode']:<5} {size:7.1f}  {', '.join(s['outputs'])}")
        print(" " * 70 + "  " + ", ".join(f"{n} {b / 1024:.1f}K" for n, b in s["files"].items()))
    print(f"total fixture size: {total / 1024:.1f} KiB in {out_root}")
    print("all cases reloaded with from_pretrained and reproduced bitwise")
    return 0


if __name__ == "__main__":
    sys.exit(main())
