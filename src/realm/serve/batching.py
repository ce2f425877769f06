"""Micro-batching with fair, cost-aware scheduling: concurrent requests share `Pipeline.ask` calls, and no
request, however large, holds the model for longer than one small chunk at a time.

Cost is counted in reader rows (questions x k: reading dominates a call, about 20 ms a row for the demo's
6-layer reader on one core). The scheduler is least-attained-service: every call starts with the waiting
request that has had the fewest rows read so far (a newcomer has had none; fewest rows left breaks a tie),
then fills round-robin with requests of the same `k`, least served first. A call takes at most
`max_batch_size` questions and `max_batch_rows` rows, of which at most `chunk_rows` (one question at least)
from big requests (more than `chunk_rows` rows each) all together; small requests batch freely. So a
one-question request that arrives while a 32-question request at k = 20 is read waits for the chunk in
flight (one heavy question, ~0.6 s on the demo) and then goes first, instead of waiting behind the heavy
request's whole queue. Starvation is bounded: a request passed over by `patience` calls in a row goes next
(the longest passed over first). A question read in a call with other questions gets the answer it gets
alone (the padding is masked; tests/test_serve_fairness.py). Calls run in a thread so the event loop keeps
accepting requests. Requests are grouped by `k`: the reader's softmax over the blocks read, and so every
answer, depends on `k`, so questions with different `k` never share a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
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
    seq: int  # arrival order: the tie-break
    taken: int = 0  # questions handed to a call so far
    passed: int = 0  # calls in a row that went by without any of its questions
    answers: dict[int, Answer] = field(default_factory=dict)

    @property
    def waiting(self) -> bool:
        return self.taken < len(self.questions) and not self.future.done()

    @property
    def served(self) -> int:
        """Reader rows handed to calls so far: the scheduler's measure of service."""
        return self.taken * self.k


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
        max_batch_rows: reader rows (questions x k) per model call; default `max_batch_size` x 5 (REALM's k).
        chunk_rows: reader rows one call takes from big requests (over `chunk_rows` rows each), all together
            (one question at least); default 20 (one question at the default `max_k`). It bounds how long a
            newcomer waits behind big requests.
        patience: a waiting request passed over by this many calls in a row goes next.
    """

    def __init__(
        self,
        get_pipeline: Callable[[], Pipeline],
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        max_batch_rows: int | None = None,
        chunk_rows: int = 20,
        patience: int = 8,
    ) -> None:
        if max_batch_size < 1 or max_wait_ms < 0 or chunk_rows < 1 or patience < 1:
            raise ValueError("max_batch_size, chunk_rows and patience must be >= 1 and max_wait_ms >= 0")
        self.get_pipeline = get_pipeline
        self.max_batch_size = max_batch_size
        self.max_batch_rows = max_batch_rows or max_batch_size * 5
        self.chunk_rows = chunk_rows
        self.patience = patience
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._active: list[_Job] = []  # requests with questions not yet handed to a call
        self._arrivals = itertools.count()

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
        await self._queue.put(_Job(list(questions), k, future, next(self._arrivals)))
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

    def _priority(self, job: _Job) -> tuple[int, ...]:
        # Requests passed over `patience` times come first, the longest passed over first; then least served;
        # then fewest rows left; then first come.
        left = (len(job.questions) - job.taken) * job.k
        aged = job.passed >= self.patience
        return (0 if aged else 1, -job.passed if aged else 0, job.served, left, job.seq)

    def _next_call(self) -> tuple[int, list[tuple[_Job, int]]]:
        """The next call's k and its (request, question index) pairs (see the module doc)."""
        self._active = [job for job in self._active if job.waiting]  # finished, or the client went away
        self._active.sort(key=self._priority)
        k = self._active[0].k
        jobs = [job for job in self._active if job.k == k]
        chunk = max(1, self.chunk_rows // k)  # questions of big requests in one call, all together
        taken: list[tuple[_Job, int]] = []
        big = 0  # questions taken from big requests (more than one chunk of rows in all)

        def fits(job: _Job) -> bool:
            if job.taken == len(job.questions) or len(taken) >= self.max_batch_size:
                return False
            if taken and (len(taken) + 1) * k > self.max_batch_rows:
                return False
            return len(job.questions) * k <= self.chunk_rows or big < chunk

        progress = True
        while progress:  # round-robin: one question from each request in turn
            progress = False
            for job in jobs:
                if fits(job):
                    big += len(job.questions) * k > self.chunk_rows
                    taken.append((job, job.taken))
                    job.taken += 1
                    progress = True
        served = {id(job) for job, _ in taken}
        for job in self._active:
            job.passed = 0 if id(job) in served else job.passed + 1
        return k, taken

    async def _run(self) -> None:
        while True:
            await self._gather()
            self._active = [job for job in self._active if job.waiting]
            if not self._active:
                continue
            k, taken = self._next_call()
            pipeline = self.get_pipeline()
            started = time.perf_counter()
            try:
                answers = await asyncio.to_thread(pipeline.ask, [job.questions[i] for job, i in taken], k)
            except Exception as err:  # one failing call must not stop the worker
                logger.exception("a call of %d questions failed", len(taken))
                for job, _ in taken:
                    if not job.future.done():
                        job.future.set_exception(err)
                self._drain()
                continue
            for (job, i), answer in zip(taken, answers, strict=True):
                job.answers[i] = answer
                if len(job.answers) == len(job.questions) and not job.future.done():
                    job.future.set_result([job.answers[j] for j in range(len(job.questions))])
            self.stats.record(len(taken), 1, time.perf_counter() - started)
            self._drain()  # requests that arrived during the call compete for the next one
