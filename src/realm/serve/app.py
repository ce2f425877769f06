"""The FastAPI app: `/ask`, `/search`, `/health`, `/reload` and the web page at `/`.

Request bodies are parsed by hand (size, UTF-8, JSON, then the pydantic model) so that every bad input
gets a 4xx whose JSON names the field: `{"error": message, "field": "questions[2]", "status": 422}`.
Codes: 400 body not UTF-8 / not JSON; 401 missing or wrong API key; 403 reload not enabled; 404/405 unknown
route or method; 408 body not received in time; 409 an index that does not match its store; 413 body,
question count or cost (questions x characters x k) over the limit; 415 `/reload` without a JSON content
type; 421 a `Host` this server does not answer for; 422 a field with a wrong type or value (a question with
no visible character included); 503 shutting down or too many connections. A 500 means a bug.
Host, key and content-type checks, timeouts and connection limits: `realm.serve.guard`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import threading
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from realm.pipeline import Pipeline
from realm.serve.batching import MicroBatcher
from realm.serve.config import ServeConfig
from realm.serve.corpus import Corpus, CorpusError, open_corpus
from realm.serve.docs import add_offline_docs
from realm.serve.guard import GuardMiddleware, exposure_warning, uvicorn_config

logger = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


# Strict: "3" is not a k and 1 is not a question; unknown keys are errors that name the key.
class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: str | None = None
    questions: list[str] | None = None
    k: int | None = None
    threshold: float | None = None  # /ask: answers below this probability are "not sure" (default: the server's)


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    index: str
    store: str | None = None


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "body"


def _error(status: int, field: str | None, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "field": field, "status": status}, status_code=status)


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


class _Server:
    """What the handlers share: the config, the corpus being served, the micro-batcher, the reload lock."""

    def __init__(self, pipeline_or_loader: Pipeline | Callable[[], Pipeline], config: ServeConfig) -> None:
        self.config = config
        self.pipeline_or_loader = pipeline_or_loader
        self.page = resources.files("realm.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        self.corpus: Corpus | None = None
        self.start: Corpus | None = None  # the corpus at startup: what SIGHUP reopens
        self.reloads = 0
        self.api_key_required = config.api_key_file is not None  # the page then shows its key field
        self.batcher = MicroBatcher(
            lambda: self.current().pipeline, config.max_batch_size, config.max_wait_ms, chunk_rows=config.chunk_rows
        )
        self.reload_lock = asyncio.Lock()

    def current(self) -> Corpus:
        assert self.corpus is not None, "the app serves nothing before its startup"
        return self.corpus

    def default_k(self) -> int:
        return min(self.config.k or self.current().pipeline.k, self.config.max_k)

    async def reload(self, store_dir: str | None, index_dir: str) -> Corpus:
        async with self.reload_lock:  # one swap at a time; batches keep running on the old corpus meanwhile
            current = self.current()
            store_dir = store_dir or (str(current.store_dir) if current.store_dir else None)
            if store_dir is None:
                raise ApiError(422, "store", "the current store has no path; give one")
            new = await asyncio.to_thread(open_corpus, current.pipeline, store_dir, index_dir)
            self.corpus = new  # the next batch reads the new corpus
            self.reloads += 1
            logger.info(
                "corpus swapped to %s (%d blocks) / %s", new.store_dir, len(new.pipeline.store), new.index_dir
            )
            return new

    async def on_sighup(self) -> None:
        start = self.start
        if start is None or start.index_dir is None:
            logger.warning("SIGHUP ignored: the server was started without an index path")
            return
        try:
            await self.reload(str(start.store_dir), str(start.index_dir))
        except (CorpusError, ApiError) as err:
            logger.error("SIGHUP reload refused, still serving the old corpus: %s", err.message)
        except Exception:  # a signal has no client to answer: log, and keep serving the old corpus
            logger.exception("SIGHUP reload failed, still serving the old corpus")


def _server(request: Request) -> _Server:
    return request.app.state.server


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    server: _Server = app.state.server
    pipeline = server.pipeline_or_loader
    if not isinstance(pipeline, Pipeline):
        pipeline = await asyncio.to_thread(server.pipeline_or_loader)
    server.corpus = server.start = Corpus.of(pipeline, server.config.store, server.config.index)
    await server.batcher.start()
    loop = asyncio.get_running_loop()
    # Signal handlers can only be set from the main thread (not when a test runs the server in a thread).
    hup = hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread()
    if hup:
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(server.on_sighup()))
    yield
    if hup:
        loop.remove_signal_handler(signal.SIGHUP)
    await server.batcher.stop()


# -- errors -----------------------------------------------------------------------------------------------


async def api_error(request: Request, err: ApiError) -> JSONResponse:
    return _error(err.status, err.field, err.message)


async def corpus_error(request: Request, err: CorpusError) -> JSONResponse:
    return _error(err.status, err.field, err.message)


async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    return _error(err.status_code, None, str(err.detail))


async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
    return _error(422, _field(tuple(first["loc"])), first["msg"])


# -- request bodies ---------------------------------------------------------------------------------------


async def parse(request: Request, model: type[BaseModel]) -> Any:
    """The body as `model`, checked in order: size, UTF-8, JSON, an object, the model's fields."""
    max_body_bytes = _server(request).config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise ApiError(413, "body", f"the body has {declared} bytes; the limit is {max_body_bytes}")
    body = await read_body(request, max_body_bytes, _server(request).config.body_timeout_s)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, "body", f"the body is not UTF-8 (byte {err.start})") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:  # also too deep nesting, integers of > 4300 digits
        raise ApiError(400, "body", f"the body is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ApiError(422, "body", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        raise ApiError(422, _field(tuple(first["loc"])), first["msg"]) from None


async def read_body(request: Request, max_body_bytes: int, timeout_s: float) -> bytes:
    """The whole body, at most `max_body_bytes` (413), within `timeout_s` (408: a client that trickles
    its body would hold a connection and a handler for ever)."""
    body = bytearray()

    async def receive() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_body_bytes:
                raise ApiError(413, "body", f"the body is over the limit of {max_body_bytes} bytes")

    try:
        await asyncio.wait_for(receive(), timeout_s)
    except TimeoutError:
        raise ApiError(408, "body", f"the body did not arrive within {timeout_s:g} s") from None
    return bytes(body)


def visible(text: str) -> bool:
    """True if `text` has a character a reader can see: not only spaces, controls (NUL...), format
    characters (zero-width space, joiners, BOM), combining marks, unassigned or private-use code points."""
    return any(unicodedata.category(c)[0] not in "CZM" for c in text)


def questions_and_k(req: AskRequest, server: _Server) -> tuple[list[str], int]:
    config = server.config
    if (req.question is None) == (req.questions is None):
        raise ApiError(422, "questions", 'give either "question" (a string) or "questions" (a list of strings)')
    questions = [req.question] if req.question is not None else list(req.questions or [])
    name = "question" if req.question is not None else "questions"
    if not questions:
        raise ApiError(422, "questions", "the list of questions is empty")
    if len(questions) > config.max_questions:
        raise ApiError(413, "questions", f"{len(questions)} questions; at most {config.max_questions} per request")
    for i, q in enumerate(questions):
        where = name if req.question is not None else f"questions[{i}]"
        if not q.strip():
            raise ApiError(422, where, "the question is empty")
        if not visible(q):
            raise ApiError(422, where, "the question has no visible characters (only spaces, controls, zero-width or combining ones)")
        try:  # a lone surrogate from a "\ud800" escape is valid JSON but no text the tokenizer takes
            q.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(422, where, "the question is not valid Unicode text") from None
        if len(q) > config.max_question_chars:
            raise ApiError(422, where, f"the question has {len(q)} characters; at most {config.max_question_chars}")
    k = req.k if req.k is not None else server.default_k()
    if not 1 <= k <= config.max_k:
        raise ApiError(422, "k", f"k must be an integer in 1..{config.max_k}, got {k}")
    cost = sum(len(q) for q in questions) * k
    if cost > config.max_cost:
        raise ApiError(
            413, "cost", f"the request costs {cost:,} (characters of all questions x k = "
            f"{sum(len(q) for q in questions):,} x {k}); the budget is {config.max_cost:,}: send fewer or "
            "shorter questions, or a smaller k",
        )  # fmt: skip
    return questions, k


# -- routes -----------------------------------------------------------------------------------------------


async def index_page(request: Request) -> HTMLResponse:
    return HTMLResponse(_server(request).page)


async def ask(request: Request) -> JSONResponse:
    """Body: `{"question": str}` or `{"questions": [str, ...]}`, optional `"k"` (blocks read) and `"threshold"`
    (answers whose probability is below it come back with `"sure": false`: show them as "not sure").
    Concurrent requests are answered in one batched model call."""
    server = _server(request)
    req = await parse(request, AskRequest)
    questions, k = questions_and_k(req, server)
    threshold = server.current().pipeline.threshold if req.threshold is None else req.threshold
    if not 0.0 <= threshold <= 1.0:
        raise ApiError(422, "threshold", f"threshold must be a probability in [0, 1], got {threshold}")
    started = time.perf_counter()
    try:
        answers = await server.batcher.ask(questions, k)
    except RuntimeError as err:
        raise ApiError(503, None, str(err)) from None
    # "sure" is the one field the threshold decides: requests with different thresholds share a model call.
    seconds = round(time.perf_counter() - started, 4)

    def respond() -> JSONResponse:
        marked = [dataclasses.replace(a, sure=a.probability >= threshold) for a in answers]
        return JSONResponse({"answers": [a.to_dict() for a in marked], "k": k, "threshold": threshold, "seconds": seconds})

    # A heavy answer is megabytes of JSON: encoding it on the event loop would hold up every other request.
    return await asyncio.to_thread(respond)


async def search(request: Request) -> dict[str, Any]:
    """Same body as /ask; returns the top-k blocks of each question with retrieval scores and their
    softmax over the k (not batched across requests: retrieval alone is cheap)."""
    server = _server(request)
    questions, k = questions_and_k(await parse(request, AskRequest), server)
    pipeline = server.current().pipeline
    retrieved = await asyncio.to_thread(pipeline.retrieve, questions, k)
    results = []
    for b, question in enumerate(questions):
        ids = retrieved.block_ids[b].tolist()
        logits = retrieved.retrieval_logits[b].float()  # [K]
        probabilities = torch.softmax(logits, dim=0).tolist()
        titles, texts = pipeline.store.titles(ids), pipeline.store.texts(ids)
        blocks = [  # "score" (a public field name) is the retrieval logit
            {"block_id": i, "title": t, "text": x, "score": float(s), "probability": p}
            for i, t, x, s, p in zip(ids, titles, texts, logits.tolist(), probabilities, strict=True)
        ]
        results.append({"question": question, "blocks": blocks})
    return {"results": results, "k": k}


async def health(request: Request) -> dict[str, Any]:
    server = _server(request)
    config, current = server.config, server.current()
    model = current.pipeline.reader.config
    return {
        "status": "ok",
        # The name only, never a server path (model_name is often the checkpoint directory).
        "model": public_name(config.model_name) or f"RealmReader ({model.num_hidden_layers} layers, hidden {model.hidden_size})",
        **current.describe(),
        "k": server.default_k(),
        "threshold": current.pipeline.threshold,
        "limits": {
            "max_k": config.max_k,
            "max_questions": config.max_questions,
            "max_question_chars": config.max_question_chars,
            "max_body_bytes": config.max_body_bytes,
        },
        "batching": {
            "max_batch_size": config.max_batch_size,
            "max_wait_ms": config.max_wait_ms,
            "chunk_rows": config.chunk_rows,
            **server.batcher.stats.to_dict(),
        },  # fmt: skip
        "reload": {"allowed": config.allow_reload, "count": server.reloads},
        "auth": {"api_key": server.api_key_required},
        "credit": config.credit,
    }


def public_name(name: str | None) -> str | None:
    """A model name fit to show any client: the last part of a path."""
    if not name:
        return name
    return name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or name


async def client_gone(request: Request, err: ClientDisconnect) -> Response:
    # One line instead of a traceback per client that hangs up mid-body (nobody reads the answer).
    client = request.client.host if request.client else "?"
    logger.info("client %s disconnected during %s %s", client, request.method, request.url.path)
    return Response(status_code=499)


async def reload_corpus(request: Request) -> dict[str, Any]:
    """Body: `{"index": dir, "store": dir}` (store defaults to the current one). The pair is checked
    first; a refused pair leaves the old corpus serving. Batches in flight finish on the old corpus."""
    server = _server(request)
    if not server.config.allow_reload:
        raise ApiError(403, None, "reloading is disabled; start the server with --allow-reload")
    req = await parse(request, ReloadRequest)
    new = await server.reload(req.store, req.index)
    return {"status": "reloaded", **new.describe()}


def create_app(
    pipeline_or_loader: Pipeline | Callable[[], Pipeline], config: ServeConfig | None = None
) -> FastAPI:
    """The app over a pipeline, or over a loader called once at startup (in a thread).

    Args:
        pipeline_or_loader: a `Pipeline`, or a function returning one.
        config: limits, batching and corpus paths (`ServeConfig`).
    """
    config = config or ServeConfig()
    if not isinstance(config, ServeConfig):
        raise TypeError(
            f"config must be a ServeConfig (e.g. ServeConfig(port=8000)), not {type(config).__name__}"
        )
    app = FastAPI(
        title="REALM Open-QA",
        description="Answers with the evidence blocks they were read from. Errors: "
        '`{"error": message, "field": name, "status": code}`.',
        version="1",
        lifespan=_lifespan,
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN; ours serves it (realm.serve.docs)
        redoc_url=None,
    )
    add_offline_docs(app)
    app.add_middleware(GuardMiddleware, config=config, api_key=config.read_api_key())
    app.state.server = _Server(pipeline_or_loader, config)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(CorpusError, corpus_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.get("/", response_class=HTMLResponse, include_in_schema=False)(index_page)
    app.post("/ask", openapi_extra=_body_schema(AskRequest), summary="Answer questions, with the evidence blocks")(ask)
    app.post("/search", openapi_extra=_body_schema(AskRequest), summary="Retrieve blocks only (no reading)")(search)
    app.get("/health", summary="Status, corpus, model, index, limits and the credit line")(health)
    for path, handler in (("/", index_page), ("/health", health)):  # HEAD wherever GET (a monitor's probe)
        app.head(path, include_in_schema=False)(handler)
    app.post("/reload", openapi_extra=_body_schema(ReloadRequest), summary="Swap the corpus (--allow-reload)")(
        reload_corpus
    )
    return app


def run_server(pipeline: Pipeline | Callable[[], Pipeline], config: ServeConfig | None = None) -> None:
    """Serve until interrupted (blocking). SIGHUP reopens `config.store` / `config.index`."""
    import uvicorn

    config = config or ServeConfig()
    warning = exposure_warning(config, config.read_api_key())
    if warning:
        logger.warning(warning)
    app = create_app(pipeline, config)
    uvicorn.Server(uvicorn_config(app, config)).run()
