"""`realm init --from-bert`: REALM checkpoints from a BERT checkpoint written by hand in the HF layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from realm.cli import main
from realm.modeling import (
    CheckpointError,
    RealmBertModel,
    RealmEmbedder,
    RealmForOpenQA,
    RealmKnowledgeAugEncoder,
)
from realm.modeling.bert_import import init_from_bert, openqa_from_pretrained, read_bert_config
from realm.tokenization import RealmTokenizerFast

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = "the a of is and in to was paris capital france city river nile africa who what where".split()


def bert_state(
    vocab_size: int, hidden: int = 32, layers: int = 2, intermediate: int = 37, positions: int = 64,
    *, prefix: str = "", mlm: bool = True, pooler: bool = True, nsp: bool = False, gamma_beta: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """BERT's own key names (BertModel without prefix, BertForPreTraining with `bert.`), random values."""
    g = torch.Generator().manual_seed(seed)
    ln_w, ln_b = ("gamma", "beta") if gamma_beta else ("weight", "bias")
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (vocab_size, hidden),
        "embeddings.position_embeddings.weight": (positions, hidden),
        "embeddings.token_type_embeddings.weight": (2, hidden),
        f"embeddings.LayerNorm.{ln_w}": (hidden,),
        f"embeddings.LayerNorm.{ln_b}": (hidden,),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[p + f"attention.self.{name}.weight"] = (hidden, hidden)
            shapes[p + f"attention.self.{name}.bias"] = (hidden,)
        shapes[p + "attention.output.dense.weight"] = (hidden, hidden)
        shapes[p + "attention.output.dense.bias"] = (hidden,)
        shapes[p + f"attention.output.LayerNorm.{ln_w}"] = (hidden,)
        shapes[p + f"attention.output.LayerNorm.{ln_b}"] = (hidden,)
        shapes[p + "intermediate.dense.weight"] = (intermediate, hidden)
        shapes[p + "intermediate.dense.bias"] = (intermediate,)
        shapes[p + "output.dense.weight"] = (hidden, intermediate)
        shapes[p + "output.dense.bias"] = (hidden,)
        shapes[p + f"output.LayerNorm.{ln_w}"] = (hidden,)
        shapes[p + f"output.LayerNorm.{ln_b}"] = (hidden,)
    if pooler:
        shapes["pooler.dense.weight"] = (hidden, hidden)
        shapes["pooler.dense.bias"] = (hidden,)
    state = {prefix + k: 0.1 * torch.randn(s, generator=g) for k, s in shapes.items()}
    state[prefix + "embeddings.position_ids"] = torch.arange(positions)[None]
    if mlm:
        state["cls.predictions.bias"] = 0.1 * torch.randn(vocab_size, generator=g)
        state["cls.predictions.transform.dense.weight"] = 0.1 * torch.randn(hidden, hidden, generator=g)
        state["cls.predictions.transform.dense.bias"] = 0.1 * torch.randn(hidden, generator=g)
        state[f"cls.predictions.transform.LayerNorm.{ln_w}"] = 1 + 0.1 * torch.randn(hidden, generator=g)
        state[f"cls.predictions.transform.LayerNorm.{ln_b}"] = 0.1 * torch.randn(hidden, generator=g)
        state["cls.predictions.decoder.weight"] = state[prefix + "embeddings.word_embeddings.weight"]
    if nsp:
        state["cls.seq_relationship.weight"] = torch.randn(2, hidden, generator=g)
        state["cls.seq_relationship.bias"] = torch.randn(2, generator=g)
    return state


def write_tiny_bert(
    directory: Path, words: list[str] | None = None, *, fmt: str = "safetensors", hidden_act: str = "gelu",
    positions: int = 64, **state_kwargs: object,
) -> Path:  # fmt: skip
    """A tiny BERT checkpoint directory in the Hugging Face layout, written without transformers."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + sorted(set(words if words is not None else WORDS) - set(SPECIAL))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    config = {
        "architectures": ["BertForPreTraining"], "model_type": "bert", "vocab_size": len(vocab), "hidden_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37, "hidden_act": hidden_act,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": positions,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
    }  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    state = bert_state(len(vocab), positions=positions, **state_kwargs)  # type: ignore[arg-type]
    if fmt == "safetensors":
        from safetensors.torch import save_file

        unique = {k: v.clone().contiguous() for k, v in state.items()}
        save_file(unique, str(directory / "model.safetensors"))
    else:
        torch.save(state, directory / "pytorch_model.bin")
    return directory


def _ours(key: str) -> str:
    """Reference mapping written out for the test: BERT key -> our trunk key."""
    key = (
        key.removeprefix("bert.")
        .replace("LayerNorm.gamma", "LayerNorm.weight")
        .replace("LayerNorm.beta", "LayerNorm.bias")
    )
    return key


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(prefix="bert.", nsp=True),  # BertForPreTraining
        dict(prefix="", mlm=False),  # BertModel
        dict(prefix="bert.", fmt="bin", gamma_beta=True),  # old TF-converted .bin
    ],
    ids=["pretraining-safetensors", "bertmodel-safetensors", "tf-converted-bin"],
)
def test_init_copies_every_trunk_weight(tmp_path: Path, kwargs: dict) -> None:
    fmt = kwargs.pop("fmt", "safetensors")
    src = write_tiny_bert(tmp_path / "bert", fmt=fmt, **kwargs)
    state = bert_state(len((src / "vocab.txt").read_text().split()), **kwargs)
    report = init_from_bert(src, tmp_path / "out", proj_size=16)

    embedder = RealmEmbedder.from_pretrained(tmp_path / "out" / "embedder")
    encoder = RealmKnowledgeAugEncoder.from_pretrained(tmp_path / "out" / "encoder")
    openqa = RealmForOpenQA.from_pretrained(tmp_path / "out" / "openqa")
    assert embedder.config.hidden_act == "gelu" and embedder.config.retriever_proj_size == 16
    assert openqa.config.num_block_records == 0
    trunk = {
        _ours(k): v for k, v in state.items() if not k.startswith("cls.") and not k.endswith("position_ids")
    }
    for key, value in trunk.items():
        for model in (embedder, encoder, openqa.reader, openqa.embedder):
            assert torch.equal(model.state_dict()["realm." + key], value), key
    assert torch.equal(openqa.embedder.cls.dense.weight, embedder.cls.dense.weight)  # the same embedder
    if kwargs.get("mlm", True):
        assert torch.equal(encoder.cls.predictions.bias, state["cls.predictions.bias"])
        assert "cls.predictions.bias" not in report.fresh["encoder"]
    else:
        assert "cls.predictions.bias" in report.fresh["encoder"]
    # The encoder's decoder stays tied to the word embeddings.
    assert (
        encoder.cls.predictions.decoder.weight.data_ptr()
        == encoder.realm.embeddings.word_embeddings.weight.data_ptr()
    )
    assert (
        "cls.dense.weight" in report.fresh["embedder"]
        and "reader.qa_outputs.dense_output.weight" in report.fresh["openqa"]
    )
    assert not any(k.startswith("realm.") for keys in report.fresh.values() for k in keys)
    if kwargs.get("nsp"):
        assert report.ignored == ["cls.seq_relationship.bias", "cls.seq_relationship.weight"]
    assert json.loads((tmp_path / "out" / "init_report.json").read_text())["fresh"] == report.fresh
    for name in ("embedder", "encoder", "openqa"):
        assert (tmp_path / "out" / name / "vocab.txt").is_file()
        RealmTokenizerFast.from_pretrained(tmp_path / "out" / name)


def test_forward_matches_a_trunk_built_by_hand(tmp_path: Path) -> None:
    src = write_tiny_bert(tmp_path / "bert", prefix="bert.")
    state = bert_state(len((src / "vocab.txt").read_text().split()), prefix="bert.")
    init_from_bert(src, tmp_path / "out", proj_size=16)
    config = read_bert_config(src, proj_size=16)
    trunk = RealmBertModel(config).eval()
    trunk.load_state_dict(
        {_ours(k): v for k, v in state.items() if k.startswith("bert.") and "position_ids" not in k}
    )
    ids = torch.tensor([[2, 7, 9, 11, 3, 12, 3], [2, 8, 3, 10, 3, 0, 0]])
    mask = (ids != 0).long()
    types = torch.tensor([[0] * 5 + [1] * 2, [0] * 3 + [1] * 2 + [0] * 2])
    embedder = RealmEmbedder.from_pretrained(tmp_path / "out" / "embedder")
    encoder = RealmKnowledgeAugEncoder.from_pretrained(tmp_path / "out" / "encoder")
    with torch.no_grad():
        out = trunk(ids, attention_mask=mask, token_type_ids=types)
        proj = embedder.cls
        expected = F.layer_norm(
            out.pooler_output @ proj.dense.weight.T + proj.dense.bias,
            (16,),
            proj.LayerNorm.weight,
            proj.LayerNorm.bias,
            1e-12,
        )
        got = embedder(ids, attention_mask=mask, token_type_ids=types).projected_score
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        # The MLM logits, as the formula with the source's own tensors: LN(gelu(W h + b)) E^T + bias.
        h = out.last_hidden_state
        t = F.gelu(
            h @ state["cls.predictions.transform.dense.weight"].T
            + state["cls.predictions.transform.dense.bias"]
        )
        t = F.layer_norm(
            t,
            (32,),
            state["cls.predictions.transform.LayerNorm.weight"],
            state["cls.predictions.transform.LayerNorm.bias"],
            1e-12,
        )
        logits = t @ state["bert.embeddings.word_embeddings.weight"].T + state["cls.predictions.bias"]
        torch.testing.assert_close(
            encoder(ids, attention_mask=mask, token_type_ids=types).logits, logits, rtol=0, atol=1e-5
        )
    # BERT's erf GELU is carried (REALM's default is the tanh approximation, which gives other numbers).
    for model in (embedder, encoder):
        act = model.realm.encoder.layer[0].intermediate.intermediate_act_fn
        assert isinstance(act, torch.nn.GELU) and act.approximate == "none"


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        init_from_bert(tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        init_from_bert(tmp_path / "nope", tmp_path / "out")
    src = write_tiny_bert(tmp_path / "bert")
    (src / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"bert/vocab.txt"):
        init_from_bert(src, tmp_path / "out")
    src = write_tiny_bert(tmp_path / "gpt")
    (src / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match=r"gpt/config.json: model_type is 'gpt2'"):
        init_from_bert(src, tmp_path / "out")
    src = write_tiny_bert(tmp_path / "wide")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    with pytest.raises(
        CheckpointError,
        match=r"model.safetensors: .*intermediate.dense.weight has shape \(37, 32\) .* \(40, 32\)",
    ):
        init_from_bert(src, tmp_path / "out")
    src = write_tiny_bert(tmp_path / "cut", prefix="bert.")
    from safetensors.torch import load_file, save_file

    state = load_file(src / "model.safetensors")
    del state["bert.encoder.layer.1.output.dense.weight"]
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(
        CheckpointError,
        match=r"model.safetensors is missing 1 BERT trunk key\(s\): encoder.layer.1.output.dense.weight",
    ):
        init_from_bert(src, tmp_path / "out")
    good = write_tiny_bert(tmp_path / "good")
    init_from_bert(good, tmp_path / "done")
    with pytest.raises(FileExistsError, match="overwrite"):
        init_from_bert(good, tmp_path / "done")
    init_from_bert(good, tmp_path / "done", overwrite=True, seed=3)


def test_openqa_from_pretrained_copies_the_encoder_trunk(tmp_path: Path) -> None:
    init_from_bert(write_tiny_bert(tmp_path / "bert"), tmp_path / "out", proj_size=16)
    # Stand-ins for pre-trained towers: perturb the encoder so its trunk differs from the embedder's.
    encoder = RealmKnowledgeAugEncoder.from_pretrained(tmp_path / "out" / "encoder")
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.01)
    encoder.save_pretrained(tmp_path / "enc2")
    RealmTokenizerFast.from_pretrained(tmp_path / "out" / "encoder").save_pretrained(tmp_path / "enc2")
    report = openqa_from_pretrained(tmp_path / "out" / "embedder", tmp_path / "enc2", tmp_path / "qa")
    model = RealmForOpenQA.from_pretrained(tmp_path / "qa")
    embedder = RealmEmbedder.from_pretrained(tmp_path / "out" / "embedder")
    for key, value in encoder.state_dict().items():
        if key.startswith("realm."):
            assert torch.equal(model.reader.state_dict()[key], value), key
    for key, value in embedder.state_dict().items():
        assert torch.equal(model.embedder.state_dict()[key], value), key
    assert sorted(report.fresh["openqa"]) == sorted(
        f"reader.{k}" for k in model.reader.state_dict() if k.startswith("qa_outputs.")
    )
    assert (tmp_path / "qa" / "vocab.txt").is_file()


def test_cli_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_tiny_bert(tmp_path / "bert", prefix="bert.", nsp=True)
    assert main(["init", "--from-bert", str(src), str(tmp_path / "out"), "--proj-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "fresh" in printed and "cls.seq_relationship" in printed
    assert RealmEmbedder.from_pretrained(tmp_path / "out" / "embedder").config.retriever_proj_size == 8
    assert main(["init", "--from-bert", str(src), str(tmp_path / "out")]) == 2  # exists: refused
    assert "overwrite" in capsys.readouterr().err
