"""`ServeConfig`: how the HTTP server binds, batches and limits requests (no web dependencies here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """Settings of `realm serve` / `run_server`.

    Attributes:
        host, port: where to listen; loopback by default. Binding elsewhere without `api_key_file` logs a
            warning.
        k: blocks read per question when a request gives none (default: the pipeline's own k).
        max_k: the largest `k` a request may ask for.
        max_batch_size: questions per model call; 1 turns micro-batching off.
        max_wait_ms: how long the first request of a batch waits for others to join it.
        chunk_rows: reader rows (questions x k) one model call takes from big requests (of more rows than
            this) all together, one question at least: how long a light request can wait behind heavy ones
            (`realm.serve.batching`).
        max_questions: questions per request (more: 413).
        max_question_chars: characters per question (more: 422). Questions longer than the pipeline's
            `max_question_length` tokens are truncated by the tokenizer, as in `Pipeline.ask`.
        max_body_bytes: request body size (more: 413).
        allow_reload: enable `POST /reload`, which opens directories named by the client.
        store, index: the corpus directories the server started with; SIGHUP reopens them (e.g. after
            `realm index add`). Default: the pipeline's store path; without `index`, SIGHUP is ignored.
        model_name: shown by `/health` (e.g. the checkpoint directory).
        credit: attribution shown by `/health` and the web page (e.g. "Text: Wikipedia, CC BY-SA 4.0").
        log_level, access_log: uvicorn's logging.
        api_key_file: a file holding the API key (its first line); then every route but `/health` needs
            `Authorization: Bearer KEY` (or `X-API-Key: KEY`). None: no authentication.
        allowed_hosts: `Host` names accepted besides loopback names and `host` (against DNS rebinding);
            "*" accepts any. Bound to 0.0.0.0 / :: without a list, any name is accepted.
        max_cost: the budget of one request, questions x characters x k (over it: 413 naming "cost").
        idle_timeout_s: an idle keep-alive connection is closed after this long.
        header_timeout_s: a connection that sends no complete request head in this time is closed.
        body_timeout_s: a request body not received in full in this time gets 408.
        max_connections: open connections (and requests) at once; more get 503 from uvicorn.
        max_header_bytes: the largest request head accepted.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    k: int | None = None
    max_k: int = 20
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    chunk_rows: int = 20
    max_questions: int = 32
    max_question_chars: int = 1000
    max_body_bytes: int = 1 << 20
    allow_reload: bool = False
    store: str | None = None
    index: str | None = None
    model_name: str | None = None
    credit: str = ""
    log_level: str = "info"
    access_log: bool = False
    api_key_file: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_cost: int = 160_000
    idle_timeout_s: float = 5.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    max_connections: int = 64
    max_header_bytes: int = 16384

    def __post_init__(self) -> None:
        for name in ("max_k", "max_batch_size", "chunk_rows", "max_questions", "max_question_chars", "max_body_bytes", "max_cost",
                     "max_connections", "max_header_bytes"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"ServeConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("idle_timeout_s", "header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServeConfig.{name} must be > 0 seconds, got {getattr(self, name)}")
        if isinstance(self.allowed_hosts, str):
            raise ValueError("ServeConfig.allowed_hosts must be a tuple of names, not one string")
        if self.max_wait_ms < 0:
            raise ValueError(f"ServeConfig.max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.k is not None and not 1 <= self.k <= self.max_k:
            raise ValueError(f"ServeConfig.k must be in 1..max_k={self.max_k}, got {self.k}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"ServeConfig.port must be in 0..65535, got {self.port}")

    def read_api_key(self) -> str | None:
        """The key in `api_key_file` (first line, stripped); None without a file."""
        if self.api_key_file is None:
            return None
        from pathlib import Path

        path = Path(self.api_key_file)
        try:
            key = path.read_text(encoding="utf-8").splitlines()[0].strip() if path.stat().st_size else ""
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--api-key-file {path}: cannot be read ({err}); give a text file holding the key") from None
        if len(key) < 16:
            raise ValueError(f"--api-key-file {path}: the key on its first line has {len(key)} characters; use at least 16")
        return key
