"""One huge document is streamed: tokenized and packed a slice at a time, with the same blocks as before."""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
from pathlib import Path

import pytest

import realm.corpus.blocks as blocks_module
from realm import RealmTokenizerFast
from realm.corpus import BlockBuilder, Document
from tests.conftest import REFERENCE

CASE = REFERENCE / "openqa_eval"
REPO = Path(__file__).resolve().parents[1]
SRC = str(Path(blocks_module.__file__).resolve().parents[2])  # the realm under test, in the child too
WORDS = "the river flows through the old capital city where kings once ruled over fertile plains".split()


def text(n_words: int, seed: int, sentences: bool, long_words: bool = True) -> str:
    rng = random.Random(seed)
    out = []
    for i in range(n_words):
        out.append(rng.choice(WORDS) + ("." if sentences and rng.random() < 0.08 else ""))
        if long_words and i % 5000 == 4999:
            out.append("x" * 300)  # an over-long "word" too
    return " ".join(out)


def test_streamed_slices_give_the_blocks_of_one_whole_call(monkeypatch) -> None:
    tokenizer = RealmTokenizerFast.from_pretrained(CASE)
    documents = [Document("long", text(20_000, 0, True), "x", 1), Document("run-on", text(20_000, 1, False), "x", 2),
                 Document("short", "paris is the capital of france.", "x", 3)]  # fmt: skip
    whole = list(BlockBuilder(tokenizer).build(documents))
    monkeypatch.setattr(blocks_module, "_SLICE_CHARS", 1000)  # every long text now goes slice by slice
    monkeypatch.setattr(BlockBuilder._encode_stream, "__defaults__", (1000,))
    streamed = list(BlockBuilder(tokenizer).build(documents))
    assert len(whole) > 50 and streamed == whole


SCRIPT = """
import resource, sys
from realm.cli import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def peak_kib(source: Path, out: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, "blocks", "build", str(source), str(out), "--tokenizer", str(CASE), "--no-progress"],
        capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_4_mb_document_without_sentence_ends_builds_in_bounded_memory(tmp_path) -> None:
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    small.write_text(json.dumps({"title": "s", "text": "paris is the capital of france."}) + "\n")
    big.write_text(json.dumps({"title": "b", "text": text(850_000, 2, False, long_words=False)}) + "\n")
    assert big.stat().st_size > 4_000_000
    base, peak = peak_kib(small, tmp_path / "s1"), peak_kib(big, tmp_path / "s2")
    # Before streaming it took ~+1 GB here (the whole text tokenized in one call); now a few slices' worth.
    print(f"peak RSS {base // 1024} MiB (small document) -> {peak // 1024} MiB (4 MB document)")
    assert peak - base < 250 * 1024, (base, peak)
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss >= peak
