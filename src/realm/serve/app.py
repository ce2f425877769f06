"""The FastAPI app: `/ask`, `/search`, `/health`, `/reload` and the web page at `/`.

Request bodies are parsed by hand (size, UTF-8, JSON, then the pydantic model) so that every bad input
gets a 4xx whose JSON names the field: `{"error": message, "field": "questions[2]", "status": 422}`.
Codes: 400 body not UTF-8 / not JSON; 403 reload not enabled; 404/405 unknown route or method;
409 an index that does not match its store; 413 body or question count over the limit; 422 a field with a
wrong type or value; 503 shutting down. A 500 means a bug.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from realm.pipeline import Pipeline
from realm.serve.batching import MicroBatcher
from realm.serve.config import ServeConfig
from realm.serve.corpus import Corpus, CorpusError, open_corpus
from realm.serve.docs import add_offline_docs

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
    state: dict[str, Any] = {"reloads": 0}
    page = resources.files("realm.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    def corpus() -> Corpus:
        return state["corpus"]

    batcher = MicroBatcher(lambda: corpus().pipeline, config.max_batch_size, config.max_wait_ms)
    reload_lock = asyncio.Lock()

    async def reload(store_dir: str | None, index_dir: str) -> Corpus:
        async with reload_lock:  # one swap at a time; batches keep running on the old corpus meanwhile
            current = corpus()
            store_dir = store_dir or (str(current.store_dir) if current.store_dir else None)
            if store_dir is None:
                raise ApiError(422, "store", "the current store has no path; give one")
            new = await asyncio.to_thread(open_corpus, current.pipeline, store_dir, index_dir)
            state["corpus"] = new  # the next batch reads the new corpus
            state["reloads"] += 1
            logger.info(
                "corpus swapped to %s (%d blocks) / %s", new.store_dir, len(new.pipeline.store), new.index_dir
            )
            return new

    async def on_sighup() -> None:
        start = state["start"]
        if start.index_dir is None:
            logger.warning("SIGHUP ignored: the server was started without an index path")
            return
        try:
            await reload(str(start.store_dir), str(start.index_dir))
        except (CorpusError, ApiError) as err:
            logger.error("SIGHUP reload refused, still serving the old corpus: %s", err.message)
        except Exception:  # a signal has no client to answer: log, and keep serving the old corpus
            logger.exception("SIGHUP reload failed, still serving the old corpus")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pipeline = pipeline_or_loader
        if not isinstance(pipeline, Pipeline):
            pipeline = await asyncio.to_thread(pipeline_or_loader)
        state["corpus"] = state["start"] = Corpus.of(pipeline, config.store, config.index)
        await batcher.start()
        loop = asyncio.get_running_loop()
        # Signal handlers can only be set from the main thread (not when a test runs the server in a thread).
        hup = hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread()
        if hup:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(on_sighup()))
        yield
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        await batcher.stop()

    app = FastAPI(
        title="REALM Open-QA",
        description="Answers with the evidence blocks they were read from. Errors: "
        '`{"error": message, "field": name, "status": code}`.',
        version="1",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN; ours serves it (realm.serve.docs)
        redoc_url=None,
    )
    add_offline_docs(app)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.field, err.message)

    @app.exception_handler(CorpusError)
    async def corpus_error(request: Request, err: CorpusError) -> JSONResponse:
        return _error(err.status, err.field, err.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, None, str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        return _error(422, _field(tuple(first["loc"])), first["msg"])

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise ApiError(
                413, "body", f"the body has {declared} bytes; the limit is {config.max_body_bytes}"
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body_bytes:
                raise ApiError(413, "body", f"the body is over the limit of {config.max_body_bytes} bytes")
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

    def questions_and_k(req: AskRequest) -> tuple[list[str], int]:
        if (req.question is None) == (req.questions is None):
            raise ApiError(
                422, "questions", 'give either "question" (a string) or "questions" (a list of strings)'
            )
        questions = [req.question] if req.question is not None else list(req.questions or [])
        name = "question" if req.question is not None else "questions"
        if not questions:
            raise ApiError(422, "questions", "the list of questions is empty")
        if len(questions) > config.max_questions:
            raise ApiError(
                413, "questions", f"{len(questions)} questions; at most {config.max_questions} per request"
            )
        for i, q in enumerate(questions):
            where = name if req.question is not None else f"questions[{i}]"
            if not q.strip():
                raise ApiError(422, where, "the question is empty")
            try:  # a lone surrogate from a "\ud800" escape is valid JSON but no text the tokenizer takes
                q.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(422, where, "the question is not valid Unicode text") from None
            if len(q) > config.max_question_chars:
                raise ApiError(
                    422, where, f"the question has {len(q)} characters; at most {config.max_question_chars}"
                )
        k = req.k if req.k is not None else default_k()
        if not 1 <= k <= config.max_k:
            raise ApiError(422, "k", f"k must be an integer in 1..{config.max_k}, got {k}")
        return questions, k

    def default_k() -> int:
        return min(config.k or corpus().pipeline.k, config.max_k)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.post(
        "/ask", openapi_extra=_body_schema(AskRequest), summary="Answer questions, with the evidence blocks"
    )
    async def ask(request: Request) -> dict[str, Any]:
        """Body: `{"question": str}` or `{"questions": [str, ...]}`, optional `"k"` (blocks read).
        Concurrent requests are answered in one batched model call."""
        questions, k = questions_and_k(await parse(request, AskRequest))
        started = time.perf_counter()
        try:
            answers = await batcher.ask(questions, k)
        except RuntimeError as err:
            raise ApiError(503, None, str(err)) from None
        return {
            "answers": [a.to_dict() for a in answers],
            "k": k,
            "seconds": round(time.perf_counter() - started, 4),
        }

    @app.post("/search", openapi_extra=_body_schema(AskRequest), summary="Retrieve blocks only (no reading)")
    async def search(request: Request) -> dict[str, Any]:
        """Same body as /ask; returns the top-k blocks of each question with retrieval scores and their
        softmax over the k (not batched across requests: retrieval alone is cheap)."""
        questions, k = questions_and_k(await parse(request, AskRequest))
        pipeline = corpus().pipeline
        retrieved = await asyncio.to_thread(pipeline.retrieve, questions, k)
        results = []
        for b, question in enumerate(questions):
            ids = retrieved.block_ids[b].tolist()
            scores = retrieved.scores[b].float()
            probabilities = torch.softmax(scores, dim=0).tolist()
            titles, texts = pipeline.store.titles(ids), pipeline.store.texts(ids)
            blocks = [
                {"block_id": i, "title": t, "text": x, "score": float(s), "probability": p}
                for i, t, x, s, p in zip(ids, titles, texts, scores.tolist(), probabilities, strict=True)
            ]
            results.append({"question": question, "blocks": blocks})
        return {"results": results, "k": k}

    @app.get("/health", summary="Status, corpus, model, index, limits and the credit line")
    async def health() -> dict[str, Any]:
        current = corpus()
        model = current.pipeline.reader.config
        return {
            "status": "ok",
            "model": config.model_name
            or f"RealmReader ({model.num_hidden_layers} layers, hidden {model.hidden_size})",
            **current.describe(),
            "k": default_k(),
            "limits": {
                "max_k": config.max_k,
                "max_questions": config.max_questions,
                "max_question_chars": config.max_question_chars,
                "max_body_bytes": config.max_body_bytes,
            },
            "batching": {
                "max_batch_size": config.max_batch_size,
                "max_wait_ms": config.max_wait_ms,
                **batcher.stats.to_dict(),
            },  # fmt: skip
            "reload": {"allowed": config.allow_reload, "count": state["reloads"]},
            "credit": config.credit,
        }

    @app.post(
        "/reload", openapi_extra=_body_schema(ReloadRequest), summary="Swap the corpus (--allow-reload)"
    )
    async def reload_corpus(request: Request) -> dict[str, Any]:
        """Body: `{"index": dir, "store": dir}` (store defaults to the current one). The pair is checked
        first; a refused pair leaves the old corpus serving. Batches in flight finish on the old corpus."""
        if not config.allow_reload:
            raise ApiError(403, None, "reloading is disabled; start the server with --allow-reload")
        req = await parse(request, ReloadRequest)
        new = await reload(req.store, req.index)
        return {"status": "reloaded", **new.describe()}

    return app


def run_server(pipeline: Pipeline | Callable[[], Pipeline], config: ServeConfig | None = None) -> None:
    """Serve until interrupted (blocking). SIGHUP reopens `config.store` / `config.index`."""
    import uvicorn

    config = config or ServeConfig()
    app = create_app(pipeline, config)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=config.host, port=config.port, log_level=config.log_level, access_log=config.access_log
        )
    )
    server.run()
