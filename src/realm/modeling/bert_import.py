"""REALM checkpoints initialised from a BERT checkpoint (`realm init --from-bert`).

REALM starts from BERT: the retriever's towers and the knowledge-augmented encoder are BERT trunks, and
the Open-QA reader is initialised from the pre-trained encoder. This module reads any BERT directory in
the usual Hugging Face layout (`config.json`, `model.safetensors` or `pytorch_model.bin`, `vocab.txt`,
optional `tokenizer_config.json`) and writes

    OUT/embedder/  RealmEmbedder            (trunk + pooler from BERT, 768->128 projection fresh)
    OUT/encoder/   RealmKnowledgeAugEncoder (trunk from BERT, MLM head from `cls.predictions.*` if present)
    OUT/openqa/    RealmForOpenQA           (embedder above; reader trunk from BERT, span heads fresh;
                                             num_block_records=0: the index holds the block embeddings)

each with the tokenizer files. Source keys may carry a `bert.` prefix (BertForPreTraining) or not
(BertModel); TF-converted files' `LayerNorm.gamma/beta` are read as weight/bias. Whatever is not in
BERT is initialised as BERT initialises (N(0, initializer_range), zero biases, unit LayerNorms) and
reported, with the source keys that were not used.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from realm.atomic import atomic_directory, atomic_write_text
from realm.config import RealmConfig
from realm.modeling.checkpoint import SAFE_WEIGHTS_NAME, WEIGHTS_NAME, CheckpointError, read_state_dict
from realm.modeling.embedder import RealmEmbedder
from realm.modeling.knowledge_encoder import RealmKnowledgeAugEncoder
from realm.modeling.openqa import save_openqa
from realm.modeling.pretrained import RealmPreTrainedModel
from realm.modeling.reader import RealmReader

logger = logging.getLogger(__name__)

REPORT_NAME = "init_report.json"
# BERT config keys carried into RealmConfig unchanged; the rest of RealmConfig keeps REALM's defaults.
CARRIED_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "layer_norm_eps", "initializer_range", "pad_token_id",
)  # fmt: skip
_TRUNK_PREFIXES = ("embeddings.", "encoder.", "pooler.")


@dataclass
class InitReport:
    """What `init_from_bert` / `openqa_from_pretrained` wrote and where each weight came from.

    Attributes:
        out_dir: the output directory (`embedder/`, `encoder/`, `openqa/` inside for `init_from_bert`).
        source: the weights file read.
        config: the RealmConfig written (the embedder's and encoder's; openqa's has num_block_records=0).
        copied: per model directory, the keys taken from the source.
        fresh: per model directory, the keys freshly initialised (tied names listed once).
        ignored: source keys no model uses (e.g. `cls.seq_relationship.*`).
    """

    out_dir: Path
    source: Path
    config: RealmConfig
    copied: dict[str, list[str]] = field(default_factory=dict)
    fresh: dict[str, list[str]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.out_dir}: from {self.source}"]
        for name, keys in self.copied.items():
            fresh = self.fresh.get(name, [])
            lines.append(f"  {name}/: {len(keys)} tensors copied, {len(fresh)} fresh: {_compact(fresh)}")
        if self.ignored:
            lines.append(f"  ignored source keys ({len(self.ignored)}): {_compact(self.ignored)}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "source": str(self.source), "copied": self.copied,
                "fresh": self.fresh, "ignored": self.ignored}  # fmt: skip


def _compact(keys: list[str]) -> str:
    """Key names with layer numbers folded (`encoder.layer.*.x`), for a readable one-line report."""
    folded = sorted({re.sub(r"\.\d+\.", ".*.", k) for k in keys})
    return ", ".join(folded) if folded else "none"


# -- reading BERT ---------------------------------------------------------------------------------


def read_bert_config(
    bert_dir: str | os.PathLike[str], *, proj_size: int | None = None, pooling: str = "cls"
) -> RealmConfig:
    """A RealmConfig with the BERT config's architecture (activation included), the embedders' `pooling` and
    REALM defaults otherwise; `proj_size` None: REALM's 128, or the hidden size with pooling "mean"."""
    path = Path(bert_dir) / "config.json"
    if not Path(bert_dir).is_dir():
        raise FileNotFoundError(f"{bert_dir} is not a directory (expected a BERT checkpoint directory)")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: {bert_dir} is not a Hugging Face checkpoint directory"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    model_type = data.get("model_type")
    architectures = data.get("architectures") or []
    if model_type != "bert" and not any(str(a).startswith("Bert") for a in architectures):
        raise ValueError(
            f"{path}: model_type is {model_type!r} (architectures {architectures}); "
            "realm init --from-bert needs a BERT checkpoint (model_type 'bert')"
        )
    if data.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"{path}: position_embedding_type {data['position_embedding_type']!r}; REALM uses 'absolute'"
        )
    values = {k: data[k] for k in CARRIED_KEYS if k in data}
    if proj_size is None:
        defaults = RealmConfig()
        proj_size = values.get("hidden_size", defaults.hidden_size) if pooling == "mean" else defaults.retriever_proj_size
    values["retriever_proj_size"] = proj_size
    values["retriever_pooling"] = pooling
    values["num_block_records"] = 0
    values["architectures"] = None
    # The reader cannot read more tokens than the trunk has positions.
    values["reader_seq_len"] = min(RealmConfig().reader_seq_len, data.get("max_position_embeddings", 512))
    try:
        return RealmConfig(**values)
    except (ValueError, NotImplementedError) as err:
        raise ValueError(f"{path}: {err}") from None


def _bert_weights(bert_dir: Path) -> Path:
    for name in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME):
        if (bert_dir / name).is_file():
            return bert_dir / name
    raise FileNotFoundError(f"{bert_dir} holds neither {SAFE_WEIGHTS_NAME} nor {WEIGHTS_NAME}")


def normalise_bert_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Source keys -> our names: `bert.` dropped, trunk keys under `realm.`, `gamma/beta` -> `weight/bias`.

    Returns:
        (mapped state, ignored source keys). `cls.predictions.*` keep their names (our MLM heads use them).
    """
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, tensor in state.items():
        name = key.removeprefix("bert.")
        name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
        name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
        if name.endswith("position_ids"):
            continue  # a stale buffer, not a weight
        if name.startswith(_TRUNK_PREFIXES):
            mapped["realm." + name] = tensor
        elif name.startswith("cls.predictions."):
            mapped[name] = tensor
        else:
            ignored.append(key)
    return mapped, ignored


# -- copying --------------------------------------------------------------------------------------


def _alias_groups(model: nn.Module) -> list[list[str]]:
    """State-dict names grouped by the tensor they refer to (tied weights are one group)."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return list(groups.values())


def _load_partial(
    model: RealmPreTrainedModel, state: dict[str, torch.Tensor], source: str, prefix: str = ""
) -> tuple[list[str], list[str], set[str]]:
    """Copy the entries of `state` (our names, without `prefix`) into `model`; the rest stays as initialised.

    Returns:
        (copied names, fresh names, source keys used). Raises `CheckpointError` naming `source`, the key
        and both shapes on a shape mismatch.
    """
    targets = model.state_dict(keep_vars=True)
    copied, fresh, used = [], [], set()
    for names in _alias_groups(model):
        present = [n for n in names if n in state]
        if not present:
            fresh.append(prefix + names[0])
            continue
        name = present[0]
        value, target = state[name], targets[name]
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointError(
                f"{source}: {name} has shape {tuple(value.shape)} in the checkpoint but {tuple(target.shape)} "
                f"in {type(model).__name__} (hidden_size={model.config.hidden_size}, "
                f"vocab_size={model.config.vocab_size}); is config.json the one of these weights?"
            )
        with torch.no_grad():
            target.copy_(value.to(target.dtype))
        copied.append(prefix + name)
        used.update(present)
    return copied, fresh, used


def _require_trunk(state: dict[str, torch.Tensor], model: RealmPreTrainedModel, source: str) -> None:
    """Every trunk weight except the pooler must come from the source: a BERT without them is not BERT."""
    needed = [k for k in model.state_dict() if k.startswith(("realm.embeddings.", "realm.encoder."))]
    missing = [k for k in needed if k not in state]
    if missing:
        shown = ", ".join(k.removeprefix("realm.") for k in missing[:5])
        raise CheckpointError(
            f"{source} is missing {len(missing)} BERT trunk key(s): {shown}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )


def _seeded(seed: int, build: Any) -> Any:
    """Build a model with fresh weights drawn from `seed`, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _tokenizer(bert_dir: Path) -> Any:
    from realm.tokenization import RealmTokenizerFast

    vocab = bert_dir / "vocab.txt"
    if not vocab.is_file():
        raise FileNotFoundError(f"{vocab} does not exist: the BERT checkpoint needs its WordPiece vocabulary")
    kwargs: dict[str, Any] = {}
    config_path = bert_dir / "tokenizer_config.json"
    if config_path.is_file():
        data = json.loads(config_path.read_text(encoding="utf-8"))
        kwargs = {
            k: data[k] for k in ("do_lower_case", "strip_accents", "tokenize_chinese_chars") if k in data
        }
    return RealmTokenizerFast(vocab_file=str(vocab), **kwargs)


def _check_out(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it"
        )


# -- public ---------------------------------------------------------------------------------------


def init_from_bert(
    bert_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    proj_size: int | None = None,
    pooling: str = "cls",
    seed: int = 0,
    overwrite: bool = False,
) -> InitReport:
    """Write `embedder/`, `encoder/` and `openqa/` REALM checkpoints initialised from a BERT checkpoint.

    Args:
        bert_dir: a Hugging Face BERT directory (config.json, weights, vocab.txt).
        out_dir: written atomically as a whole (a temporary directory renamed into place).
        proj_size: the retriever projection size D (None: REALM's 128, or the hidden size with pooling "mean").
        pooling: what the embedder's pooler reads: "cls" (REALM; the pooler from BERT, a fresh projection) or
            "mean" (`RealmConfig.retriever_pooling`), for a sentence-embedding model trained to be read by mean
            pooling. With "mean" and `proj_size` equal to the hidden size, the retrieval head starts as the
            identity (`identity_head`): the embedder scores with the source model's own sentence vectors
            (20 x their centred cosine), so retrieval starts where the source model is.
        seed: draws of the freshly initialised weights.
        overwrite: replace an existing non-empty `out_dir`.

    Raises:
        FileNotFoundError / ValueError / CheckpointError naming the file (and key and shapes) at fault.
    """

    bert_dir, out_dir = Path(bert_dir), Path(out_dir)
    config = read_bert_config(bert_dir, proj_size=proj_size, pooling=pooling)
    tokenizer = _tokenizer(bert_dir)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"{bert_dir / 'vocab.txt'} has {len(tokenizer)} tokens but config.json vocab_size={config.vocab_size}"
        )
    weights = _bert_weights(bert_dir)
    state, ignored = normalise_bert_keys(read_state_dict(weights))
    _check_out(out_dir, overwrite)
    source = str(weights)

    embedder = _seeded(seed, lambda: RealmEmbedder(config))
    _require_trunk(state, embedder, source)
    encoder = _seeded(seed + 1, lambda: RealmKnowledgeAugEncoder(config))
    reader = _seeded(seed + 2, lambda: RealmReader(config))
    report = InitReport(out_dir, weights, config)
    used: set[str] = set()
    for name, model in (("embedder", embedder), ("encoder", encoder), ("reader", reader)):
        copied, fresh, model_used = _load_partial(model, state, source)
        report.copied[name], report.fresh[name] = copied, fresh
        used |= model_used
    decoder = state.get("cls.predictions.decoder.weight")
    if decoder is not None and not torch.equal(decoder, state["realm.embeddings.word_embeddings.weight"]):
        # Our encoder ties its decoder to the word embeddings (as BERT and REALM do); an untied one is dropped.
        logger.warning(
            "%s: cls.predictions.decoder.weight differs from the word embeddings; the tied ones are used",
            source,
        )
        used.discard("cls.predictions.decoder.weight")
    report.ignored = sorted(ignored + [k for k in state if k not in used])
    if pooling == "mean" and config.retriever_proj_size == config.hidden_size:
        identity_head(embedder)
        report.fresh["embedder"] = [k for k in report.fresh["embedder"] if not k.startswith("cls.")]
        report.copied["embedder"] = [k for k in report.copied["embedder"] if not k.startswith("realm.pooler.")]
    # The Open-QA checkpoint is the two towers: its embedder is `embedder/`, its reader has the BERT trunk.
    report.copied["openqa"] = [f"embedder.{k}" for k in report.copied["embedder"]] + [
        f"reader.{k}" for k in report.copied["reader"]
    ]
    report.fresh["openqa"] = [f"embedder.{k}" for k in report.fresh["embedder"]] + [
        f"reader.{k}" for k in report.fresh.pop("reader")
    ]
    report.copied.pop("reader")

    with atomic_directory(out_dir) as tmp:
        for name, model in (("embedder", embedder), ("encoder", encoder)):
            model.save_pretrained(tmp / name)
            tokenizer.save_pretrained(tmp / name)
        save_openqa(tmp / "openqa", embedder, reader, config)
        tokenizer.save_pretrained(tmp / "openqa")
        atomic_write_text(tmp / REPORT_NAME, json.dumps(report.to_dict(), indent=2) + "\n")
    logger.info("%s", report.summary())
    return report


# The pooler's tanh reads c * x: c small keeps it in its linear range for the mean of BERT hidden states (whose
# entries are O(1)); the projection's LayerNorm removes the scale again.
_IDENTITY_SCALE = 0.05
# Inner products of the head's outputs are H * gain^2 times the centred cosine. Sentence-embedding models are
# trained with a softmax over 20 * cosine (sentence-transformers' MultipleNegativesRankingLoss, all-MiniLM-L6-v2
# included); the same scale keeps REALM's retrieval distribution and the reader's marginal over blocks as soft as
# the model was trained for (with gain 1 and H = 384 the top block took nearly all the mass).
RETRIEVAL_SCALE = 20.0


@torch.no_grad()
def identity_head(embedder: RealmEmbedder, scale: float = RETRIEVAL_SCALE) -> None:
    """Make `LayerNorm(dense(tanh(dense(x))))` pass the pooled vector x through: pooler c * I and projection I / c,
    both without bias, LayerNorm's bias 0 and its gain sqrt(scale / H), so that relevance is `scale` times the
    centred cosine of the pooled vectors. Needs retriever_proj_size == hidden_size."""
    size = embedder.config.hidden_size
    if embedder.config.retriever_proj_size != size:
        raise ValueError(f"an identity head needs retriever_proj_size == hidden_size ({size}), "
                         f"got {embedder.config.retriever_proj_size}")  # fmt: skip
    eye = torch.eye(size)
    pooler, projection = embedder.realm.pooler.dense, embedder.cls.dense
    pooler.weight.copy_(eye * _IDENTITY_SCALE)
    pooler.bias.zero_()
    projection.weight.copy_(eye / _IDENTITY_SCALE)
    projection.bias.zero_()
    embedder.cls.LayerNorm.weight.fill_((scale / size) ** 0.5)
    embedder.cls.LayerNorm.bias.zero_()


def openqa_from_pretrained(
    embedder_dir: str | os.PathLike[str],
    encoder_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    overwrite: bool = False,
) -> InitReport:
    """A `RealmForOpenQA` checkpoint from a pre-trained embedder and knowledge-augmented encoder.

    As REALM, the reader's trunk (and MLM head) is the encoder's; its span heads are fresh. The embedder
    is used as is (query and block tower). Written atomically, with the encoder's tokenizer files.
    """
    from realm.tokenization import RealmTokenizerFast

    embedder_dir, encoder_dir, out_dir = Path(embedder_dir), Path(encoder_dir), Path(out_dir)
    embedder = RealmEmbedder.from_pretrained(embedder_dir)
    encoder = RealmKnowledgeAugEncoder.from_pretrained(encoder_dir)
    trunk_keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "hidden_act", "max_position_embeddings", "type_vocab_size")  # fmt: skip
    differ = [k for k in trunk_keys if getattr(embedder.config, k) != getattr(encoder.config, k)]
    if differ:
        k = differ[0]
        raise ValueError(
            f"{embedder_dir} and {encoder_dir} have different {k} ({getattr(embedder.config, k)} vs "
            f"{getattr(encoder.config, k)}): RealmForOpenQA has one config for both towers"
        )
    _check_out(out_dir, overwrite)
    # The towers' shared config takes the embedder's retrieval settings (its pooling too).
    config = encoder.config.copy(retriever_proj_size=embedder.config.retriever_proj_size,
                                 retriever_pooling=embedder.config.retriever_pooling, num_block_records=0,
                                 architectures=None)  # fmt: skip
    reader = _seeded(seed, lambda: RealmReader(config))
    state = {k: v for k, v in encoder.state_dict().items() if k.startswith(("realm.", "cls.predictions."))}
    copied, fresh, _ = _load_partial(reader, state, str(encoder_dir))
    report = InitReport(out_dir, encoder_dir, config)
    report.copied["openqa"] = [f"reader.{k}" for k in copied]
    report.fresh["openqa"] = [f"reader.{k}" for k in fresh]
    tokenizer_dir = encoder_dir if (encoder_dir / "vocab.txt").is_file() else embedder_dir
    with atomic_directory(out_dir) as tmp:
        save_openqa(tmp, embedder, reader, config)
        if (tokenizer_dir / "vocab.txt").is_file():
            RealmTokenizerFast.from_pretrained(tokenizer_dir).save_pretrained(tmp)
        atomic_write_text(tmp / REPORT_NAME, json.dumps(report.to_dict(), indent=2) + "\n")
    logger.info("%s", report.summary())
    return report
