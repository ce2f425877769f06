"""Mean pooling (`RealmConfig.retriever_pooling`) and the identity head `init_from_bert(pooling="mean")` writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from realm.cli import main
from realm.config import RealmConfig
from realm.modeling import RealmEmbedder
from realm.modeling.bert_import import init_from_bert
from tests.test_bert_import import write_tiny_bert


def tiny_config(**changes: object) -> RealmConfig:
    values = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                  retriever_proj_size=8, max_position_embeddings=32)  # fmt: skip
    values.update(changes)
    return RealmConfig(**values)


def test_mean_pooling_reads_the_real_tokens_mean() -> None:
    torch.manual_seed(0)
    model = RealmEmbedder(tiny_config(retriever_pooling="mean")).eval()
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 11, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        trunk = model.realm(ids, attention_mask=mask)
        hidden = trunk.last_hidden_state
        by_hand = torch.stack([hidden[0].mean(0), hidden[1, :3].mean(0)])  # the padding is not averaged
        expected = torch.tanh(by_hand @ model.realm.pooler.dense.weight.T + model.realm.pooler.dense.bias)
        torch.testing.assert_close(trunk.pooler_output, expected, rtol=1e-5, atol=1e-6)
        # Padding changes nothing: the second row alone, unpadded, scores the same.
        alone = model(ids[1:, :3], attention_mask=mask[1:, :3]).projected_score
        torch.testing.assert_close(model(ids, attention_mask=mask).projected_score[1:], alone, rtol=1e-5, atol=1e-5)


def test_cls_pooling_is_the_default_and_reads_position_zero() -> None:
    torch.manual_seed(0)
    model = RealmEmbedder(tiny_config()).eval()
    ids = torch.tensor([[2, 7, 8, 3]])
    with torch.no_grad():
        trunk = model.realm(ids)
        expected = torch.tanh(model.realm.pooler.dense(trunk.last_hidden_state[:, 0]))
    torch.testing.assert_close(trunk.pooler_output, expected)


def test_config_writes_the_key_only_when_it_is_not_the_ports(tmp_path: Path) -> None:
    assert "retriever_pooling" not in tiny_config().to_dict()  # a port config stays a port config
    tiny_config(retriever_pooling="mean").save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["retriever_pooling"] == "mean"
    assert RealmConfig.from_pretrained(tmp_path).retriever_pooling == "mean"
    with pytest.raises(ValueError, match="retriever_pooling"):
        tiny_config(retriever_pooling="max")


def test_init_mean_pooling_scores_with_the_models_own_sentence_vectors(tmp_path: Path) -> None:
    bert = write_tiny_bert(tmp_path / "bert")
    report = init_from_bert(bert, tmp_path / "out", pooling="mean")
    embedder = RealmEmbedder.from_pretrained(tmp_path / "out" / "embedder").eval()
    assert embedder.config.retriever_pooling == "mean" and embedder.config.retriever_proj_size == 32
    assert not any(k.startswith("cls.dense") for k in report.fresh["embedder"])  # the head is set, not drawn
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 11, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        hidden = embedder.realm(ids, attention_mask=mask).last_hidden_state
        weights = mask[..., None].float()
        mean = (hidden * weights).sum(1) / weights.sum(1)
        score = embedder(ids, attention_mask=mask).projected_score
    # LayerNorm of the sentence vector itself (the pooler's tanh works in its linear range), at a gain that makes
    # inner products 20 x the centred cosine.
    expected = F.layer_norm(mean, (32,), eps=embedder.config.layer_norm_eps) * (20 / 32) ** 0.5
    torch.testing.assert_close(score, expected, rtol=0, atol=2e-3)
    centred = F.normalize(mean - mean.mean(-1, keepdim=True), dim=-1)
    torch.testing.assert_close(score @ score.T, 20 * centred @ centred.T, rtol=0, atol=2e-2)


def test_init_mean_pooling_with_another_size_keeps_a_fresh_projection(tmp_path: Path) -> None:
    bert = write_tiny_bert(tmp_path / "bert")
    report = init_from_bert(bert, tmp_path / "out", pooling="mean", proj_size=8)
    assert "cls.dense.weight" in report.fresh["embedder"]
    assert RealmEmbedder.from_pretrained(tmp_path / "out" / "embedder").config.retriever_proj_size == 8


def test_cli_init_pooling_mean(tmp_path: Path) -> None:
    bert = write_tiny_bert(tmp_path / "bert")
    assert main(["init", "--from-bert", str(bert), str(tmp_path / "out"), "--pooling", "mean"]) == 0
    config = json.loads((tmp_path / "out" / "embedder" / "config.json").read_text())
    assert config["retriever_pooling"] == "mean" and config["retriever_proj_size"] == 32
    assert main(["init", "--from-bert", str(bert), str(tmp_path / "cls")]) == 0
    config = json.loads((tmp_path / "cls" / "embedder" / "config.json").read_text())
    assert "retriever_pooling" not in config and config["retriever_proj_size"] == 128


def test_openqa_from_pretrained_keeps_the_embedders_pooling(tmp_path: Path) -> None:
    from realm.modeling.bert_import import openqa_from_pretrained

    bert = write_tiny_bert(tmp_path / "bert")
    init_from_bert(bert, tmp_path / "mean", pooling="mean")
    init_from_bert(bert, tmp_path / "cls")
    # A mean-pooled embedder beside an encoder whose config says [CLS]: the Open-QA config reads as the embedder.
    openqa_from_pretrained(tmp_path / "mean" / "embedder", tmp_path / "cls" / "encoder", tmp_path / "openqa")
    config = json.loads((tmp_path / "openqa" / "config.json").read_text())
    assert config["retriever_pooling"] == "mean" and config["retriever_proj_size"] == 32
