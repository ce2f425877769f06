"""Micro-batching with fair scheduling: concurrent requests share `Pipeline.ask` calls, and no request,
however large, holds the model for longer than one bounded call at a time.

One worker task takes the first waiting request, waits up to `max_wait_ms` for company, then fills a call
round-robin: one question from each waiting request in turn, until `max_batch_size` questions or
`max_batch_rows` reader rows (questions x k) are taken. A request of 32 questions at k = 20 thus runs as
several calls, and a one-question request that arrives meanwhile joins the very next call instead of
waiting behind all of them. Calls run in a thread so the event loop keeps accepting requests. Requests are
grouped by `k`: the reader's softmax over the blocks read, and so every answer, depends on `k`, so
questions with different `k` never share a call; the round-robin turn passes between the `k` groups too.
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
    taken: int = 0  # questions handed to a call so far
    answers: dict[int, Answer] = field(default_factory=dict)

    @property
    def waiting(self) -> bool:
        return self.taken < len(self.questions) and not self.future.done()


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
    """Queue of `ask` requests served by one worker (see the module doc).

    Args:
        get_pipeline: returns the pipeline to use; called once per call, so a corpus swap takes effect
            between calls and a call in flight finishes on the corpus it started with.
        max_batch_size: questions per model call (1 turns batching off).
        max_wait_ms: how long the first request of a batch waits for company.
        max_batch_rows: reader rows (questions x k) per model call; default `max_batch_size` x 5 (REALM's
            k). A single question over it still runs, alone.
    """

    def __init__(
        self,
        get_pipeline: Callable[[], Pipeline],
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        max_batch_rows: int | None = None,
    ) -> None:
        if max_batch_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait_ms >= 0")
        self.get_pipeline = get_pipeline
        self.max_batch_size = max_batch_size
        self.max_batch_rows = max_batch_rows or max_batch_size * 5
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._active: list[_Job] = []  # requests with questions not yet handed to a call, in turn order

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="realm-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        pending = list(self._active)
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

    def _drain(self) -> None:
        assert self._queue is not None
        while not self._queue.empty():
            self._active.append(self._queue.get_nowait())

    async def _gather(self) -> None:
        """Wait for a first request, then up to `max_wait` for more (while a call would not be full)."""
        assert self._queue is not None
        if not self._active:
            self._active.append(await self._queue.get())
        deadline = time.monotonic() + self.max_wait
        while sum(len(j.questions) - j.taken for j in self._active) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                self._active.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        self._drain()

    def _next_call(self) -> tuple[int, list[tuple[_Job, int]]]:
        """The next call's k and its (request, question index) pairs, taken round-robin."""
        self._active = [job for job in self._active if job.waiting]  # finished, or the client went away
        k = self._active[0].k
        jobs = [job for job in self._active if job.k == k]
        taken: list[tuple[_Job, int]] = []
        while jobs and len(taken) < self.max_batch_size and (not taken or (len(taken) + 1) * k <= self.max_batch_rows):
            for job in list(jobs):
                if len(taken) >= self.max_batch_size or (taken and (len(taken) + 1) * k > self.max_batch_rows):
                    break
                taken.append((job, job.taken))
                job.taken += 1
                if job.taken == len(job.questions):
                    jobs.remove(job)
        return k, taken

    def _pass_turn(self, served: _Job) -> None:
        """After a call: requests that arrived during it join the line first, then the one served goes
        to its back, so a newcomer's turn comes before the served request's next one."""
        self._drain()
        if served in self._active:
            self._active.remove(served)
            self._active.append(served)

    async def _run(self) -> None:
        while True:
            await self._gather()
            self._active = [job for job in self._active if job.waiting]
            if not self._active:
                continue
            k, taken = self._next_call()
            served = self._active[0]
            pipeline = self.get_pipeline()
            started = time.perf_counter()
            try:
                answers = await asyncio.to_thread(pipeline.ask, [job.questions[i] for job, i in taken], k)
            except Exception as err:  # one failing call must not stop the worker
                logger.exception("a call of %d questions failed", len(taken))
                for job, _ in taken:
                    if not job.future.done():
                        job.future.set_exception(err)
                self._pass_turn(served)
                continue
            for (job, i), answer in zip(taken, answers, strict=True):
                job.answers[i] = answer
                if len(job.answers) == len(job.questions) and not job.future.done():
                    job.future.set_result([job.answers[j] for j in range(len(job.questions))])
            self.stats.record(len(taken), 1, time.perf_counter() - started)
            self._pass_turn(served)
