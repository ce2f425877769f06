"""Micro-batching: concurrent requests become one `Pipeline.ask` call.

One worker task takes the first waiting request, then keeps collecting for up to `max_wait_ms` or until
`max_batch_size` questions, and runs the batch in a thread so the event loop keeps accepting requests
(which queue up for the next batch while the model runs). Requests are grouped by `k` inside a batch:
the reader's softmax over the blocks read, and so every answer, depends on `k`, so requests with
different `k` cannot share a call (reading at the largest k and cutting would change their answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from realm.pipeline import Answer, Pipeline

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    questions: list[str]
    k: int
    future: asyncio.Future[list[Answer]]


@dataclass
class BatchStats:
    """Counters for /health and the benchmark."""

    batches: int = 0
    questions: int = 0
    model_calls: int = 0
    largest_batch: int = 0
    busy_seconds: float = 0.0
    sizes: list[int] = field(default_factory=list)  # the last 1000 batch sizes (in questions)

    def record(self, size: int, calls: int, seconds: float) -> None:
        self.batches += 1
        self.questions += size
        self.model_calls += calls
        self.largest_batch = max(self.largest_batch, size)
        self.busy_seconds += seconds
        self.sizes = [*self.sizes[-999:], size]

    def to_dict(self) -> dict[str, Any]:
        mean = self.questions / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "questions": self.questions,
            "model_calls": self.model_calls,
            "largest_batch": self.largest_batch,
            "mean_batch": round(mean, 3),
        }


class MicroBatcher:
    """Queue of `ask` requests served by one worker.

    Args:
        get_pipeline: returns the pipeline to use; called once per batch, so a corpus swap takes effect
            between batches and a batch in flight finishes on the corpus it started with.
        max_batch_size: questions per model call (1 turns batching off). A single request with more
            questions than this still runs as one call.
        max_wait_ms: how long the first request of a batch waits for company.
    """

    def __init__(
        self, get_pipeline: Callable[[], Pipeline], max_batch_size: int = 16, max_wait_ms: float = 5.0
    ) -> None:
        if max_batch_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait_ms >= 0")
        self.get_pipeline = get_pipeline
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._carry: _Job | None = None  # a job that did not fit the previous batch; it leads the next

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="realm-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        pending = [self._carry] if self._carry else []
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))

    async def ask(self, questions: list[str], k: int) -> list[Answer]:
        """Queue the questions; resolves to their answers, in order."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        future: asyncio.Future[list[Answer]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(list(questions), k, future))
        return await future

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, size = [first], len(first.questions)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch_size:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(job.questions) > self.max_batch_size:
                self._carry = job
                break
            batch.append(job)
            size += len(job.questions)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            batch = [job for job in batch if not job.future.done()]  # clients that went away
            if not batch:
                continue
            pipeline = self.get_pipeline()
            by_k: dict[int, list[_Job]] = {}
            for job in batch:
                by_k.setdefault(job.k, []).append(job)
            started = time.perf_counter()
            for k, jobs in by_k.items():
                questions = [q for job in jobs for q in job.questions]
                try:
                    answers = await asyncio.to_thread(pipeline.ask, questions, k)
                except Exception as err:  # one failing call must not stop the worker
                    logger.exception("batch of %d questions failed", len(questions))
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(err)
                    continue
                start = 0
                for job in jobs:
                    if not job.future.done():
                        job.future.set_result(answers[start : start + len(job.questions)])
                    start += len(job.questions)
            self.stats.record(
                sum(len(job.questions) for job in batch), len(by_k), time.perf_counter() - started
            )
