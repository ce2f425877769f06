"""Search indexes against a brute-force oracle: exact, FAISS, sharded over 2 gloo processes, file formats.

# B queries, N stored vectors, D dim, K hits
"""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st

from realm.index import (
    ExactIndex,
    FaissIndex,
    IndexManifest,
    ShardedIndex,
    create_embeddings,
    finish_embeddings,
    open_embeddings,
    open_index,
    read_manifest,
    shard_bounds,
    write_embeddings,
    write_manifest,
)
from realm.index.base import chunk_topk, select_topk


def oracle(
    matrix: np.ndarray | torch.Tensor, queries: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The full float32 product, sorted by (score desc, id asc): [B, min(k, N)] scores and ids."""
    rows = (
        torch.as_tensor(np.asarray(matrix, dtype=np.float32))
        if isinstance(matrix, np.ndarray)
        else matrix.float()
    )
    scores = queries.float() @ rows.T  # [B, N]
    scores, ids = scores.sort(dim=1, descending=True, stable=True)  # ids ascending among equal scores
    k = min(k, rows.shape[0])
    return scores[:, :k], ids[:, :k]


def gaussian(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)


def tied(n: int, d: int, distinct: int = 3, seed: int = 0) -> np.ndarray:
    """Integer-valued rows drawn from a few distinct vectors: exact products, many exactly equal scores."""
    rng = np.random.default_rng(seed)
    vectors = rng.integers(-3, 4, size=(distinct, d)).astype(np.float32)
    return vectors[rng.integers(0, distinct, size=n)]


def int_queries(b: int, d: int, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(-3, 4, size=(b, d)).astype(np.float32))


def clustered(n: int, d: int, clusters: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian mixture (matrix [n, d], queries [64, d] from the same mixture): easy for ANN."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d)).astype(np.float32) * 3
    points = centers[rng.integers(0, clusters, n + 64)] + rng.standard_normal((n + 64, d)).astype(np.float32)
    return points[:n], points[n:]


def codebook(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Vectors whose every pair of dims is one of 16 codewords (plus 1% noise): what 4-bit PQ encodes
    almost exactly (matrix [n, d], queries [64, d])."""
    rng = np.random.default_rng(seed)
    books = rng.standard_normal((d // 2, 16, 2)).astype(np.float32) * 2  # [D / 2, 16, 2]
    picks = rng.integers(0, 16, size=(n + 64, d // 2))
    points = books[np.arange(d // 2)[None, :], picks].reshape(n + 64, d)
    points += rng.standard_normal(points.shape).astype(np.float32) * 0.01
    return points[:n], points[n:]


def recall_at(found: torch.Tensor, truth: torch.Tensor) -> float:
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.numel()


# ---------------------------------------------------------------------------------------------------------
# Exact search.


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000, 5000])
@pytest.mark.parametrize("batch", [1, 3, 9])
def test_exact_equals_topk_of_full_product(chunk_size: int, batch: int) -> None:
    matrix = gaussian(1000, 16)
    queries = torch.from_numpy(gaussian(batch, 16, seed=1))
    index = ExactIndex(matrix, chunk_size=chunk_size, query_batch_size=4, num_threads=2)
    for k in (1, 10):
        scores, ids = index.search(queries, k)
        ref = (queries @ torch.from_numpy(matrix).T).topk(k, dim=1)
        assert scores.dtype == torch.float32 and ids.dtype == torch.int64 and ids.shape == (batch, k)
        assert torch.equal(ids, ref.indices)
        torch.testing.assert_close(scores, ref.values, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 50, 512])
@pytest.mark.parametrize("batch", [1, 9])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_exact_ties_lower_id_first(chunk_size: int, batch: int, num_threads: int) -> None:
    matrix = tied(203, 8)  # 3 distinct rows: ~68 copies of each score per query
    queries = int_queries(batch, 8)
    index = ExactIndex(matrix, chunk_size=chunk_size, num_threads=num_threads)
    for k in (1, 5, 67, 68, 69, 150, 203, 500):
        scores, ids = index.search(queries, k)
        ref_scores, ref_ids = oracle(matrix, queries, k)
        assert torch.equal(ids, ref_ids), (k, ids, ref_ids)
        assert torch.equal(scores, ref_scores)


def test_exact_all_rows_equal() -> None:
    matrix = np.ones((100, 4), dtype=np.float32)
    scores, ids = ExactIndex(matrix, chunk_size=9).search(torch.ones(2, 4), 10)
    assert ids.tolist() == [list(range(10))] * 2
    assert torch.equal(scores, torch.full((2, 10), 4.0))


def test_exact_edge_sizes() -> None:
    matrix = gaussian(10, 4)
    index = ExactIndex(matrix, chunk_size=3)
    queries = torch.from_numpy(gaussian(2, 4, seed=1))
    for k, width in ((10, 10), (11, 10), (1000, 10)):  # k = N, k > N: all N rows, sorted
        scores, ids = index.search(queries, k)
        assert ids.shape == (2, width) and sorted(ids[0].tolist()) == list(range(10))
        assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    scores, ids = index.search(queries[:0], 5)  # B = 0
    assert scores.shape == (0, 5) and ids.shape == (0, 5) and ids.dtype == torch.int64
    one = ExactIndex(matrix[:1])  # a single row
    scores, ids = one.search(queries, 3)
    assert ids.tolist() == [[0], [0]]
    torch.testing.assert_close(scores[:, 0], queries @ torch.from_numpy(matrix[0]))
    empty = ExactIndex(np.zeros((0, 4), np.float32))
    assert empty.search(queries, 3).ids.shape == (2, 0)
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            index.search(queries, bad_k)
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        index.search(torch.zeros(2, 5), 1)
    with pytest.raises(TypeError, match="floating"):
        index.search(torch.zeros(2, 4, dtype=torch.long), 1)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_exact_half_storage_scores_in_float32(dtype: str) -> None:
    full = gaussian(500, 16)
    half = torch.from_numpy(full).to(getattr(torch, dtype))
    queries = torch.from_numpy(gaussian(5, 16, seed=1))
    storages = [half] + ([half.numpy()] if dtype == "float16" else [])
    for storage in storages:
        for batch in (1, 5):
            scores, ids = ExactIndex(storage, chunk_size=37).search(queries[:batch], 20)
            ref_scores, ref_ids = oracle(
                half.float(), queries[:batch], 20
            )  # fp32 products of the stored values
            assert torch.equal(ids, ref_ids)
            torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-5)
    tied16 = tied(100, 8).astype(np.float16)
    _, ids = ExactIndex(tied16, chunk_size=6).search(int_queries(3, 8), 40)
    assert torch.equal(ids, oracle(tied16, int_queries(3, 8), 40)[1])


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 6),
    b=st.integers(0, 6),
    k=st.integers(1, 50),
    chunk_size=st.integers(1, 50),
    num_threads=st.integers(1, 3),
    fp16=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_exact_property(
    n: int, d: int, b: int, k: int, chunk_size: int, num_threads: int, fp16: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    matrix = rng.integers(-2, 3, size=(n, d)).astype(np.float16 if fp16 else np.float32)  # exact products
    queries = torch.from_numpy(rng.integers(-2, 3, size=(b, d)).astype(np.float32))
    scores, ids = ExactIndex(
        matrix, chunk_size=chunk_size, query_batch_size=4, num_threads=num_threads
    ).search(queries, k)
    ref_scores, ref_ids = oracle(matrix, queries, k)
    assert torch.equal(ids, ref_ids) and torch.equal(scores, ref_scores)


def test_chunk_topk_and_select_topk() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 3.0]])
    hits = chunk_topk(scores, 3, offset=10)
    assert sorted(hits.ids[0].tolist()) == [11, 12, 14]
    merged = select_topk([hits, chunk_topk(torch.tensor([[3.0, 5.0]]), 3, offset=2)], 3)
    assert merged.ids.tolist() == [[3, 2, 11]] and merged.scores.tolist() == [[5.0, 3.0, 3.0]]


def test_exact_reconstruct_and_memmap(tmp_path) -> None:
    matrix = gaussian(300, 8).astype(np.float16)
    write_embeddings(tmp_path, matrix, extra={"embedder": "abc"})
    index = ExactIndex.load(tmp_path, chunk_size=64)
    assert isinstance(index.matrix, np.memmap) and len(index) == 300 and index.dim == 8
    ids = torch.tensor([[5, 0, 299], [7, 7, 1]])
    rows = index.reconstruct(ids)
    assert rows.shape == (2, 3, 8) and rows.dtype == torch.float32
    assert torch.equal(rows, torch.from_numpy(matrix.astype(np.float32))[ids])
    assert torch.equal(ExactIndex(torch.from_numpy(matrix)).reconstruct(ids), rows)
    with pytest.raises(IndexError, match=r"\[0, 300\)"):
        index.reconstruct(torch.tensor([300]))
    queries = torch.from_numpy(gaussian(4, 8, seed=2))
    assert torch.equal(index.search(queries, 7).ids, ExactIndex(matrix).search(queries, 7).ids)
    in_memory = ExactIndex.load(tmp_path, mmap=False)
    assert not isinstance(in_memory.matrix, np.memmap)
    assert torch.equal(in_memory.search(queries, 7).ids, index.search(queries, 7).ids)


def test_exact_save_load_round_trip(tmp_path) -> None:
    matrix = torch.from_numpy(gaussian(77, 8))
    ExactIndex(matrix).save(tmp_path / "idx", extra={"block_store": "fp1", "step": 3})
    manifest = read_manifest(tmp_path / "idx")
    assert (manifest.count, manifest.dim, manifest.dtype) == (77, 8, "float32")
    assert manifest.extra == {"block_store": "fp1", "step": 3} and manifest.index == {"type": "exact"}
    loaded = open_index(tmp_path / "idx")
    assert isinstance(loaded, ExactIndex)
    queries = torch.from_numpy(gaussian(3, 8, seed=1))
    assert torch.equal(loaded.search(queries, 5).ids, ExactIndex(matrix).search(queries, 5).ids)
    assert torch.equal(loaded.reconstruct(torch.arange(77)), matrix)


# ---------------------------------------------------------------------------------------------------------
# The embeddings container.


def test_manifest_keeps_unknown_keys(tmp_path) -> None:
    data = {
        "format": "realm-embeddings",
        "version": 1,
        "count": 4,
        "dim": 2,
        "dtype": "float16",
        "embedder_fingerprint": "sha256:00",
        "nested": {"a": [1, 2]},
    }
    manifest = IndexManifest.from_dict(data)
    assert manifest.extra == {"embedder_fingerprint": "sha256:00", "nested": {"a": [1, 2]}}
    write_manifest(tmp_path, manifest)
    assert json.loads((tmp_path / "manifest.json").read_text()) == {**data, "index": {}}
    assert read_manifest(tmp_path) == manifest
    with pytest.raises(ValueError, match="lacks"):
        IndexManifest.from_dict({"count": 1})
    with pytest.raises(ValueError, match="newer"):
        IndexManifest.from_dict({**data, "version": 99})
    with pytest.raises(ValueError, match="clash"):
        IndexManifest(1, 2, "float32", extra={"count": 5}).to_dict()
    with pytest.raises(ValueError, match="dtype"):
        IndexManifest(1, 2, "int8")


def test_create_fill_resume_finish(tmp_path) -> None:
    rows = gaussian(10, 4)
    out = create_embeddings(tmp_path, 10, 4, torch.float16)
    out[:6] = rows[:6]
    out.flush()
    del out
    with pytest.raises(FileNotFoundError, match="partial build"):
        open_embeddings(tmp_path)
    with pytest.raises(ValueError, match="resume=False"):
        create_embeddings(tmp_path, 11, 4, "float16", resume=True)
    out = create_embeddings(tmp_path, 10, 4, "float16", resume=True)  # the first 6 rows survive
    assert np.array_equal(out[:6], rows[:6].astype(np.float16))
    out[6:] = rows[6:]
    out.flush()
    del out
    with pytest.raises(ValueError, match="manifest says"):
        finish_embeddings(tmp_path, IndexManifest(10, 4, "float32"))
    finish_embeddings(tmp_path, IndexManifest(10, 4, "float16", extra={"step": 1}))
    matrix, manifest = open_embeddings(tmp_path)
    assert isinstance(matrix, np.memmap) and not matrix.flags.writeable
    assert np.array_equal(matrix, rows.astype(np.float16)) and manifest.extra == {"step": 1}
    assert not (tmp_path / "embeddings.npy.partial").exists()
    manifest.count = 9
    write_manifest(tmp_path, manifest)
    with pytest.raises(ValueError, match="rebuild"):
        open_embeddings(tmp_path)
    with pytest.raises(FileNotFoundError, match="not an index directory"):
        open_embeddings(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------------
# FAISS.


def test_faiss_flat_equals_exact() -> None:
    matrix = gaussian(2000, 32)
    queries = torch.from_numpy(gaussian(20, 32, seed=1))
    flat = FaissIndex.build(matrix, "Flat")
    for k in (1, 10, 2000, 5000):
        scores, ids = flat.search(queries, k)
        ref_scores, ref_ids = ExactIndex(matrix).search(queries, k)
        assert ids.shape == (20, min(k, 2000))
        assert torch.equal(ids, ref_ids)
        torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-5)
    assert flat.search(queries[:0], 3).ids.shape == (0, 3)


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """FAISS's OpenMP threads spin-wait; on a small shared machine one thread keeps the tests fast."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.mark.parametrize(
    ("data", "factory", "params", "min_recall"),
    [
        (clustered, "IVF32,Flat", {"nprobe": 8}, 0.8),
        (clustered, "HNSW16", {"efSearch": 64}, 0.8),
        (codebook, "PQ16x4", {}, 0.7),
        (codebook, "IVF16,PQ16x4np", {"nprobe": 16}, 0.7),
        (clustered, "IVF32,PQ8x4", {"nprobe": 8, "rerank": 200}, 0.8),  # PQ alone: ~0.2 on this data
    ],
)
def test_faiss_ann_recall(data, factory: str, params: dict, min_recall: float) -> None:
    matrix, queries_np = data(5000, 32)
    queries = torch.from_numpy(queries_np)
    index = FaissIndex.build(matrix, factory, train_size=3000, seed=0, **params)
    scores, ids = index.search(queries, 10)
    _, truth = ExactIndex(matrix).search(queries, 10)
    assert recall_at(ids, truth) >= min_recall, (factory, recall_at(ids, truth))
    rows = index.reconstruct(ids)  # exact vectors from the matrix, not the codes
    assert torch.equal(rows, torch.from_numpy(matrix)[ids])
    if "rerank" in params:  # exact scores of the candidates
        torch.testing.assert_close(scores, torch.einsum("bkd,bd->bk", rows, queries), rtol=0, atol=1e-4)


def test_faiss_parameters_and_missing_hits() -> None:
    matrix, queries_np = clustered(3000, 16, clusters=30)
    queries = torch.from_numpy(queries_np[:4])
    ivf = FaissIndex.build(matrix, "IVF30,Flat", train_size=2000, nprobe=1)
    scores, ids = ivf.search(queries, 3000)  # one list of ~100 vectors: the rest is missing
    assert ids.shape == (4, 3000) and bool((ids == -1).any())
    missing = ids == -1
    assert bool(torch.isinf(scores[missing]).all()) and bool((scores[~missing] > float("-inf")).all())
    assert bool((missing[:, :-1] <= missing[:, 1:]).all())  # missing slots come last
    ivf.nprobe = 30  # every list: exact
    assert ivf.params == {"nprobe": 30} and not bool((ivf.search(queries, 3000).ids == -1).any())
    hnsw = FaissIndex.build(matrix, "HNSW8", ef_construction=40, ef_search=16)
    assert hnsw.ef_search == 16
    assert not bool((hnsw.search(queries, 200).ids == -1).any())  # efSearch raised to k
    with pytest.raises(ValueError, match="no search parameter"):
        hnsw.set_params(nprobe=3)
    with pytest.raises(ValueError, match="ef_construction"):
        FaissIndex.build(matrix, "Flat", ef_construction=10)


def test_faiss_save_load_round_trip(tmp_path) -> None:
    matrix, queries_np = clustered(3000, 16, clusters=30)
    queries = torch.from_numpy(queries_np)
    write_embeddings(tmp_path, matrix.astype(np.float16), extra={"embedder": "e1"})
    stored, _ = open_embeddings(tmp_path)
    index = FaissIndex.build(stored, "IVF16,PQ8x4", train_size=2000, seed=3, nprobe=4)
    index.save(tmp_path)  # beside the memmap it was built from: the matrix is not rewritten
    manifest = read_manifest(tmp_path)
    assert manifest.extra == {"embedder": "e1"}
    assert manifest.index["factory"] == "IVF16,PQ8x4" and manifest.index["params"] == {"nprobe": 4}
    assert manifest.index["train_size"] == 2000 and manifest.index["seed"] == 3
    loaded = open_index(tmp_path)
    assert isinstance(loaded, FaissIndex) and loaded.nprobe == 4
    before, after = index.search(queries, 10), loaded.search(queries, 10)
    assert torch.equal(before.ids, after.ids) and torch.equal(before.scores, after.scores)
    ids = torch.tensor([0, 2999, 5])
    assert torch.equal(
        loaded.reconstruct(ids), torch.from_numpy(matrix.astype(np.float16).astype(np.float32))[ids]
    )
    assert FaissIndex.load(tmp_path, nprobe=16).nprobe == 16
    FaissIndex.build(torch.from_numpy(matrix), "Flat").save(tmp_path / "other")  # writes the matrix too
    assert open_embeddings(tmp_path / "other")[1].dtype == "float32"
    with pytest.raises(FileNotFoundError, match="no FAISS index"):
        FaissIndex.load(write_embeddings(tmp_path / "plain", matrix) and tmp_path / "plain")


def test_faiss_missing_gives_install_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"realm-lm\[faiss\]"):
        FaissIndex.build(gaussian(10, 4))


# ---------------------------------------------------------------------------------------------------------
# Sharded over 2 gloo processes.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sharded_worker(rank: int, world: int, port: int, directory: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        matrix, _ = open_embeddings(directory)  # 103 integer rows from 3 distinct vectors: ties everywhere
        whole = ExactIndex(matrix)
        batch = [3, 5][rank]  # different batch sizes (and k) per rank
        queries = int_queries(batch, 8, seed=10 + rank)
        for index in (
            ShardedIndex.load(directory, chunk_size=4),
            ShardedIndex(matrix, in_memory=True, num_threads=1),
            ShardedIndex.from_shard(
                matrix[slice(*shard_bounds(103, world, rank))], shard_bounds(103, world, rank)[0], 103
            ),
        ):
            for k in ([7, 40][rank], 103, 500):
                got, want = index.search(queries, k), whole.search(queries, k)
                assert torch.equal(got.ids, want.ids) and torch.equal(got.scores, want.scores), (
                    rank,
                    index,
                    k,
                )
            empty = index.search(queries[: [0, 2][rank]], 5)  # one rank without queries
            assert empty.ids.shape == ([0, 2][rank], 5)
            assert torch.equal(empty.ids, whole.search(queries[: [0, 2][rank]], 5).ids)
            ids = torch.tensor([[0, 101], [51, 52]]) + rank
            assert torch.equal(index.reconstruct(ids), whole.reconstruct(ids))  # collective for from_shard
        floats = torch.from_numpy(gaussian(50, 8))
        sharded = ShardedIndex(floats)
        got, want = sharded.search(queries, 9), ExactIndex(floats).search(queries, 9)
        assert torch.equal(got.ids, want.ids)
        torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=1e-5)
        sharded.save(f"{directory}/resaved", extra={"by": "sharded"})
        tiny = ShardedIndex(floats[:1])  # N < world: rank 0 holds no rows
        assert tiny.search(queries, 3).ids.tolist() == [[0]] * batch
        with pytest.raises((ValueError, RuntimeError)):  # one rank's bad queries: both ranks raise
            sharded.search(queries if rank == 0 else queries[:, :3], 2)
        with pytest.raises((ValueError, RuntimeError)):  # one rank's wrong shard: both ranks raise
            ShardedIndex.from_shard(floats[: 25 + rank], 0 if rank == 0 else 25, 50)
        with pytest.raises(ValueError, match="different shapes"):
            ShardedIndex(floats[: 49 + rank])
    finally:
        dist.destroy_process_group()


def test_sharded_two_gloo_processes_equal_exact(tmp_path) -> None:
    write_embeddings(tmp_path, tied(103, 8, seed=5))
    mp.spawn(_sharded_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    resaved, manifest = open_embeddings(tmp_path / "resaved")
    assert np.array_equal(resaved, gaussian(50, 8)) and manifest.extra == {"by": "sharded"}


def test_shard_bounds_cover_rows() -> None:
    for count in (0, 1, 5, 103):
        for world in (1, 2, 3, 8):
            bounds = [shard_bounds(count, world, r) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == count
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1
