"""`realm index compact --store`: removed blocks dropped from the store and the index (issue 14), with the id
mapping explicit, every search kind checked, answers for kept blocks unchanged, and kills at every step of
the two-directory publication (forked children, and one real SIGKILL of the CLI) recoverable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import realm.atomic
from realm.corpus import BlockStore
from realm.index import ExactIndex, open_index, read_manifest
from realm.index.build import check_index
from realm.index.reclaim import old_to_new, read_id_map, reclaim, staged
from realm.index.update import remove_documents
from tests.test_index_build import corpus, run_build  # noqa: F401  (the module's fixture)
from tests.test_index_live import all_rows, blocks_of, grown

REPO = Path(__file__).resolve().parents[1]


def removed_setup(corpus, root: Path) -> tuple[dict[str, Path], np.ndarray]:  # noqa: F811
    setup = grown(corpus, root)
    store = BlockStore.open(setup["store"])
    gone = blocks_of(store, "Page 3") | blocks_of(store, "Page 10")
    remove_documents(setup["store"], setup["index"], titles=["Page 3"], doc_ids=[10])
    return setup, np.asarray(sorted(gone), dtype=np.int64)


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("segment-*.arrow"))


def snapshot(setup: dict[str, Path]) -> tuple:
    store = BlockStore.open(setup["store"])
    manifest = read_manifest(setup["index"])
    return (store.fingerprint, len(store), manifest.count, manifest.extra["store_fingerprint"],
            all_rows(setup["index"]).tobytes(), read_id_map(setup["store"]).tobytes(),
            read_id_map(setup["index"]).tobytes())  # fmt: skip


def test_compact_drops_removed_blocks_from_store_index_faiss_and_bm25(corpus, tmp_path) -> None:  # noqa: F811
    from realm.index.faiss_index import FaissIndex
    from realm.index.hybrid import HybridIndex
    from realm.index.sparse import SparseIndex, build_sparse_index

    setup = grown(corpus, tmp_path)
    rows = np.load(setup["index"] / "embeddings.npy")
    FaissIndex.build(np.load(setup["index"] / "embeddings.npy", mmap_mode="r"), "IVF4,Flat", nprobe=4).save(setup["index"])
    old = BlockStore.open(setup["store"])
    build_sparse_index(setup["store"], tmp_path / "bm25", progress=False)
    gone = np.asarray(sorted(blocks_of(old, "Page 3") | blocks_of(old, "Page 10")))
    remove_documents(setup["store"], setup["index"], titles=["Page 3"], doc_ids=[10])
    queries = torch.from_numpy(rows[::3].copy())
    k = 30
    before = open_index(setup["index"]).search(queries, k)  # IVF with tombstones (all 4 lists probed: exact)
    old_texts = old.texts(np.arange(len(old)))
    sizes = store_bytes(setup["store"]), (setup["index"] / "embeddings.npy").stat().st_size

    result = reclaim(setup["store"], setup["index"], sparse_dir=tmp_path / "bm25")

    store = BlockStore.open(setup["store"])
    keep = np.setdiff1d(np.arange(len(old)), gone)
    assert (result.blocks_before, result.blocks_after, result.removed) == (len(old), len(keep), len(gone))
    assert len(store) == len(keep) and len(store.removed_ids) == 0
    # the space is back: fewer segment bytes, a smaller matrix
    assert store_bytes(setup["store"]) < sizes[0] and result.store_bytes == (sizes[0], store_bytes(setup["store"]))
    assert (setup["index"] / "embeddings.npy").stat().st_size < sizes[1]
    # the id mapping, explicit and the same in both directories
    id_map = read_id_map(setup["store"])
    assert np.array_equal(id_map, keep) and np.array_equal(read_id_map(setup["index"]), keep)
    assert np.array_equal(old_to_new(id_map, gone), np.full(len(gone), -1))
    assert np.array_equal(old_to_new(id_map, keep), np.arange(len(keep)))
    assert store.texts(np.arange(len(store))) == [old_texts[i] for i in keep]
    assert not set(store.texts(np.arange(len(store)))) & {old_texts[i] for i in gone}  # the text is gone
    assert np.array_equal(all_rows(setup["index"]), rows[keep])  # the kept rows' very bytes, removed rows gone
    # FAISS rebuilt over the kept rows: the same hits as before, through the map, and as exact search
    ivf = open_index(setup["index"])
    assert isinstance(ivf, FaissIndex) and int(ivf.index.ntotal) == len(keep)
    after = ivf.search(queries, k)
    assert torch.equal(torch.from_numpy(id_map)[after.ids], before.ids)
    torch.testing.assert_close(after.scores, before.scores)
    want = ExactIndex(rows[keep]).search(queries, k)  # (ids of near-ties may swap between FAISS and torch sums)
    torch.testing.assert_close(after.scores, want.scores, rtol=0, atol=1e-4)
    # hybrid: BM25 rebuilt over the new store; no hit is a removed block (old id), every id in range
    sparse = SparseIndex.open(tmp_path / "bm25", store)
    texts = [old_texts[i] for i in gone]
    hybrid = HybridIndex(ExactIndex(all_rows(setup["index"])), sparse, depth=20)
    hits = hybrid.search(torch.from_numpy(rows[gone].copy()), k, texts=texts).ids
    assert (hits >= 0).all() and (hits < len(store)).all()
    assert not set(id_map[hits.numpy()].flatten().tolist()) & set(gone.tolist())
    # nothing left beside the pair
    assert not staged(setup["store"]).exists() and not staged(setup["index"]).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert reclaim(setup["store"], setup["index"]).removed == 0  # again: nothing to do


def test_answers_for_kept_blocks_are_unchanged(tmp_path) -> None:
    from realm import RealmForOpenQA, RealmRetriever, RealmTokenizerFast
    from realm.index.build import IndexBuildConfig, build_index
    from realm.pipeline import Pipeline
    from tests.test_serve import CASE, make_store

    tokenizer = RealmTokenizerFast.from_pretrained(CASE)
    store = make_store(tmp_path / "store", json.loads((CASE / "block_records.json").read_text()), tokenizer)
    model = RealmForOpenQA.from_pretrained(CASE, retriever=RealmRetriever(store, tokenizer))
    model.embedder.save_pretrained(tmp_path / "embedder")
    build_index(store, tmp_path / "embedder", tmp_path / "index", IndexBuildConfig(chunk_size=4, batch_size=4, max_length=24),
                store_fingerprint=store.fingerprint, special_ids=store.special_ids, progress=False)  # fmt: skip
    questions = ["the capital of france?", "which city has the eiffel tower?", "the capital of italy", "old church"]
    remove_documents(tmp_path / "store", tmp_path / "index", titles=["doc 1", "doc 6"])
    before = Pipeline.from_pretrained(CASE, tmp_path / "store", tmp_path / "index", k=3).ask(questions)
    reclaim(tmp_path / "store", tmp_path / "index")
    after = Pipeline.from_pretrained(CASE, tmp_path / "store", tmp_path / "index", k=3).ask(questions)
    id_map = read_id_map(tmp_path / "store")
    assert len(id_map) == 6
    for b, a in zip(before, after, strict=True):
        assert (a.text, a.span_start, a.span_end) == (b.text, b.span_start, b.span_end)
        assert int(id_map[a.block_id]) == b.block_id
        assert [int(id_map[e.block_id]) for e in a.evidence] == [e.block_id for e in b.evidence]
        assert [e.text for e in a.evidence] == [e.text for e in b.evidence]
        assert a.probability == pytest.approx(b.probability, abs=1e-6)
        assert a.score == pytest.approx(b.score, abs=1e-5)


def test_a_kill_at_every_step_leaves_a_usable_pair_and_a_rerun_finishes(corpus, tmp_path) -> None:  # noqa: F811
    from tests.test_publication import killed_at_each_step

    pristine, gone = removed_setup(corpus, tmp_path / "pristine")
    old_fingerprint = BlockStore.open(pristine["store"]).fingerprint
    straight = {name: tmp_path / "straight" / name for name in ("store", "index")}
    for name, path in straight.items():
        shutil.copytree(pristine[name], path)
    reclaim(straight["store"], straight["index"])
    expected = snapshot(straight)
    work = {name: tmp_path / "work" / name for name in ("store", "index")}
    states: list[str] = []

    def fresh() -> None:  # every kill starts from the pristine pair, so each step is tested on its own
        for name, path in work.items():
            shutil.rmtree(path, ignore_errors=True)
            for leftover in path.parent.glob(f".{name}*"):
                shutil.rmtree(leftover, ignore_errors=True)
            shutil.copytree(pristine[name], path)

    def check(i: int, steps: list[str]) -> None:
        store = BlockStore.open(work["store"])
        try:
            check_index(work["index"], store, store_dir=work["store"])
            states.append("old" if store.fingerprint == old_fingerprint else "new")
            if store.fingerprint == old_fingerprint:  # the old pair: the removed blocks still filtered
                queries = torch.from_numpy(all_rows(work["index"])[gone].copy())
                assert not set(open_index(work["index"]).search(queries, 5).ids.flatten().tolist()) & set(gone)
        except ValueError as err:  # between the two exchanges: refused, naming the command that finishes
            assert "realm index compact --store" in str(err), err
            states.append("between")
        reclaim(work["store"], work["index"])  # the rerun
        assert snapshot(work) == expected, (i, steps)
        assert not [p for p in work["store"].parent.iterdir() if p.name.startswith(".")], (i, steps)
        fresh()

    fresh()
    steps = killed_at_each_step(lambda: reclaim(work["store"], work["index"]), check)
    assert "compact: store exchanged" in steps and "compact: index exchanged" in steps
    assert set(states) == {"old", "between", "new"}, states
    assert realm.atomic._fault_hook is None


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import realm.atomic
    def hook(step):
        if step == "compact: store exchanged":
            os.kill(os.getpid(), signal.SIGKILL)
    realm.atomic._fault_hook = hook
    from realm.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_kill_9_between_the_exchanges_then_the_cli_finishes(corpus, tmp_path, capsys) -> None:  # noqa: F811
    from realm.cli import main

    setup, gone = removed_setup(corpus, tmp_path)
    args = ["index", "compact", "--index", str(setup["index"]), "--store", str(setup["store"])]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + str(REPO)}
    process = subprocess.run([sys.executable, "-c", KILLER, *args], env=env, timeout=600)
    assert process.returncode == -signal.SIGKILL
    with pytest.raises(ValueError, match="interrupted `realm index compact`"):
        check_index(setup["index"], BlockStore.open(setup["store"]), store_dir=setup["store"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "finished an interrupted compaction" in out and "nothing to reclaim" in out
    store = BlockStore.open(setup["store"])
    check_index(setup["index"], store, store_dir=setup["store"])
    assert len(store) == read_manifest(setup["index"]).count == len(read_id_map(setup["store"]))
    assert not set(read_id_map(setup["index"]).tolist()) & set(gone.tolist())


def test_cli_compact_reports_and_refuses(corpus, tmp_path, capsys) -> None:  # noqa: F811
    from realm.cli import main

    setup, gone = removed_setup(corpus, tmp_path)
    assert main(["index", "compact", "--index", str(setup["index"])]) == 0
    out = capsys.readouterr().out
    assert f"{len(gone)} removed blocks keep their rows" in out and "--store <store>" in out
    assert main(["index", "compact", "--index", str(setup["index"]), "--store", str(setup["store"])]) == 0
    out = capsys.readouterr().out
    assert f"{len(gone)} removed blocks dropped" in out and "compacted-dropped.npy" in out and "realm index build-sparse" in out
    from realm.index.embeddings import write_manifest

    other, _ = removed_setup(corpus, tmp_path / "other")  # an index that names another store: refused
    manifest = read_manifest(other["index"])
    manifest.extra["store_fingerprint"] = "sha256:" + "0" * 64
    write_manifest(other["index"], manifest)
    with pytest.raises(ValueError, match="was not built from"):
        reclaim(other["store"], other["index"])
    assert len(BlockStore.open(other["store"]).removed_ids) == len(gone)  # nothing was rewritten
