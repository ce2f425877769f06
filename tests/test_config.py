from __future__ import annotations

import json

import pytest

from realm import RealmConfig
from tests.conftest import REFERENCE


def test_defaults_are_the_ports() -> None:
    c = RealmConfig()
    assert (c.vocab_size, c.hidden_size, c.retriever_proj_size, c.num_candidates) == (30522, 768, 128, 8)
    assert (c.hidden_act, c.layer_norm_eps, c.reader_layer_norm_eps) == ("gelu_new", 1e-12, 1e-3)
    assert (c.span_hidden_size, c.max_span_width, c.reader_beam_size, c.reader_seq_len) == (256, 10, 5, 320)
    assert (c.num_block_records, c.searcher_beam_size, c.pad_token_id) == (13353718, 5000, 1)
    assert c.model_type == "realm" and c.tie_word_embeddings


def test_unknown_keys_survive_a_round_trip(tmp_path) -> None:
    hub_like = {**RealmConfig().to_dict(), "searcher_seq_len": 64, "use_cache": True, "transformers_version": "4.16.0.dev0"}
    (tmp_path / "config.json").write_text(json.dumps(hub_like))
    config = RealmConfig.from_pretrained(tmp_path)
    assert config.searcher_seq_len == 64 and config.use_cache is True
    config.save_pretrained(tmp_path / "out")
    again = json.loads((tmp_path / "out" / "config.json").read_text())
    assert again == hub_like
    assert RealmConfig.from_pretrained(tmp_path / "out") == config


def test_reads_the_ports_config_files() -> None:
    config = RealmConfig.from_pretrained(REFERENCE / "openqa_eval")
    assert config.hidden_size == 32 and config.num_block_records == 8
    assert config.architectures == ["RealmForOpenQA"]
    assert config.tie_word_embeddings  # absent from the port's file: defaults to True


def test_wrong_model_type_names_the_file(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(ValueError, match=r"config\.json.*model_type is 'bert'"):
        RealmConfig.from_pretrained(tmp_path)


def test_bad_json_and_missing_file_name_the_path(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        RealmConfig.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        RealmConfig.from_pretrained(tmp_path / "nowhere")


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        RealmConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(NotImplementedError, match="relative_key"):
        RealmConfig(position_embedding_type="relative_key")
    with pytest.raises(ValueError, match="hidden_act"):
        RealmConfig(hidden_act="nope")
