"""Every manifest and config.json is checked field by field before use (`realm.schema`): a wrong shape is
one sentence naming the file, the key, the value and what is expected, never a TypeError/KeyError later."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from realm import RealmConfig, RealmTokenizerFast
from realm.corpus import Block, BlockStore
from realm.index import open_index, write_embeddings
from tests.conftest import REFERENCE, tiny_config

CASE = REFERENCE / "openqa_eval"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    tokenizer = RealmTokenizerFast.from_pretrained(CASE)
    root = tmp_path_factory.mktemp("validation")
    texts = ["paris is the capital of france.", "rome is the capital of italy.", "an old church."]
    blocks = [Block(f"t{i}", t, [], tokenizer(t, add_special_tokens=False).input_ids, i) for i, t in enumerate(texts)]
    BlockStore.create(root / "store", blocks, tokenizer)
    write_embeddings(root / "index", torch.randn(3, 8))
    return root


def edited(src: Path, dst: Path, change) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    (dst / "manifest.json").write_text(json.dumps(change(manifest)))
    return dst


STORE_CASES = {
    "list": (lambda m: [], "expected a block store manifest (a JSON object)"),
    "segments-int": (lambda m: {**m, "segments": 5}, "segments is 5; expected a JSON list"),
    "tokenizer-str": (lambda m: {**m, "tokenizer": "x"}, 'tokenizer is "x"; expected a JSON object'),
    "num_blocks-str": (lambda m: {**m, "num_blocks": "3"}, 'num_blocks is "3"; expected an integer'),
    "segment-bytes": (
        lambda m: {**m, "segments": [{**m["segments"][0], "bytes": None}]},
        "segments[0].bytes is null; expected an integer",
    ),
    "segment-path": (
        lambda m: {**m, "segments": [{**m["segments"][0], "file": "../../etc/passwd"}]},
        "not plain, distinct .arrow names",
    ),
}


@pytest.mark.parametrize("case", sorted(STORE_CASES))
def test_store_manifest_of_the_wrong_shape_is_refused_naming_the_key(store_dir, tmp_path, case) -> None:
    change, expected = STORE_CASES[case]
    bad = edited(store_dir / "store", tmp_path / "s", change)
    with pytest.raises(ValueError) as info:
        BlockStore.open(bad)
    assert str(bad / "manifest.json") in str(info.value) and expected in str(info.value)


INDEX_CASES = {
    "int": (lambda m: 123, "holds 123; expected an index manifest (a JSON object)"),
    "count-null": (lambda m: {**m, "count": None}, "count is null; expected an integer >= 0"),
    "count-str": (lambda m: {**m, "count": "3000"}, 'count is "3000"; expected an integer >= 0'),
    "dim-str": (lambda m: {**m, "dim": "128"}, 'dim is "128"; expected an integer >= 1'),
    "dtype": (lambda m: {**m, "dtype": "int8"}, "dtype is \"int8\"; expected one of 'float32', 'float16'"),
}


@pytest.mark.parametrize("case", sorted(INDEX_CASES))
def test_index_manifest_of_the_wrong_shape_is_refused_naming_the_key(store_dir, tmp_path, case) -> None:
    change, expected = INDEX_CASES[case]
    bad = edited(store_dir / "index", tmp_path / "i", change)
    with pytest.raises(ValueError) as info:
        open_index(bad)
    assert str(bad / "manifest.json") in str(info.value) and expected in str(info.value)


def test_sparse_manifest_of_the_wrong_shape_is_refused(store_dir, tmp_path) -> None:
    pytest.importorskip("bm25s")
    from realm.index.sparse import SparseIndex, build_sparse_index

    build_sparse_index(store_dir / "store", tmp_path / "sparse", progress=False)
    for change, expected in [
        (lambda m: {**m, "count": "3"}, 'count is "3"; expected an integer >= 0'),
        (lambda m: {**m, "tokenization": None}, "tokenization is null; expected a JSON object"),
        (lambda m: {**m, "version": "1"}, 'version is "1"; expected an integer >= 1'),
    ]:
        bad = edited(tmp_path / "sparse", tmp_path / "bad", change)
        with pytest.raises(ValueError) as info:
            SparseIndex.open(bad)
        assert expected in str(info.value) and str(bad / "manifest.json") in str(info.value)
        shutil.rmtree(bad)


CONFIG_CASES = {
    "hidden_size": ("384", 'hidden_size is "384"; expected an integer >= 1'),
    "vocab_size": (None, "vocab_size is null; expected an integer >= 1"),
    "retriever_proj_size": ("128", 'retriever_proj_size is "128"; expected an integer >= 1'),
    "num_hidden_layers": (6.5, "num_hidden_layers is 6.5; expected an integer >= 1"),
    "num_attention_heads": (-1, "num_attention_heads is -1; expected an integer >= 1"),
    "layer_norm_eps": ("x", 'layer_norm_eps is "x"; expected a number'),
    "tie_word_embeddings": (1, "tie_word_embeddings is 1; expected true or false"),
}


@pytest.mark.parametrize("key", sorted(CONFIG_CASES))
def test_config_json_with_a_wrong_type_names_key_value_and_type(tmp_path, key) -> None:
    value, expected = CONFIG_CASES[key]
    data = tiny_config().to_dict()
    data[key] = value
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError) as info:
        RealmConfig.from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value) and expected in str(info.value)


def test_no_layers_and_impossible_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="num_hidden_layers is -1"):
        tiny_config(num_hidden_layers=-1)
    with pytest.raises(ValueError, match="num_hidden_layers is 0"):
        tiny_config(num_hidden_layers=0)
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        tiny_config(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_dropout_prob is 1.5"):
        tiny_config(hidden_dropout_prob=1.5)
    config = tiny_config()
    with pytest.raises(ValueError, match="hidden_size is"):
        config.set("hidden_size", "32")
    assert config.hidden_size == 32  # a refused override leaves the config as it was


def test_every_committed_fixture_config_still_loads() -> None:
    configs = sorted(Path(REFERENCE).parent.rglob("config.json"))
    assert configs
    for path in configs:
        data = json.loads(path.read_text())
        if data.get("model_type", "realm") == "realm":
            RealmConfig.from_json_file(path)
