"""`ServeConfig`: how the HTTP server binds, batches and limits requests (no web dependencies here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """Settings of `realm serve` / `run_server`.

    Attributes:
        host, port: where to listen; loopback by default (the API has no authentication).
        k: blocks read per question when a request gives none (default: the pipeline's own k).
        max_k: the largest `k` a request may ask for.
        max_batch_size: questions per model call; 1 turns micro-batching off.
        max_wait_ms: how long the first request of a batch waits for others to join it.
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
    """

    host: str = "127.0.0.1"
    port: int = 8000
    k: int | None = None
    max_k: int = 20
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
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

    def __post_init__(self) -> None:
        for name in ("max_k", "max_batch_size", "max_questions", "max_question_chars", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"ServeConfig.max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.k is not None and not 1 <= self.k <= self.max_k:
            raise ValueError(f"ServeConfig.k must be in 1..max_k={self.max_k}, got {self.k}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"ServeConfig.port must be in 0..65535, got {self.port}")
