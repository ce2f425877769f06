"""`realm serve` against a hostile or clumsy client (issue 15): a real uvicorn server on loopback, started
with the same `uvicorn_config` as `realm serve` (timeouts, connection limit, header-timeout protocol)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest
import torch

from realm import RealmForOpenQA, RealmRetriever, RealmTokenizerFast
from realm.index.build import IndexBuildConfig, build_index
from realm.pipeline import Pipeline
from realm.serve import ServeConfig
from realm.serve.guard import exposure_warning
from tests.test_serve import CASE, OTHER_TEXTS, REPO, RecordingPipeline, free_port, make_store, serving

SRC = REPO / "src"

KEY = "k" * 24


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hardening")
    tokenizer = RealmTokenizerFast.from_pretrained(CASE)
    store_a = make_store(root / "store_a", json.loads((CASE / "block_records.json").read_text()), tokenizer)
    store_b = make_store(root / "store_b", OTHER_TEXTS, tokenizer)
    model = RealmForOpenQA.from_pretrained(CASE, retriever=RealmRetriever(store_a, tokenizer))
    model.embedder.save_pretrained(root / "embedder")
    config = IndexBuildConfig(chunk_size=4, batch_size=4, max_length=24)
    for store, name in ((store_a, "index_a"), (store_b, "index_b")):
        build_index(store, root / "embedder", root / name, config, store_fingerprint=store.fingerprint,
                    special_ids=store.special_ids, progress=False)  # fmt: skip
    with torch.no_grad():
        for p in model.embedder.parameters():
            p.add_(0.05)
    model.embedder.save_pretrained(root / "embedder_other")
    build_index(store_b, root / "embedder_other", root / "index_b_other_embedder", config,
                store_fingerprint=store_b.fingerprint, special_ids=store_b.special_ids, progress=False)  # fmt: skip
    (root / "key").write_text(KEY + "\n")
    return {p.name: p for p in root.iterdir()}


@pytest.fixture(scope="module")
def pipeline(corpora) -> Pipeline:
    return Pipeline.from_pretrained(CASE, corpora["store_a"], corpora["index_a"], k=3)


def edit_manifest(src: Path, dst: Path, content) -> Path:
    shutil.copytree(src, dst)
    (dst / "manifest.json").write_text(json.dumps(content(json.loads((dst / "manifest.json").read_text()))))
    return dst


def test_reload_refuses_manifests_of_the_wrong_shape_with_422_naming_the_key(pipeline, corpora, tmp_path) -> None:
    stores = {
        "list": (lambda m: [], "a JSON object"),
        "segments": (lambda m: {**m, "segments": 5}, "segments is 5"),
        "tokenizer": (lambda m: {**m, "tokenizer": "x"}, 'tokenizer is "x"'),
    }
    indexes = {
        "int": (lambda m: 123, "holds 123"),
        "count-null": (lambda m: {**m, "count": None}, "count is null"),
        "count-str": (lambda m: {**m, "count": "3000"}, 'count is "3000"'),
        "dim-str": (lambda m: {**m, "dim": "128"}, 'dim is "128"'),
    }
    with serving(pipeline, allow_reload=True) as url, httpx.Client(base_url=url, timeout=60) as client:
        for name, (change, needle) in stores.items():
            bad = edit_manifest(corpora["store_b"], tmp_path / f"s-{name}", change)
            r = client.post("/reload", json={"store": str(bad), "index": str(corpora["index_b"])})
            assert (r.status_code, r.json()["field"]) == (422, "store") and needle in r.json()["error"], r.text
        for name, (change, needle) in indexes.items():
            bad = edit_manifest(corpora["index_b"], tmp_path / f"i-{name}", change)
            r = client.post("/reload", json={"store": str(corpora["store_b"]), "index": str(bad)})
            assert (r.status_code, r.json()["field"]) == (422, "index") and needle in r.json()["error"], r.text
        assert client.post("/ask", json={"question": "the capital of france?"}).status_code == 200
        assert client.get("/health").json()["reload"]["count"] == 0


def test_reload_refuses_a_segment_corrupted_without_changing_its_size(pipeline, corpora, tmp_path) -> None:
    damaged = tmp_path / "store"
    shutil.copytree(corpora["store_b"], damaged)
    segment = damaged / "segment-00000.arrow"
    data = bytearray(segment.read_bytes())
    data[len(data) // 3] ^= 0x55
    segment.write_bytes(bytes(data))
    with serving(pipeline, allow_reload=True) as url, httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/reload", json={"store": str(damaged), "index": str(corpora["index_b"])})
        assert r.status_code == 422 and "damaged" in r.json()["error"], r.text
        assert client.post("/ask", json={"question": "the capital of france?"}).status_code == 200
        assert client.post("/search", json={"question": "the capital of france?"}).status_code == 200


def test_reload_refuses_an_index_built_with_another_embedder(pipeline, corpora) -> None:
    with serving(pipeline, allow_reload=True) as url, httpx.Client(base_url=url, timeout=60) as client:
        bad = {"store": str(corpora["store_b"]), "index": str(corpora["index_b_other_embedder"])}
        r = client.post("/reload", json=bad)
        assert r.status_code == 409 and "another embedder" in r.json()["error"], r.text
        r = client.post("/reload", json={"store": str(corpora["store_b"]), "index": str(corpora["index_a"])})
        assert r.status_code == 409, r.text  # 8 rows from store a vs 5 blocks
        good = {"store": str(corpora["store_b"]), "index": str(corpora["index_b"])}
        assert client.post("/reload", json=good).status_code == 200


def test_reload_needs_json_and_our_host_and_does_not_tell_which_paths_exist(pipeline, corpora, tmp_path) -> None:
    body = json.dumps({"store": str(corpora["store_b"]), "index": str(corpora["index_b"])})
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with serving(pipeline, allow_reload=True) as url, httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/reload", content=body, headers={"content-type": "text/plain"})
        assert r.status_code == 415 and r.json()["field"] == "content-type"
        r = client.post("/reload", content=body, headers={"content-type": "application/json", "host": "evil.example"})
        assert r.status_code == 421
        assert client.get("/health", headers={"host": "evil.example:80"}).status_code == 421
        missing = client.post("/reload", json={"store": "/no/such/dir", "index": str(corpora["index_b"])}).json()
        not_a_dir = client.post("/reload", json={"store": str(a_file), "index": str(corpora["index_b"])}).json()
        assert missing["status"] == not_a_dir["status"] == 422
        assert missing["error"].replace("/no/such/dir", "P") == not_a_dir["error"].replace(str(a_file), "P")
        assert client.get("/health").json()["reload"]["count"] == 0
    with serving(pipeline, allow_reload=True, allowed_hosts=("qa.example",)) as url:
        r = httpx.get(f"{url}/health", headers={"host": "qa.example:8000"})
        assert r.status_code == 200


def test_api_key_guards_every_route_but_health_and_the_page(pipeline, corpora) -> None:
    with serving(pipeline, api_key_file=str(corpora["key"])) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/health").json()["auth"] == {"api_key": True}
        assert client.get("/").status_code == 200 and 'id="api-key"' in client.get("/").text  # static, no data
        for method, path in (("POST", "/ask"), ("POST", "/search"), ("GET", "/openapi.json"), ("GET", "/docs")):
            r = client.request(method, path, json={"question": "x"})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, r.text)
        r = client.post("/ask", json={"question": "paris?"}, headers={"authorization": "Bearer " + "k" * 23 + "x"})
        assert r.status_code == 401
        assert client.post("/ask", json={"question": "paris?"}, headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        assert client.post("/ask", json={"question": "paris?"}, headers={"x-api-key": KEY}).status_code == 200


def test_key_file_and_exposure_warning(tmp_path) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ValueError, match="at least 16"):
        ServeConfig(api_key_file=str(short)).read_api_key()
    assert "without an API key" in exposure_warning(ServeConfig(host="0.0.0.0"), None)
    assert exposure_warning(ServeConfig(host="0.0.0.0"), KEY) is None
    assert exposure_warning(ServeConfig(host="127.0.0.1"), None) is None


def test_head_invisible_questions_cost_budget_and_no_paths_in_health(pipeline) -> None:
    with serving(pipeline, model_name="/srv/secret/models/realm-nq", max_cost=5000) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.head("/").status_code == 200 and client.head("/health").status_code == 200
        for question in ["\x00\x00", "\u200b\u200c\u200d", "\u0301\u0302", "\x07 \t", "\ufeff"]:
            r = client.post("/ask", json={"question": question})
            assert r.status_code == 422 and "visible" in r.json()["error"], (question, r.text)
        assert client.post("/ask", json={"question": "caf\u00e9?"}).status_code == 200
        r = client.post("/ask", json={"questions": ["x" * 500] * 3, "k": 4})
        assert r.status_code == 413 and r.json()["field"] == "cost" and "6,000" in r.json()["error"], r.text
        health = client.get("/health")
        assert "/srv" not in health.text and health.json()["model"] == "realm-nq"
        assert "/srv" not in client.get("/").text


def raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> bytes:
    """Read until the server closes the connection; fail if it does not within `seconds`."""
    sock.settimeout(seconds)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_header_body_and_idle_timeouts_and_the_connection_limit(pipeline) -> None:
    with serving(pipeline, header_timeout_s=1.0, body_timeout_s=1.0, idle_timeout_s=1.0, max_connections=3) as url:
        start = time.monotonic()
        with raw(url) as slow_head:  # slow loris: half a request head, never finished
            slow_head.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            assert closed_within(slow_head, 5) == b"" and time.monotonic() - start < 4
        with raw(url) as slow_body:
            slow_body.sendall(b"POST /ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 100\r\n\r\n{\"question\"")  # fmt: skip
            reply = closed_within(slow_body, 8)
            assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        with raw(url) as idle:  # a finished request, then silence: closed after the idle timeout
            idle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            start = time.monotonic()
            assert b"200 OK" in closed_within(idle, 5) and time.monotonic() - start < 4
        held = [raw(url) for _ in range(3)]
        try:
            time.sleep(0.2)
            r = httpx.get(f"{url}/health", timeout=10)
            assert r.status_code == 503
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_realm_serve_cuts_off_a_client_trickling_its_head(corpora) -> None:
    """The `realm serve` command itself (not only `uvicorn_config` in a thread): uvicorn's default httptools
    protocol has no head timeout, so a client sending a header byte every 0.2 s would hold a connection for
    ever; ours closes it at --header-timeout although bytes keep coming."""
    import os
    import subprocess
    import sys

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "realm.cli", "serve", "--model", str(CASE), "--store", str(corpora["store_a"]),
               "--index", str(corpora["index_a"]), "--port", str(port), "--header-timeout", "1.5"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr and process.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            start = time.monotonic()
            cut = None
            for byte in head:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:  # reset: the server closed the connection
                    cut = time.monotonic() - start
                    break
                sock.settimeout(0.2)
                try:
                    if sock.recv(4096) == b"":  # closed
                        cut = time.monotonic() - start
                        break
                except TimeoutError:
                    pass
        assert cut is not None and 1.0 < cut < 4.0, cut
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200  # still serving
    finally:
        process.terminate()
        process.wait(30)


def test_a_client_that_hangs_up_mid_body_is_one_log_line(pipeline, caplog) -> None:
    with caplog.at_level(logging.INFO), serving(pipeline) as url:
        for _ in range(5):
            with raw(url) as sock:
                sock.sendall(b"POST /ask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"qu")
                time.sleep(0.05)
        time.sleep(0.5)
        assert httpx.get(f"{url}/health").status_code == 200
    gone = [r for r in caplog.records if "disconnected during POST /ask" in r.getMessage()]
    assert len(gone) == 5, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


class SlowPipeline(RecordingPipeline):
    """Each model call takes time in proportion to its reader rows (questions x k), like the real model."""

    def ask(self, questions, k=None):
        time.sleep(0.004 * len(questions) * (k or self.k))
        return super().ask(questions, k)


def test_a_heavy_request_does_not_stall_a_light_one(pipeline) -> None:
    slow = SlowPipeline(pipeline)
    heavy = {"questions": [f"question number {i} about france?" for i in range(32)], "k": 8}

    async def run(url: str) -> tuple[float, float, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            started = time.monotonic()
            heavy_task = asyncio.create_task(client.post("/ask", json=heavy))
            await asyncio.sleep(0.1)
            light_started = time.monotonic()
            light = await client.post("/ask", json={"question": "the capital of france?", "k": 2})
            light_seconds = time.monotonic() - light_started
            heavy_response = await heavy_task
            return light_seconds, time.monotonic() - started, [light, heavy_response]

    with serving(slow, max_batch_size=16, max_wait_ms=0, max_cost=10**9) as url:
        light_seconds, heavy_seconds, responses = asyncio.run(run(url))
    assert [r.status_code for r in responses] == [200, 200]
    assert len(responses[1].json()["answers"]) == 32
    # The heavy request ran as bounded calls (chunk_rows = 20: 2 questions at k = 8) ...
    assert max(n * k for n, k in slow.calls if k == 8) <= 20 and len([c for c in slow.calls if c[1] == 8]) >= 16
    # ... and the light one was served between two of them, long before the heavy one finished.
    assert slow.calls.index((1, 2)) < len(slow.calls) - 1, slow.calls
    assert light_seconds < heavy_seconds / 2, (light_seconds, heavy_seconds)
