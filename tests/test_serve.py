"""`realm serve`: a real uvicorn server on a loopback port, driven with httpx.

Covers the answers (equal to `Pipeline.ask`), every bad-input path (4xx naming the field, and the model
keeps serving), micro-batching, and corpus swaps by `POST /reload` and by SIGHUP.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch

from realm import RealmForOpenQA, RealmRetriever, RealmTokenizerFast
from realm.corpus import Block, BlockStore
from realm.index import write_embeddings
from realm.pipeline import Pipeline
from realm.serve import ServeConfig, create_app
from tests.conftest import REFERENCE

CASE = REFERENCE / "openqa_eval"
REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "the capital of france?",
    "which city has the eiffel tower?",
    "the capital of italy",
    "old church",
]
OTHER_TEXTS = [
    "the danube flows through vienna and budapest.",
    "mount everest is the highest mountain on earth.",
    "the pacific is the largest ocean.",
    "tokyo is the capital of japan.",
    "the nile is a long river in africa.",
]


def make_store(directory: Path, texts: list[str], tokenizer: RealmTokenizerFast) -> BlockStore:
    blocks = [Block(f"doc {i}", t, tokenizer(f"doc {i}", add_special_tokens=False).input_ids,
                    tokenizer(t, add_special_tokens=False).input_ids) for i, t in enumerate(texts)]  # fmt: skip
    return BlockStore.create(directory, blocks, tokenizer)


def build_corpora(root: Path) -> dict[str, Path]:
    """Store/index A (the fixture's blocks and embeddings), B (other texts, seeded embeddings), and indexes
    that match neither: C (3 rows) and D (8 rows of another width)."""
    tokenizer = RealmTokenizerFast.from_pretrained(CASE)
    store_a = make_store(root / "store_a", json.loads((CASE / "block_records.json").read_text()), tokenizer)
    model = RealmForOpenQA.from_pretrained(CASE, retriever=RealmRetriever(store_a, tokenizer))
    write_embeddings(root / "index_a", model.block_emb)
    make_store(root / "store_b", OTHER_TEXTS, tokenizer)
    dim = model.block_emb.shape[1]
    write_embeddings(
        root / "index_b", torch.randn(len(OTHER_TEXTS), dim, generator=torch.Generator().manual_seed(0))
    )
    write_embeddings(root / "index_c", torch.zeros(3, dim))
    write_embeddings(root / "index_d", torch.zeros(len(store_a), dim // 2))
    return {name: root / name for name in ("store_a", "index_a", "store_b", "index_b", "index_c", "index_d")}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    return build_corpora(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def pipeline(corpora) -> Pipeline:
    return Pipeline.from_pretrained(CASE, corpora["store_a"], corpora["index_a"], k=3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(pipeline: Pipeline, **settings: object) -> Iterator[str]:
    """A real uvicorn server in a thread, configured as `realm serve` runs it (timeouts, limits), on a socket
    bound here (so the port is known and free)."""
    import uvicorn

    from realm.serve.guard import uvicorn_config

    config = ServeConfig(log_level="warning", **settings)  # type: ignore[arg-type]
    app = create_app(pipeline, config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def same_answer(got: dict, expected) -> None:
    assert got["question"] == expected.question and got["text"] == expected.text
    assert got["block_id"] == expected.block_id
    assert [e["block_id"] for e in got["evidence"]] == [e.block_id for e in expected.evidence]
    assert got["score"] == pytest.approx(expected.score, abs=1e-4)


@pytest.fixture(scope="module")
def server(pipeline) -> Iterator[str]:
    with serving(pipeline, max_questions=4, max_question_chars=200, max_k=5, max_body_bytes=8192,
                 credit="Text: test fixture") as url:  # fmt: skip
        yield url


def test_ask_search_health(server, pipeline) -> None:
    with httpx.Client(base_url=server) as client:
        r = client.post("/ask", json={"questions": QUESTIONS})
        assert r.status_code == 200 and r.json()["k"] == 3
        for got, expected in zip(r.json()["answers"], pipeline.ask(QUESTIONS), strict=True):
            assert got == expected.to_dict()  # one request is one batch: the very same call
        (one,) = client.post("/ask", json={"question": QUESTIONS[1], "k": 2}).json()["answers"]
        same_answer(one, pipeline.ask([QUESTIONS[1]], k=2)[0])
        assert len(one["evidence"]) == 2
        best = next(e for e in one["evidence"] if e["block_id"] == one["block_id"])
        assert best["text"][one["span_start"] : one["span_end"]] == one["text"]
        assert 0 < one["probability"] < 1 and one["sure"] == (one["probability"] >= pipeline.threshold)
        # A request's own threshold decides "sure", and only that: the answers stay the same.
        for threshold, sure in ((0.0, True), (1.0, False), (0, True)):
            (mine,) = client.post("/ask", json={"question": QUESTIONS[1], "k": 2, "threshold": threshold}).json()["answers"]
            assert mine == {**one, "sure": sure}

        search = client.post("/search", json={"questions": QUESTIONS[:2], "k": 4}).json()
        retrieved = pipeline.retrieve(QUESTIONS[:2], 4)
        for b, result in enumerate(search["results"]):
            assert [x["block_id"] for x in result["blocks"]] == retrieved.block_ids[b].tolist()
            assert [x["text"] for x in result["blocks"]] == pipeline.store.texts(
                retrieved.block_ids[b].tolist()
            )
            assert sum(x["probability"] for x in result["blocks"]) == pytest.approx(1, abs=1e-5)

        health = client.get("/health").json()
        assert health["status"] == "ok" and health["corpus"] == {"name": "store_a", "blocks": 8}
        assert health["index"]["blocks"] == 8 and health["index"]["dim"] == 16 and health["k"] == 3
        assert health["credit"] == "Text: test fixture" and health["reload"] == {"allowed": False, "count": 0}
        assert health["limits"]["max_k"] == 5
        assert health["retrieval"] == {"mode": "dense"} and health["threshold"] == pipeline.threshold
        spec = client.get("/openapi.json").json()
        assert {"/ask", "/search", "/health", "/reload"} <= set(spec["paths"])
        assert "questions" in json.dumps(spec["paths"]["/ask"]["post"]["requestBody"])
        page = client.get("/")
        assert page.status_code == 200 and "<mark" not in page.text.split("<script>")[0]
        assert "http://" not in page.text and "https://" not in page.text  # no CDN: the page works offline


def test_docs_page_and_its_assets_are_served_here(server, pipeline) -> None:
    """`/docs` names no other host, and every script, style sheet and icon it loads is served by us
    (the browser test checks that Swagger UI renders the operations)."""
    with httpx.Client(base_url=server) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "SwaggerUIBundle" in page.text
        assert "http://" not in page.text and "https://" not in page.text
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert len(assets) == 3 and all(a.startswith("/docs-assets/") for a in assets)
        for asset in assets:
            got = client.get(asset)
            assert got.status_code == 200 and len(got.content) > 500, asset
        assert len(client.get("/docs-assets/swagger-ui-bundle.js").content) > 500_000  # the real bundle
        assert client.get("/docs-assets/nope.js").status_code == 404
        assert "/docs" not in client.get("/openapi.json").json()["paths"]
    # Behind a proxy that strips a path prefix, the page asks for the prefixed URLs.
    from starlette.testclient import TestClient

    page = TestClient(create_app(pipeline), root_path="/realm", base_url="http://127.0.0.1").get("/docs").text
    assert re.findall(r'(?:src|href)="([^"]+)"', page) == [
        "/realm/docs-assets/swagger-ui.css", "/realm/docs-assets/favicon.png", "/realm/docs-assets/swagger-ui-bundle.js",
    ]  # fmt: skip
    assert "url: '/realm/openapi.json'" in page


LONG = "x" * 201
BAD_REQUESTS = [
    # (body: bytes or a JSON value, status, field)
    ({"question": ""}, 422, "question"),
    ({"question": "   \n\t"}, 422, "question"),
    ({"questions": ["ok?", " "]}, 422, "questions[1]"),
    ({"question": LONG}, 422, "question"),
    ({"questions": ["ok?", LONG]}, 422, "questions[1]"),
    (b'{"question": "unclosed', 400, "body"),
    (b"", 400, "body"),
    (b'{"question": "caf\xe9?"}', 400, "body"),  # latin-1, not UTF-8
    (b"\xff\xfe\x00\x00", 400, "body"),
    (b"[" * 3000 + b"]" * 3000, 400, "body"),  # nested deeper than the JSON parser recurses
    (b'{"question": "a", "k": 1' + b"0" * 5000 + b"}", 400, "body"),  # over int()'s 4300 digits
    ({"question": 7}, 422, "question"),
    ({"question": ["a list"]}, 422, "question"),
    ({"questions": "a string"}, 422, "questions"),
    ({"questions": ["a", 3]}, 422, "questions[1]"),
    ({"question": None}, 422, "questions"),
    ({}, 422, "questions"),
    ({"question": "a?", "questions": ["b?"]}, 422, "questions"),
    ({"questions": []}, 422, "questions"),
    ({"questions": ["q?"] * 5}, 413, "questions"),
    ({"question": "a?", "k": 0}, 422, "k"),
    ({"question": "a?", "k": -3}, 422, "k"),
    ({"question": "a?", "k": 6}, 422, "k"),
    ({"question": "a?", "k": 10**30}, 422, "k"),
    ({"question": "a?", "k": 2.5}, 422, "k"),
    ({"question": "a?", "k": "3"}, 422, "k"),
    ({"question": "a?", "k": True}, 422, "k"),
    ({"question": "a?", "k": None}, 200, None),  # null k means the default
    (b'{"question": "a?", "k": NaN}', 422, "k"),
    (b'{"question": "\\ud800?"}', 422, "question"),  # a lone surrogate: valid JSON, not text
    ({"question": "a?", "top_k": 3}, 422, "top_k"),
    ({"question": "a?", "threshold": 1.5}, 422, "threshold"),
    ({"question": "a?", "threshold": -0.1}, 422, "threshold"),
    ({"question": "a?", "threshold": "0.5"}, 422, "threshold"),
    ({"question": "a?", "threshold": None}, 200, None),  # null threshold means the server's
    (["a?"], 422, "body"),
    ("a?", 422, "body"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_REQUESTS)
def test_bad_requests_get_4xx_naming_the_field(server, body, status, field) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with httpx.Client(base_url=server) as client:
        r = client.post("/ask", content=content, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        if status != 200:
            assert r.json()["field"] == field and r.json()["status"] == status and r.json()["error"], r.text
        # The model keeps serving after any bad request.
        good = client.post("/ask", json={"question": QUESTIONS[0]})
        assert good.status_code == 200 and good.json()["answers"][0]["question"] == QUESTIONS[0]


def test_other_bad_requests(server) -> None:
    with httpx.Client(base_url=server) as client:
        assert client.post("/search", json={"question": " "}).json()["field"] == "question"
        assert client.post("/search", json={"question": "a", "k": 99}).status_code == 422
        big = client.post("/ask", content=b'{"question": "' + b"a" * 10000 + b'"}')
        assert big.status_code == 413 and big.json()["field"] == "body"
        assert client.get("/ask").status_code == 405 and client.get("/nowhere").status_code == 404
        r = client.post("/reload", json={"index": "/tmp"})
        assert r.status_code == 403 and "--allow-reload" in r.json()["error"]
        # A form post (curl -d's default content type) is still read as JSON.
        r = client.post(
            "/ask", content=json.dumps({"question": "a?"}), headers={"content-type": "text/plain"}
        )
        assert r.status_code == 200


class RecordingPipeline(Pipeline):
    """Records the size of every model call; `gate` (when set) holds a call until it is opened."""

    def __init__(self, base: Pipeline) -> None:
        super().__init__(
            base.embedder, base.reader, base.store, base.index, tokenizer=base.tokenizer, k=base.k
        )
        self.calls: list[tuple[int, int]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def ask(self, questions, k=None):
        self.calls.append((len(questions), k))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        return super().ask(questions, k)


async def ask_concurrently(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.post("/ask", json=body) for body in bodies))


def test_concurrent_requests_are_batched(pipeline) -> None:
    recording = RecordingPipeline(pipeline)
    questions = [f"{q} ({i})" for i in range(2) for q in QUESTIONS]  # 8 distinct questions
    bodies = [{"question": q} for q in questions] + [{"question": QUESTIONS[0], "k": 2}]
    with serving(recording, max_batch_size=16, max_wait_ms=200) as url:
        responses = asyncio.run(ask_concurrently(url, bodies))
        health = httpx.get(f"{url}/health").json()["batching"]
    assert all(r.status_code == 200 for r in responses)
    assert max(size for size, _ in recording.calls) > 1, recording.calls
    assert len(recording.calls) < len(bodies) and health["largest_batch"] > 1
    # Each client got its own answer, the one a direct call gives; the k=2 request ran in its own call.
    for body, response in zip(bodies, responses, strict=True):
        (got,) = response.json()["answers"]
        same_answer(got, pipeline.ask([body["question"]], k=body.get("k"))[0])
    assert (1, 2) in recording.calls


def test_batching_off_means_one_question_per_call(pipeline) -> None:
    recording = RecordingPipeline(pipeline)
    with serving(lambda: recording, max_batch_size=1, max_wait_ms=50) as url:  # a loader, called at startup
        responses = asyncio.run(ask_concurrently(url, [{"question": q} for q in QUESTIONS]))
    assert all(r.status_code == 200 for r in responses)
    assert sorted(recording.calls) == [(1, 3)] * len(QUESTIONS)


def test_reload_swaps_the_corpus_between_batches(pipeline, corpora) -> None:
    recording = RecordingPipeline(pipeline)
    with (
        serving(recording, allow_reload=True, max_wait_ms=0) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        # A batch in flight during the swap finishes on the old corpus.
        recording.gate = threading.Event()
        in_flight: dict[str, httpx.Response] = {}
        thread = threading.Thread(
            target=lambda: in_flight.update(r=httpx.post(f"{url}/ask", json={"question": "x?"}, timeout=60))
        )
        thread.start()
        assert recording.entered.wait(30)
        r = client.post("/reload", json={"store": str(corpora["store_b"]), "index": str(corpora["index_b"])})
        assert r.status_code == 200 and r.json()["corpus"] == {"name": "store_b", "blocks": 5}, r.text
        recording.gate.set()
        thread.join(30)
        old_texts = set(pipeline.store.texts(range(len(pipeline.store))))
        assert {e["text"] for e in in_flight["r"].json()["answers"][0]["evidence"]} <= old_texts

        (answer,) = client.post("/ask", json={"question": "the capital of japan?"}).json()["answers"]
        assert {e["text"] for e in answer["evidence"]} <= set(OTHER_TEXTS)
        assert client.get("/health").json()["reload"]["count"] == 1

        refused = [
            (
                {"store": str(corpora["store_b"]), "index": str(corpora["index_c"])},
                409,
                "index",
            ),  # 3 rows vs 5 blocks
            (
                {"store": str(corpora["store_a"]), "index": str(corpora["index_d"])},
                409,
                "index",
            ),  # other width
            ({"store": str(corpora["store_b"]), "index": "/nonexistent/index"}, 422, "index"),
            ({"store": "/nonexistent/store", "index": str(corpora["index_b"])}, 422, "store"),
            ({"store": str(corpora["store_b"])}, 422, "index"),
            ({"index": 5}, 422, "index"),
        ]
        for body, status, field in refused:
            r = client.post("/reload", json=body)
            assert (r.status_code, r.json()["field"]) == (status, field), r.text
            # The old corpus keeps serving.
            (answer,) = client.post("/ask", json={"question": "the capital of japan?"}).json()["answers"]
            assert {e["text"] for e in answer["evidence"]} <= set(OTHER_TEXTS)
        # Store defaults to the current one: the index alone can be swapped back and forth.
        r = client.post("/reload", json={"store": str(corpora["store_a"]), "index": str(corpora["index_a"])})
        assert r.status_code == 200 and client.get("/health").json()["corpus"]["blocks"] == 8


def wait_for(predicate, seconds: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="SIGHUP is POSIX")
def test_sighup_reopens_the_start_paths(corpora, tmp_path) -> None:
    store, index = tmp_path / "store", tmp_path / "index"
    shutil.copytree(corpora["store_a"], store)
    shutil.copytree(corpora["index_a"], index)
    port = free_port()
    command = [sys.executable, "-m", "realm.cli", "serve", "--model", str(CASE), "--store", str(store),
               "--index", str(index), "--k", "3", "--port", str(port)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, what="the server")
        assert httpx.get(f"{url}/health").json()["corpus"]["blocks"] == 8
        # As after `realm index add`: new contents at the same paths, then SIGHUP.
        shutil.rmtree(store)
        shutil.rmtree(index)
        shutil.copytree(corpora["store_b"], store)
        shutil.copytree(corpora["index_b"], index)
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: httpx.get(f"{url}/health").json()["reload"]["count"] == 1, what="the reload")
        assert httpx.get(f"{url}/health").json()["corpus"]["blocks"] == 5
        # A broken pair is refused on SIGHUP too; the server lives on with the last good corpus.
        shutil.rmtree(index)
        shutil.copytree(corpora["index_c"], index)
        process.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert process.poll() is None
        r = httpx.post(f"{url}/ask", json={"question": "the capital of japan?"}, timeout=60)
        assert r.status_code == 200 and {e["text"] for e in r.json()["answers"][0]["evidence"]} <= set(
            OTHER_TEXTS
        )
        assert httpx.get(f"{url}/health").json()["reload"]["count"] == 1
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "SIGHUP reload refused" in output, output


def test_serve_config_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        ServeConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="k must be in"):
        ServeConfig(k=30, max_k=20)
    assert ServeConfig().host == "127.0.0.1"
    with pytest.raises(TypeError, match="ServeConfig"):
        create_app(lambda: None, {"port": 8000})  # type: ignore[arg-type]


def test_bench_serve_quick(tmp_path) -> None:
    output = tmp_path / "bench_serve.txt"
    command = [sys.executable, str(REPO / "benchmarks" / "bench_serve.py"), "--requests", "40", "--clients", "4",
               "--output", str(output)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    text = output.read_text()
    assert "batched / unbatched: throughput x" in text
    for mode in ("batched", "unbatched"):
        (row,) = [
            line.split() for line in text.splitlines() if line.split()[:1] == [mode] and "/" not in line
        ]
        assert row[3:6] == ["40", "0", "0"], text  # all 40 answered, no 5xx, no other error
