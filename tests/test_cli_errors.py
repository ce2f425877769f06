"""The battery of issue 15 as tests: every CLI failure ends as ONE `realm: error: ...` line naming the file
or argument and the fix, never a traceback; and what used to be accepted silently (an index from another
store or embedder, a model with no layers, an empty corpus) is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from realm import RealmForOpenQA, RealmRetriever, RealmTokenizerFast
from realm.cli import main
from realm.corpus import Block, BlockStore
from realm.index.build import IndexBuildConfig, build_index
from tests.conftest import REFERENCE

CASE = REFERENCE / "openqa_eval"
REPO = Path(__file__).resolve().parents[1]
TEXTS = json.loads((CASE / "block_records.json").read_text())


def make_store(directory: Path, texts: list[str]) -> BlockStore:
    tokenizer = RealmTokenizerFast.from_pretrained(CASE)
    blocks = [Block(f"doc {i}", t, [], tokenizer(t, add_special_tokens=False).input_ids, i) for i, t in enumerate(texts)]
    return BlockStore.create(directory, blocks, tokenizer)


def one_error(capsys, argv: list[str], *needles: str) -> str:
    """Run `realm argv`; it must fail with one `realm: error:` line containing every needle."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    errors = [line for line in err if line.startswith("realm: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A store, an embedder saved from the fixture model, an index built with it, and the odd ones out."""
    root = tmp_path_factory.mktemp("cli_errors")
    store = make_store(root / "store", TEXTS)
    model = RealmForOpenQA.from_pretrained(CASE, retriever=RealmRetriever(store, RealmTokenizerFast.from_pretrained(CASE)))
    model.embedder.save_pretrained(root / "embedder")
    config = IndexBuildConfig(chunk_size=4, batch_size=4, max_length=24)
    common = dict(store_fingerprint=store.fingerprint, special_ids=store.special_ids, progress=False)
    build_index(store, root / "embedder", root / "index", config, **common)
    # Another embedder over the same store: same count, same store, other vectors.
    other = model.embedder
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05)
    other.save_pretrained(root / "embedder_other")
    build_index(store, root / "embedder_other", root / "index_other_embedder", config, **common)
    # Another store with the same number of blocks, and an index built from it.
    store_b = make_store(root / "store_b", [t[::-1] for t in TEXTS])
    build_index(store_b, root / "embedder", root / "index_other_store", config,
                store_fingerprint=store_b.fingerprint, special_ids=store_b.special_ids, progress=False)  # fmt: skip
    return {p.name: p for p in root.iterdir()}


def ask(world, index: str, model: Path = CASE) -> list[str]:
    return ["ask", "the capital of france?", "--model", str(model), "--store", str(world["store"]), "--index", str(world[index]), "--k", "2"]


def test_the_matching_index_answers(world, capsys) -> None:
    assert main(ask(world, "index")) == 0
    assert "Q: the capital of france?" in capsys.readouterr().out


def test_ask_refuses_an_index_built_from_another_store_with_the_same_count(world, capsys) -> None:
    one_error(capsys, ask(world, "index_other_store"), str(world["index_other_store"]), "different block store", "realm index build")


def test_ask_refuses_an_index_built_with_another_embedder(world, capsys) -> None:
    one_error(capsys, ask(world, "index_other_embedder"), "built with another embedder", "realm index build")


def test_a_model_with_no_layers_is_refused(world, tmp_path, capsys) -> None:
    model = tmp_path / "model"
    shutil.copytree(CASE, model)
    data = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**data, "num_hidden_layers": -1}))
    one_error(capsys, ask(world, "index", model), str(model / "config.json"), "num_hidden_layers is -1", "expected an integer >= 1")


@pytest.mark.parametrize(
    "key, value, expected",
    [("hidden_size", "384", 'hidden_size is "384"'), ("vocab_size", None, "vocab_size is null"),
     ("retriever_proj_size", "128", 'retriever_proj_size is "128"'), ("num_hidden_layers", 6.5, "num_hidden_layers is 6.5")],
)  # fmt: skip
def test_config_json_of_the_wrong_type_is_one_error_line(world, tmp_path, capsys, key, value, expected) -> None:
    model = tmp_path / "model"
    shutil.copytree(CASE, model)
    data = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**data, key: value}))
    one_error(capsys, ask(world, "index", model), str(model / "config.json"), expected, "fix config.json")


def _damage(data: bytes, kind: str) -> bytes:
    header = int.from_bytes(data[:8], "little")
    return {
        "empty": b"",
        "short-length": data[:5],
        "cut-header": data[: 8 + header // 2],
        "cut-data": data[: len(data) - 100],
        "huge-header-length": (10**12).to_bytes(8, "little") + data[8:],
        "garbage-header": data[:8] + b"\xff" * header + data[8 + header :],
    }[kind]


@pytest.mark.parametrize("kind", ["empty", "short-length", "cut-header", "cut-data", "huge-header-length", "garbage-header"])
def test_a_damaged_model_safetensors_names_the_file(world, tmp_path, capsys, kind) -> None:
    model = tmp_path / "model"
    shutil.copytree(CASE, model)
    weights = model / "model.safetensors"
    weights.write_bytes(_damage(weights.read_bytes(), kind))
    one_error(capsys, ask(world, "index", model), str(weights), "truncated or damaged", "restore")


def test_an_embedder_with_a_smaller_vocabulary_than_the_store_is_refused(world, tmp_path, capsys) -> None:
    from realm import RealmConfig, RealmEmbedder

    small = tmp_path / "embedder_small"
    config = RealmConfig.from_pretrained(world["embedder"]).copy(vocab_size=16)
    embedder = RealmEmbedder(config)
    embedder.init_weights()
    embedder.save_pretrained(small)
    args = ["index", "build", "--store", str(world["store"]), "--embedder", str(small), "--out", str(tmp_path / "i"), "--no-progress"]
    one_error(capsys, args, "51-wordpiece vocabulary", "has 16 wordpieces", str(small))


def test_missing_tokenizer_directory_and_out_that_is_a_file(tmp_path, capsys) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"title": "a", "text": "paris is the capital of france."}) + "\n")
    one_error(capsys, ["blocks", "build", str(corpus), str(tmp_path / "s"), "--tokenizer", str(tmp_path / "nope"), "--no-progress"],
              "--tokenizer", "no such directory", "vocab.txt")  # fmt: skip
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    one_error(capsys, ["blocks", "build", str(corpus), str(a_file), "--tokenizer", str(CASE), "--no-progress"],
              str(a_file), "is a file")  # fmt: skip
    one_error(capsys, ["index", "build", "--store", str(tmp_path), "--embedder", str(CASE), "--out", str(a_file)],
              "--out", str(a_file), "is a file")  # fmt: skip


def test_negative_workers_are_refused_by_the_parser(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["blocks", "build", "x", str(tmp_path / "s"), "--tokenizer", str(CASE), "--workers", "-1"])
    assert info.value.code == 2 and "expected an integer >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["empty-file", "blank-lines", "empty-dir", "only-unknown-files", "empty-texts"])
def test_empty_input_is_an_error_and_creates_no_store(tmp_path, capsys, case) -> None:
    source = tmp_path / "in"
    if case == "empty-file":
        source = tmp_path / "in.jsonl"
        source.write_text("")
    elif case == "blank-lines":
        source = tmp_path / "in.jsonl"
        source.write_text("\n   \n\n")
    elif case == "empty-texts":
        source = tmp_path / "in.jsonl"
        source.write_text(json.dumps({"title": "t", "text": ""}) + "\n")
    else:
        source.mkdir()
        if case == "only-unknown-files":
            (source / "README.md").write_text("# hi")
            (source / "data.csv").write_text("a,b\n1,2\n")
    out = tmp_path / "store"
    one_error(capsys, ["blocks", "build", str(source), str(out), "--tokenizer", str(CASE), "--no-progress"], str(source), "nothing" if "dir" in case or "unknown" in case else "no text")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".store")], "a hidden temporary directory was left"


def test_verify_says_what_a_directory_is_and_whether_it_is_intact(world, tmp_path, capsys) -> None:
    assert main(["verify", str(world["store"]), str(world["index"]), str(CASE)]) == 0
    out = capsys.readouterr().out
    assert f"{world['store']}: block store; intact" in out
    assert f"{world['index']}: dense index; intact" in out
    assert f"{CASE}: checkpoint; intact" in out
    damaged = tmp_path / "store"
    shutil.copytree(world["store"], damaged)
    segment = damaged / "segment-00000.arrow"
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the checksum can tell
    segment.write_bytes(bytes(data))
    assert main(["verify", str(damaged)]) == 1
    out = capsys.readouterr().out
    assert f"{damaged}: block store; DAMAGED: {segment} is damaged: its sha256" in out


def test_the_real_command_prints_one_line_without_traceback(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "realm.cli", "blocks", "build", str(tmp_path / "none.jsonl"), str(tmp_path / "s"),
         "--tokenizer", str(tmp_path / "missing-tok")],
        capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("realm: error: --tokenizer") and "Traceback" not in result.stderr
