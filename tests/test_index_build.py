"""`realm index build`: correct embeddings, resume after kill -9, and the same bytes from 1 or 2 processes."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from realm import RealmEmbedder, RealmTokenizerFast
from realm.corpus import BlockStore, BuildConfig, build_store
from realm.index.build import IndexBuildConfig, build_index
from realm.inputs import block_inputs
from tests.conftest import REFERENCE, tiny_config

WORDS = (
    "the river city mountain king queen war treaty signed year born died capital empire island north south "
    "university founded church built bridge railway station museum painter composer novel film album song"
).split()


def make_corpus(path: Path, documents: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for d in range(documents):
            sentences = [
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25))).capitalize() + "."
                for _ in range(rng.randint(2, 30))
            ]
            f.write(json.dumps({"title": f"Page {d}", "text": " ".join(sentences)}) + "\n")


def make_embedder(path: Path, **changes: object) -> None:
    torch.manual_seed(0)
    model = RealmEmbedder(tiny_config(vocab_size=30522, max_position_embeddings=512, **changes))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("index_build")
    tokenizer = RealmTokenizerFast.from_pretrained(REFERENCE / "tokenizer" / "fast")
    make_corpus(root / "docs.jsonl", 60)
    build_store(root / "docs.jsonl", root / "store", tokenizer, BuildConfig(max_block_tokens=64), progress=False)
    make_embedder(root / "embedder")
    return {"root": root, "store": root / "store", "embedder": root / "embedder"}


def run_build(corpus: dict[str, Path], out: Path, **options: object) -> None:
    store = BlockStore.open(corpus["store"])
    build_index(
        store,
        corpus["embedder"],
        out,
        IndexBuildConfig(**options),
        store_fingerprint=store.fingerprint,
        special_ids=store.special_ids,
        progress=False,
    )


def test_embeddings_equal_embedding_each_block_alone(corpus, tmp_path) -> None:
    run_build(corpus, tmp_path / "index", chunk_size=16, batch_size=5)
    store = BlockStore.open(corpus["store"])
    matrix = np.load(tmp_path / "index" / "embeddings.npy")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert matrix.shape == (len(store), 16) and manifest["count"] == len(store) and manifest["dtype"] == "float32"
    assert manifest["store_fingerprint"] == store.fingerprint
    assert not (tmp_path / "index" / ".build").exists()
    embedder = RealmEmbedder.from_pretrained(corpus["embedder"])
    cls_id, sep_id, _ = store.special_ids
    ids = list(range(len(store)))
    for i, (title, text) in enumerate(zip(store.title_ids(ids), store.token_ids(ids), strict=True)):
        input_ids, types = block_inputs(title, text, cls_id, sep_id, 288)
        with torch.no_grad():
            alone = embedder(torch.tensor([input_ids]), token_type_ids=torch.tensor([types])).projected_score[0]
        np.testing.assert_allclose(matrix[i], alone.numpy(), atol=1e-5, rtol=0)


def test_fp16_storage_and_idempotent_rerun(corpus, tmp_path) -> None:
    run_build(corpus, tmp_path / "fp32", chunk_size=64)
    run_build(corpus, tmp_path / "fp16", chunk_size=64, storage_dtype="float16")
    fp16 = np.load(tmp_path / "fp16" / "embeddings.npy")
    assert fp16.dtype == np.float16
    np.testing.assert_allclose(fp16, np.load(tmp_path / "fp32" / "embeddings.npy"), atol=2e-3)
    before = (tmp_path / "fp16" / "embeddings.npy").stat().st_mtime_ns
    run_build(corpus, tmp_path / "fp16", chunk_size=64, storage_dtype="float16")  # already built: no work
    assert (tmp_path / "fp16" / "embeddings.npy").stat().st_mtime_ns == before


def test_leftover_work_from_another_build_is_refused(corpus, tmp_path) -> None:
    work = tmp_path / "index" / ".build"
    work.mkdir(parents=True)
    (work / "plan.json").write_text(json.dumps({"count": 1, "build": {}, "store_fingerprint": "x", "embedder_fingerprint": "y"}))
    with pytest.raises(RuntimeError, match=r"interrupted build with different .*rm -r"):
        run_build(corpus, tmp_path / "index")


def cli_build(corpus: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "index", "build", "--store", str(corpus["store"]), "--embedder", str(corpus["embedder"]),
        "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_kill_9_then_resume_gives_identical_bytes(corpus, tmp_path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    tokenizer = RealmTokenizerFast.from_pretrained(REFERENCE / "tokenizer" / "fast")
    make_corpus(big / "docs.jsonl", 400, seed=1)
    build_store(big / "docs.jsonl", big / "store", tokenizer, BuildConfig(max_block_tokens=256), progress=False)
    make_embedder(big / "embedder", hidden_size=128, intermediate_size=256, num_hidden_layers=3)
    setup = {"store": big / "store", "embedder": big / "embedder"}
    args = cli_build(setup, tmp_path / "resumed", "--chunk-size", "8", "--batch-size", "4")

    process = subprocess.Popen([sys.executable, "-m", "realm.cli", *args])
    work = tmp_path / "resumed" / ".build"
    deadline = time.monotonic() + 120
    while len(list(work.glob("chunk-*.npy"))) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(work.glob("chunk-*.npy")))
    total = -(-len(BlockStore.open(big / "store")) // 8)
    assert 3 <= done < total, f"the kill should land mid-build ({done} of {total} chunks done)"
    assert not (tmp_path / "resumed" / "manifest.json").exists()

    subprocess.run([sys.executable, "-m", "realm.cli", *args], check=True, timeout=600)
    subprocess.run(
        [sys.executable, "-m", "realm.cli", *cli_build(setup, tmp_path / "straight", "--chunk-size", "8", "--batch-size", "4")],
        check=True,
        timeout=600,
    )
    resumed = (tmp_path / "resumed" / "embeddings.npy").read_bytes()
    assert resumed == (tmp_path / "straight" / "embeddings.npy").read_bytes()


@pytest.mark.slow
def test_two_processes_build_the_same_index(corpus, tmp_path) -> None:
    # Bitwise equality needs the same intra-op thread count in every process: CPU matmuls split their
    # work by thread, which changes the rounding (torchrun gives each of its processes one thread).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = cli_build(corpus, tmp_path / "one", "--chunk-size", "16", "--batch-size", "5")
    two = cli_build(corpus, tmp_path / "two", "--chunk-size", "16", "--batch-size", "5")
    subprocess.run([sys.executable, "-m", "realm.cli", *one], check=True, timeout=600, env=env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    subprocess.run(
        [*torchrun, "--master_port", str(free_port()), "-m", "realm.cli", *two], check=True, timeout=600, env=env
    )
    assert (tmp_path / "one" / "embeddings.npy").read_bytes() == (tmp_path / "two" / "embeddings.npy").read_bytes()
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["count"] == len(BlockStore.open(corpus["store"]))


def test_add_documents_embeds_only_the_new_blocks(corpus, tmp_path) -> None:
    import shutil

    from realm.cli import main
    from realm.index.build import check_index

    store_dir = tmp_path / "store"
    shutil.copytree(corpus["store"], store_dir)
    run_build({**corpus, "store": store_dir}, tmp_path / "index", chunk_size=16, batch_size=5)
    before = np.load(tmp_path / "index" / "embeddings.npy")
    make_corpus(tmp_path / "more.jsonl", 7, seed=5)
    args = ["index", "add", str(tmp_path / "more.jsonl"), "--store", str(store_dir), "--index", str(tmp_path / "index"),
            "--embedder", str(corpus["embedder"]), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    from realm.index.live import open_segments

    store = BlockStore.open(store_dir)
    parts, _ = open_segments(tmp_path / "index")
    after = np.concatenate([m for _, m in parts])  # the base matrix + the new segment
    assert len(after) == len(store) > len(before)
    assert np.array_equal(np.load(tmp_path / "index" / "embeddings.npy"), before)  # old file untouched
    run_build({**corpus, "store": store_dir}, tmp_path / "rebuilt", chunk_size=16, batch_size=5)
    np.testing.assert_allclose(after, np.load(tmp_path / "rebuilt" / "embeddings.npy"), atol=1e-5, rtol=0)
    check_index(tmp_path / "index", store, embedder_path=corpus["embedder"])  # consistent again
    assert not list((tmp_path / "index").glob("segments/*/.build"))


def test_mismatched_index_is_refused_with_the_rebuild_command(corpus, tmp_path) -> None:
    from realm.index.build import check_index

    run_build(corpus, tmp_path / "index", chunk_size=64)
    other = tmp_path / "other_store"
    make_corpus(tmp_path / "other.jsonl", 3, seed=9)
    tokenizer = RealmTokenizerFast.from_pretrained(REFERENCE / "tokenizer" / "fast")
    build_store(tmp_path / "other.jsonl", other, tokenizer, BuildConfig(max_block_tokens=64), progress=False)
    with pytest.raises(ValueError, match=r"has \d[\d,]* blocks but the store has \d+; rebuild it with: realm index build"):
        check_index(tmp_path / "index", BlockStore.open(other), store_dir=other)
    make_embedder(tmp_path / "embedder2", num_hidden_layers=1)
    with pytest.raises(ValueError, match="different embedder"):
        check_index(tmp_path / "index", BlockStore.open(corpus["store"]), embedder_path=tmp_path / "embedder2")


def test_add_resumes_after_a_crash_without_adding_twice(corpus, tmp_path, monkeypatch) -> None:
    import shutil

    import realm.index.add as add_module

    store_dir = tmp_path / "store"
    shutil.copytree(corpus["store"], store_dir)
    run_build({**corpus, "store": store_dir}, tmp_path / "index", chunk_size=16)
    make_corpus(tmp_path / "more.jsonl", 4, seed=6)
    real_build = add_module.build_index

    def crash(*args, **kwargs):
        raise RuntimeError("killed while embedding")

    monkeypatch.setattr(add_module, "build_index", crash)
    with pytest.raises(RuntimeError, match="killed"):
        add_module.add_documents(tmp_path / "more.jsonl", store_dir, tmp_path / "index", corpus["embedder"], progress=False)
    grown = len(BlockStore.open(store_dir))
    monkeypatch.setattr(add_module, "build_index", real_build)
    result = add_module.add_documents(tmp_path / "more.jsonl", store_dir, tmp_path / "index", corpus["embedder"], progress=False)
    assert result.resumed and result.blocks_after == grown == len(BlockStore.open(store_dir))
    from realm.index import read_manifest

    assert read_manifest(tmp_path / "index").count == grown
