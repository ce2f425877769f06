"""A living index: in-place growth, removal and replacement, FAISS kept in sync, compact, and kill -9 at
chosen points of `realm index add` / `remove` (real subprocesses), all checked against exact search."""

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

from realm.corpus import BlockStore
from realm.index import ExactIndex, open_index, read_manifest
from realm.index.add import add_documents
from realm.index.update import compact_index, remove_documents
from tests.test_index_build import corpus, make_corpus, run_build  # noqa: F401  (the module's fixture)

REPO = Path(__file__).resolve().parents[1]


def grown(corpus, tmp_path: Path, docs: int = 3, seed: int = 5) -> dict[str, Path]:  # noqa: F811
    """A copy of the fixture's store with its index built, and `docs` more documents in more.jsonl."""
    store_dir, index_dir = tmp_path / "store", tmp_path / "index"
    shutil.copytree(corpus["store"], store_dir)
    run_build({**corpus, "store": store_dir}, index_dir, chunk_size=16, batch_size=5)
    make_corpus(tmp_path / "more.jsonl", docs, seed=seed)
    lines = (tmp_path / "more.jsonl").read_text().splitlines()  # distinct titles from the fixture's pages
    (tmp_path / "more.jsonl").write_text(
        "".join(json.dumps({**json.loads(x), "title": f"New {i}"}) + "\n" for i, x in enumerate(lines))
    )
    return {"store": store_dir, "index": index_dir, "embedder": corpus["embedder"], "more": tmp_path / "more.jsonl"}


def all_rows(index_dir: Path) -> np.ndarray:
    from realm.index.live import open_segments

    parts, _ = open_segments(index_dir)
    return np.concatenate([m for _, m in parts])


def blocks_of(store: BlockStore, title: str) -> set[int]:
    return {i for i in range(len(store)) if store.titles([i])[0] == title}


def test_add_appends_a_segment_and_never_rewrites_the_old_rows(corpus, tmp_path) -> None:  # noqa: F811
    setup = grown(corpus, tmp_path)
    base = setup["index"] / "embeddings.npy"
    inode, before = base.stat().st_ino, base.read_bytes()
    n = read_manifest(setup["index"]).count
    result = add_documents(setup["more"], setup["store"], setup["index"], setup["embedder"], progress=False)
    store = BlockStore.open(setup["store"])
    assert result.blocks_before == n and result.blocks_after == len(store) > n
    assert base.stat().st_ino == inode and base.read_bytes() == before  # same file, same bytes
    manifest = read_manifest(setup["index"])
    (segment,) = manifest.extra["segments"]
    assert segment["first"] == n and segment["count"] == len(store) - n and len(segment["sha256"]) == 64
    # the index over base + segment equals an index built from scratch over the grown store
    run_build({**corpus, "store": setup["store"]}, tmp_path / "rebuilt", chunk_size=16, batch_size=5)
    rebuilt = np.load(tmp_path / "rebuilt" / "embeddings.npy")
    np.testing.assert_allclose(all_rows(setup["index"]), rebuilt, atol=1e-5, rtol=0)
    queries = torch.from_numpy(rebuilt[::7].copy()) + 0.01
    got, want = open_index(setup["index"]).search(queries, 5), ExactIndex(rebuilt).search(queries, 5)
    assert torch.equal(got.ids, want.ids)
    # the same input again: recognised as already added, nothing appended
    again = add_documents(setup["more"], setup["store"], setup["index"], setup["embedder"], progress=False)
    assert again.change is None and len(BlockStore.open(setup["store"])) == len(store)


def test_removed_documents_never_come_back_from_any_search(corpus, tmp_path) -> None:  # noqa: F811
    from realm.index.faiss_index import FaissIndex
    from realm.index.hybrid import HybridIndex
    from realm.index.sparse import SparseIndex, build_sparse_index

    setup = grown(corpus, tmp_path)
    store = BlockStore.open(setup["store"])
    build_sparse_index(setup["store"], tmp_path / "bm25", progress=False)
    gone = blocks_of(store, "Page 3") | blocks_of(store, "Page 10")
    assert len(gone) >= 2
    rows = np.load(setup["index"] / "embeddings.npy")
    queries = torch.from_numpy(rows[sorted(gone)].copy())
    k = 40  # deep enough that, before the removal, the searches find removed blocks
    assert set(open_index(setup["index"]).search(queries, k).ids.flatten().tolist()) & gone

    result = remove_documents(setup["store"], setup["index"], titles=["Page 3"], doc_ids=[10])
    assert result.blocks == len(gone) and result.newly_removed == len(gone)
    exact = open_index(setup["index"])
    found = exact.search(queries, k)
    assert not set(found.ids.flatten().tolist()) & gone and found.ids.shape == (len(gone), k)
    assert (found.ids >= 0).all()  # over-fetched: k real blocks remain
    # the same top-k as exact search over the remaining rows only
    keep = np.setdiff1d(np.arange(len(rows)), sorted(gone))
    want = ExactIndex(rows[keep]).search(queries, k)
    assert torch.equal(found.ids, torch.from_numpy(keep)[want.ids])
    texts = [store.texts([i])[0] for i in sorted(gone)]
    sparse = SparseIndex.open(tmp_path / "bm25", BlockStore.open(setup["store"]))
    assert not set(sparse.search_text(texts, k).ids.flatten().tolist()) & gone
    hybrid = HybridIndex(exact, sparse, depth=20)
    assert not set(hybrid.search(queries, k, texts=texts).ids.flatten().tolist()) & gone
    for factory, params in (("IVF4,Flat", {"nprobe": 4}), ("HNSW8", {"efSearch": 64})):
        FaissIndex.build(np.load(setup["index"] / "embeddings.npy", mmap_mode="r"), factory, **params).save(setup["index"])
        assert not set(open_index(setup["index"]).search(queries, k).ids.flatten().tolist()) & gone, factory


def test_add_then_remove_keeps_an_ivf_index_in_sync_with_exact(corpus, tmp_path, capsys) -> None:  # noqa: F811
    from realm.cli import main
    from realm.index.live import FilteredIndex

    setup = grown(corpus, tmp_path)
    common = ["--store", str(setup["store"]), "--embedder", str(setup["embedder"]), "--out", str(setup["index"])]
    assert main(["index", "build", *common, "--kind", "ivf", "--lists", "4", "--probes", "4", "--train-size", "64",
                 "--no-progress", "--recall-check", "20"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "recall@10 1.000" in out, out  # all 4 lists probed: IVF is exact
    assert main(["index", "add", str(setup["more"]), "--store", str(setup["store"]), "--index", str(setup["index"]),
                 "--embedder", str(setup["embedder"]), "--no-progress"]) == 0  # fmt: skip
    assert "FAISS IVF4,Flat: rows added" in capsys.readouterr().out
    store = BlockStore.open(setup["store"])
    gone = blocks_of(store, "New 1") | blocks_of(store, "Page 2")
    assert main(["index", "remove", "--store", str(setup["store"]), "--index", str(setup["index"]),
                 "--title", "New 1", "--title", "Page 2"]) == 0  # fmt: skip
    assert f"{len(gone)} rows removed" in capsys.readouterr().out
    ivf = open_index(setup["index"])
    assert isinstance(ivf, FilteredIndex) and ivf.index.ids_removed == len(gone)
    assert int(ivf.index.index.ntotal) == len(store) - len(gone)  # really out of the IVF lists
    rows = all_rows(setup["index"])
    keep = np.setdiff1d(np.arange(len(rows)), sorted(gone))
    queries = torch.from_numpy(rows[::5].copy())
    want = ExactIndex(rows[keep]).search(queries, 6)
    got = ivf.search(queries, 6)
    assert torch.equal(got.ids, torch.from_numpy(keep)[want.ids])
    torch.testing.assert_close(got.scores, want.scores)
    # HNSW cannot remove: filtered at search time, and the CLI says so
    assert main(["index", "build", *common, "--kind", "hnsw", "--m", "8", "--no-progress"]) == 0
    more = blocks_of(store, "Page 4")
    assert main(["index", "remove", "--store", str(setup["store"]), "--index", str(setup["index"]),
                 "--title", "Page 4"]) == 0  # fmt: skip
    assert "filtered at search" in capsys.readouterr().out
    assert not set(open_index(setup["index"]).search(queries, 6).ids.flatten().tolist()) & (gone | more)


def test_replace_a_changed_document_and_compact(corpus, tmp_path) -> None:  # noqa: F811
    setup = grown(corpus, tmp_path)
    store = BlockStore.open(setup["store"])
    old = blocks_of(store, "Page 5")
    (tmp_path / "fix.jsonl").write_text(json.dumps({"title": "Page 5", "text": "A corrected page. It is short."}) + "\n")
    result = add_documents(tmp_path / "fix.jsonl", setup["store"], setup["index"], setup["embedder"],
                           progress=False, replace=True)  # fmt: skip
    assert result.replaced == len(old)
    store = BlockStore.open(setup["store"])
    new = blocks_of(store, "Page 5") - old
    assert len(new) == 1 and set(store.removed_ids.tolist()) == old
    index = open_index(setup["index"])
    queries = torch.from_numpy(all_rows(setup["index"])[sorted(old | new)].copy())
    every = index.search(queries, len(store))  # as many hits as blocks: all the live ones, padded
    assert set(every.ids.flatten().tolist()) - {-1} == set(range(len(store))) - old
    before = index.search(queries, 4)
    merged = compact_index(setup["index"])
    assert merged == 1 and not (setup["index"] / "segments").exists() or not any((setup["index"] / "segments").iterdir())
    after = open_index(setup["index"]).search(queries, 4)
    assert torch.equal(before.ids, after.ids)  # ids stable through compact
    assert not (setup["index"] / "embeddings.npy").exists()  # the old base is swept


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads({threads})  # the test process's: CPU matmuls round differently with other counts
    import {module} as target
    real = target.{name}
    def die(*args, **kwargs):
        {before}
        os.kill(os.getpid(), signal.SIGKILL)
    target.{name} = die
    from realm.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def run_killed(args: list[str], module: str, name: str, before: str = "pass") -> None:
    """Run `realm ARGS` in a subprocess that SIGKILLs itself when it calls `module.name`."""
    code = KILLER.format(module=module, name=name, before=before, threads=torch.get_num_threads())
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + str(REPO)}
    process = subprocess.run([sys.executable, "-c", code, *args], env=env, timeout=600)
    assert process.returncode == -signal.SIGKILL


def snapshot(setup: dict[str, Path]) -> tuple:
    manifest = read_manifest(setup["index"])
    store = BlockStore.open(setup["store"])
    return (manifest.count, manifest.extra.get("segments"), sorted(store.removed_ids.tolist()),
            all_rows(setup["index"]).tobytes(), len(store))  # fmt: skip


@pytest.mark.parametrize(
    "module,name",
    [
        ("realm.index.update", "write_manifest"),  # data files written, the manifest (commit) not
        ("realm.index.build", "atomic_save_npy"),  # in the middle of embedding the new blocks
    ],
)
def test_kill_9_during_add_then_rerun_equals_uninterrupted(corpus, tmp_path, module, name) -> None:  # noqa: F811
    killed, straight = grown(corpus, tmp_path / "killed"), grown(corpus, tmp_path / "straight")
    readers_before = snapshot(killed)

    def add(setup):
        return ["index", "add", str(setup["more"]), "--store", str(setup["store"]), "--index", str(setup["index"]),
                "--embedder", str(setup["embedder"]), "--no-progress", "--replace"]  # fmt: skip

    (killed["more"]).write_text((killed["more"]).read_text() + json.dumps({"title": "Page 1", "text": "Changed."}) + "\n")
    shutil.copy(killed["more"], straight["more"])
    run_killed(add(killed), module, name)
    # a reader at the kill point sees the old index (manifest not yet rewritten)
    assert read_manifest(killed["index"]).count == readers_before[0]
    dim = read_manifest(killed["index"]).dim
    assert open_index(killed["index"]).search(torch.ones(1, dim), 3).ids.shape == (1, 3)
    from realm.cli import main

    assert main(add(killed)) == 0
    assert main(add(straight)) == 0
    assert snapshot(killed) == snapshot(straight)


def test_kill_9_during_remove_then_rerun_equals_uninterrupted(corpus, tmp_path) -> None:  # noqa: F811
    from realm.cli import main

    killed, straight = grown(corpus, tmp_path / "killed"), grown(corpus, tmp_path / "straight")

    def remove(setup):
        return ["index", "remove", "--store", str(setup["store"]), "--index", str(setup["index"]), "--title", "Page 7",
                "--doc-id", "8"]  # fmt: skip

    # killed after the store's commit, before the index's
    run_killed(remove(killed), "realm.index.update", "write_manifest")
    assert len(BlockStore.open(killed["store"]).removed_ids) and "removed" not in read_manifest(killed["index"]).extra
    assert main(remove(killed)) == 0 and main(remove(straight)) == 0
    assert snapshot(killed) == snapshot(straight)
    assert read_manifest(killed["index"]).extra["removed"] == read_manifest(straight["index"]).extra["removed"]


def test_ask_and_serve_after_reload_no_longer_cite_removed_documents(tmp_path, capsys) -> None:
    import httpx

    from realm.cli import main
    from realm.pipeline import Pipeline
    from tests.test_serve import CASE, build_corpora, serving

    corpora = build_corpora(tmp_path)
    store, index = corpora["store_a"], corpora["index_a"]
    question = "the capital of france?"
    common = ["--model", str(CASE), "--store", str(store), "--index", str(index), "--k", "3"]
    assert main(["ask", question, *common]) == 0
    cited = {int(b) for b in __import__("re").findall(r"block (\d+)", capsys.readouterr().out)}
    pipeline = Pipeline.from_pretrained(CASE, store, index, k=3)
    (before,) = pipeline.ask([question])
    target = before.block_id
    assert target in cited
    with serving(pipeline, allow_reload=True, max_wait_ms=0) as url, httpx.Client(base_url=url, timeout=60) as client:
        def evidence() -> set[int]:
            (answer,) = client.post("/ask", json={"question": question}).json()["answers"]
            return {e["block_id"] for e in answer["evidence"]}

        assert target in evidence()
        remove_documents(store, index, titles=[f"doc {target}"])  # the store's titles are "doc i"
        assert target in evidence()  # not reloaded yet: the old corpus
        r = client.post("/reload", json={"store": str(store), "index": str(index)})
        assert r.status_code == 200, r.text
        after = evidence()
        assert target not in after and len(after) == 3
    assert main(["ask", question, *common]) == 0
    cited = {int(b) for b in __import__("re").findall(r"block (\d+)", capsys.readouterr().out)}
    assert target not in cited and len(cited) == 3


def _sharded_removed_worker(rank: int, port: int, directory: str, gone: list[int]) -> None:
    import torch.distributed as dist

    from realm.index import ShardedIndex

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        rows = np.load(f"{directory}/embeddings.npy")
        keep = np.setdiff1d(np.arange(len(rows)), gone)
        queries = torch.from_numpy(rows[gone].copy())  # the removed rows themselves: their own best match
        index = ShardedIndex.load(directory)
        for k in (1, 5, 40):
            got, want = index.search(queries, k), ExactIndex(rows[keep]).search(queries, k)
            assert torch.equal(got.ids, torch.from_numpy(keep)[want.ids]), (rank, k)
            assert not set(got.ids.flatten().tolist()) & set(gone)
    finally:
        dist.destroy_process_group()


def test_sharded_index_filters_removed_blocks(tmp_path) -> None:
    import torch.multiprocessing as mp

    from realm.index import write_embeddings
    from realm.index.update import publish_change
    from tests.test_index import free_port

    rows = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    write_embeddings(tmp_path, rows)
    gone = [3, 17, 31, 44, 59]  # on both ranks' shards
    publish_change(tmp_path, remove=np.asarray(gone))
    mp.spawn(_sharded_removed_worker, args=(free_port(), str(tmp_path), gone), nprocs=2, join=True)
