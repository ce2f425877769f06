"""Saving and loading checkpoints: round trips, tying, the port's file quirks, and the errors users see."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from realm import (
    CheckpointError,
    RealmConfig,
    RealmEmbedder,
    RealmForOpenQA,
    RealmKnowledgeAugEncoder,
    RealmReader,
    RealmScorer,
)
from realm.modeling import checkpoint
from tests.conftest import REFERENCE, tiny_config

CLASSES = [RealmEmbedder, RealmScorer, RealmKnowledgeAugEncoder, RealmReader, RealmForOpenQA]


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for b in model.buffers():
            if b.dtype.is_floating_point:
                b.copy_(torch.randn(b.shape, generator=g))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_save_load_round_trip(cls, tmp_path) -> None:
    model = cls(tiny_config())
    randomise(model)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = cls.from_pretrained(tmp_path)
    assert not loaded.training
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert list(ours) == list(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [cls.__name__]


def test_safetensors_holds_each_shared_tensor_once(tmp_path) -> None:
    RealmScorer(tiny_config()).save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith("query_embedder.") for k in keys)
    assert "embedder.cls.predictions.bias" in keys and "embedder.cls.predictions.decoder.bias" not in keys


def test_tying_survives_loading(tmp_path) -> None:
    encoder = RealmKnowledgeAugEncoder(tiny_config())
    randomise(encoder)
    encoder.save_pretrained(tmp_path)
    loaded = RealmKnowledgeAugEncoder.from_pretrained(tmp_path)
    assert loaded.cls.predictions.decoder.weight is loaded.realm.embeddings.word_embeddings.weight
    assert loaded.cls.predictions.decoder.bias is loaded.cls.predictions.bias
    scorer = RealmScorer.from_pretrained(REFERENCE / "scorer_eval")
    assert scorer.query_embedder is scorer.embedder
    reader = RealmReader.from_pretrained(REFERENCE / "reader_eval_labels")
    assert reader.cls.predictions.decoder.weight is not reader.realm.embeddings.word_embeddings.weight


def test_untied_encoder_when_the_config_says_so() -> None:
    encoder = RealmKnowledgeAugEncoder(tiny_config(tie_word_embeddings=False))
    assert encoder.cls.predictions.decoder.weight is not encoder.realm.embeddings.word_embeddings.weight


def test_bin_checkpoint_saves_and_loads(tmp_path) -> None:
    model = RealmReader(tiny_config())
    randomise(model)
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").is_file() and not (tmp_path / "model.safetensors").exists()
    loaded = RealmReader.from_pretrained(tmp_path)
    assert torch.equal(loaded.qa_outputs.dense_output.weight, model.qa_outputs.dense_output.weight)


def test_bin_is_read_weights_only(tmp_path) -> None:
    """A pickle that would run code on load is refused, not executed."""
    RealmConfig(**tiny_config().to_dict()).save_pretrained(tmp_path)

    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickled code ran')",))

    torch.save({"x": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*weights-only"):
        RealmEmbedder.from_pretrained(tmp_path)


def test_shape_mismatch_names_file_key_and_both_shapes(tmp_path) -> None:
    RealmEmbedder(tiny_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["retriever_proj_size"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        RealmEmbedder.from_pretrained(tmp_path)
    message = str(err.value)
    assert "model.safetensors" in message and "cls.dense.weight" in message
    assert "(16, 32)" in message and "(8, 32)" in message


def test_missing_keys_are_listed(tmp_path) -> None:
    RealmEmbedder(tiny_config()).save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("cls.LayerNorm")}
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing 2 key\(s\).*cls\.LayerNorm\.weight"):
        RealmEmbedder.from_pretrained(tmp_path)


def test_missing_files_are_named(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        RealmEmbedder.from_pretrained(tmp_path)
    tiny_config().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"neither model\.safetensors nor pytorch_model\.bin"):
        RealmEmbedder.from_pretrained(tmp_path)


def test_wrong_model_type_is_refused(tmp_path) -> None:
    RealmEmbedder(tiny_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "bert"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type is 'bert'"):
        RealmEmbedder.from_pretrained(tmp_path)


def test_bare_bert_state_dict_loads_into_the_trunk(tmp_path) -> None:
    """As in the port (base_model_prefix "realm"): trunk keys without the "realm." prefix."""
    source = RealmEmbedder(tiny_config())
    randomise(source)
    state = {k.removeprefix("realm."): v for k, v in source.state_dict().items()}
    target = RealmEmbedder(tiny_config())
    target.load_port_state_dict(state)
    assert torch.equal(target.realm.encoder.layer[1].output.dense.weight, source.realm.encoder.layer[1].output.dense.weight)


def test_stale_position_ids_are_ignored() -> None:
    state = torch.load(REFERENCE / "encoder_bin" / "pytorch_model.bin", weights_only=True)
    assert "realm.embeddings.position_ids" in state  # the fixture emulates a 2022 hub file
    RealmKnowledgeAugEncoder.from_pretrained(REFERENCE / "encoder_bin")


def test_openqa_without_block_emb_loads_with_a_warning(tmp_path, caplog) -> None:
    RealmReader(tiny_config()).save_pretrained(tmp_path)  # no embedder, no block_emb
    with pytest.raises(CheckpointError, match="embedder.realm"):
        RealmForOpenQA.from_pretrained(tmp_path)
    model = RealmForOpenQA(tiny_config())
    state = {k: v for k, v in model.state_dict().items() if k != "block_emb"}
    model.load_port_state_dict(state, source="test")
    assert "block_emb" in caplog.text


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch) -> None:
    model = RealmEmbedder(tiny_config())
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    randomise(model)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_hub_ids_need_the_hub_extra(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_hub(name, *args, **kwargs):
        if name.startswith("huggingface_hub"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hub)
    with pytest.raises(FileNotFoundError, match=r"realm-lm\[hub\]"):
        checkpoint.resolve_file("google/realm-orqa-nq-openqa", "config.json")


def test_device_and_dtype_come_from_arguments(tmp_path) -> None:
    RealmEmbedder(tiny_config()).save_pretrained(tmp_path)
    model = RealmEmbedder.from_pretrained(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
