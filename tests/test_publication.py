"""One-step publication, checked by killing the writer at EACH step (not at random times).

A forked child runs the write with `realm.atomic._fault_hook` set to `os._exit` at its i-th publication
step (i = 1, 2, ... until a run completes): no `finally` runs, as under SIGKILL. After each kill the
parent opens what is on disk and must find the old state or the new one, whole; then the write is run
again, must succeed, and must leave no hidden temporary behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import realm.atomic
from realm import RealmEmbedder, RealmTokenizerFast
from realm.corpus import Block, BlockStore, build_store
from tests.conftest import REFERENCE, tiny_config

CASE = REFERENCE / "openqa_eval"

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def killed_at_each_step(write: Callable[[], None], check: Callable[[int, list[str]], None]) -> list[str]:
    """Run `write` in a child killed at step 1, 2, ...; call `check(i, steps_done)` after each kill.
    Returns the steps of a complete run."""
    for i in range(1, 50):
        read, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: record each step, die at the i-th
            os.close(read)
            seen = []

            def hook(step: str, seen: list[str] = seen, out: int = write_end, i: int = i) -> None:
                seen.append(step)
                os.write(out, (step + "\n").encode())
                if len(seen) == i:
                    os._exit(137)

            realm.atomic._fault_hook = hook
            try:
                write()
            except BaseException:  # noqa: BLE001 - report as a distinct exit code
                os._exit(3)
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read) as pipe:
            steps = pipe.read().splitlines()
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        assert code in (0, 137), f"the writer failed (exit {code}) after steps {steps}"
        if code == 0:
            assert len(steps) == i - 1, steps
            return steps
        check(i, steps)
    raise AssertionError("the write never completed")


def tokenizer() -> RealmTokenizerFast:
    return RealmTokenizerFast.from_pretrained(CASE)


def blocks(texts: list[str], first_doc: int = 0) -> list[Block]:
    tok = tokenizer()
    return [Block(f"t{i}", t, [], tok(t, add_special_tokens=False).input_ids, first_doc + i) for i, t in enumerate(texts)]


OLD = ["paris is the capital of france.", "rome is the capital of italy."]
NEW = ["an old church stands on the hill.", "the river flows to the sea.", "tokyo is in japan."]


def test_store_append_killed_at_each_step_leaves_the_old_or_the_new_store(tmp_path) -> None:
    import shutil

    from realm.verify import verify_store

    path, backup = tmp_path / "store", tmp_path / "backup"
    BlockStore.create(backup, blocks(OLD), tokenizer(), segment_rows=1)
    shutil.copytree(backup, path)
    outcomes = []

    def check(i: int, steps: list[str]) -> None:
        store = BlockStore.open(path)
        texts = store.texts(range(len(store)))
        assert texts in (OLD, OLD + NEW), (steps, texts)
        verify_store(store)  # every listed segment intact
        outcomes.append(len(texts))
        if steps[-1] == "segments published":  # new segments on disk, not listed: the next append removes them
            BlockStore.open(path).append(blocks(["one more block of text."], 2), tokenizer())
            listed = {e["file"] for e in BlockStore.open(path).manifest["segments"]}
            assert {p.name for p in path.iterdir() if "segment-" in p.name} == listed
        shutil.rmtree(path)
        shutil.copytree(backup, path)  # the next child starts from the old store again

    def append() -> None:
        BlockStore.open(path).append(blocks(NEW, 2), tokenizer(), segment_rows=2)

    steps = killed_at_each_step(append, check)
    assert "manifest.json written" in steps and "segments published" in steps
    assert outcomes.count(len(OLD)) == len(steps) - 1 and outcomes[-1] == len(OLD + NEW), outcomes
    store = BlockStore.open(path)
    assert store.texts(range(len(store))) == OLD + NEW


def _generation(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["generation"]


def test_checkpoint_save_killed_at_each_step_leaves_the_old_or_the_new_pair(tmp_path) -> None:
    torch.set_num_threads(1)
    directory = tmp_path / "embedder"
    (tmp_path / "embedder").mkdir()
    (directory / "notes.txt").write_text("kept across saves")

    def model(generation: int) -> RealmEmbedder:
        torch.manual_seed(generation)
        config = tiny_config(generation=generation, num_hidden_layers=1 + generation)  # another shape too
        embedder = RealmEmbedder(config)
        embedder.init_weights()
        return embedder

    old, new = model(1), model(2)
    old.save_pretrained(directory)
    seen = set()

    def check(i: int, steps: list[str]) -> None:
        generation = _generation(directory)
        loaded = RealmEmbedder.from_pretrained(directory)  # config and weights must agree to load at all
        expected = {1: old, 2: new}[generation]
        for (name, a), b in zip(loaded.state_dict().items(), expected.state_dict().values(), strict=True):
            assert torch.equal(a, b), (steps, name)
        assert (directory / "notes.txt").read_text() == "kept across saves"
        seen.add(generation)

    steps = killed_at_each_step(lambda: new.save_pretrained(directory), check)
    assert "update exchanged" in steps and "config.json written" in steps
    assert seen == {1, 2}, seen
    new.save_pretrained(directory)
    assert _generation(directory) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], list(tmp_path.iterdir())


def test_killed_blocks_build_leaves_no_hidden_directory_after_a_successful_rerun(tmp_path) -> None:
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"title": f"t{i}", "text": t}) + "\n" for i, t in enumerate(OLD + NEW)))
    out = tmp_path / "store"

    left = []

    def check(i: int, steps: list[str]) -> None:
        if out.exists():  # published: it must be the whole store
            assert len(BlockStore.open(out)) == len(OLD + NEW)
        left.append(any(p.name.startswith(".store.tmp-") for p in tmp_path.iterdir()))

    killed_at_each_step(lambda: build_store(source, out, tokenizer(), progress=False, overwrite=out.exists()), check)
    assert any(left), "no kill left a temporary to clean"
    build_store(source, out, tokenizer(), progress=False, overwrite=True)
    assert len(BlockStore.open(out)) == len(OLD + NEW)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
