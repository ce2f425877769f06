"""Fair scheduling in `realm.serve.batching.MicroBatcher` (issue 15), driven directly on the real tiny
pipeline: a light request waits behind at most one small chunk of a heavy one, a heavy request is never
starved, and answers read in chunks are those of one unchunked call."""

from __future__ import annotations

import asyncio
import threading

import pytest

from realm.pipeline import Pipeline
from realm.serve.batching import MicroBatcher
from tests.test_serve import CASE, RecordingPipeline, build_corpora, same_answer

HEAVY = [f"question number {i} about the capital of france?" for i in range(12)]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    corpora = build_corpora(tmp_path_factory.mktemp("fair"))
    return Pipeline.from_pretrained(CASE, corpora["store_a"], corpora["index_a"], k=3)


async def _until(condition, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("timed out")


def test_a_light_request_waits_for_one_chunk_then_goes_first(pipeline) -> None:
    recording = RecordingPipeline(pipeline)
    recording.gate = threading.Event()

    async def run() -> tuple[list, list]:
        batcher = MicroBatcher(lambda: recording, max_batch_size=16, max_wait_ms=0, chunk_rows=8)
        await batcher.start()
        try:
            heavy = asyncio.ensure_future(batcher.ask(HEAVY, 4))  # 48 rows: 6 chunks of 2 questions (8 rows)
            await _until(recording.entered.is_set)  # the first chunk is in the model
            lights = [asyncio.ensure_future(batcher.ask([f"the capital of italy {i}"], 2)) for i in range(3)]
            await asyncio.sleep(0.05)
            recording.gate.set()
            return await heavy, await asyncio.gather(*lights)
        finally:
            await batcher.stop()

    heavy, lights = asyncio.run(run())
    calls = recording.calls
    # The heavy request ran in chunks of chunk_rows // k = 2 questions; the three light ones, arriving during
    # its first chunk, were batched together into the very next call, before the rest of the heavy one.
    assert calls[0] == (2, 4) and calls[1] == (3, 2), calls
    assert all(n * k <= 8 for n, k in calls if k == 4) and sum(n for n, k in calls if k == 4) == len(HEAVY)
    # Chunked answers are the unchunked ones: the heavy request's 12 questions read in one call.
    for got, expected in zip(heavy, pipeline.ask(HEAVY, 4), strict=True):
        same_answer(got.to_dict(), expected)
        assert got.probability == pytest.approx(expected.probability, abs=1e-5)
        assert [e.span_text for e in got.evidence] == [e.span_text for e in expected.evidence]
    for i, (light,) in enumerate(lights):
        same_answer(light.to_dict(), pipeline.ask([f"the capital of italy {i}"], 2)[0])


def test_a_stream_of_light_requests_does_not_starve_a_heavy_one(pipeline) -> None:
    recording = RecordingPipeline(pipeline)

    async def run() -> tuple[list, int]:
        batcher = MicroBatcher(lambda: recording, max_batch_size=1, max_wait_ms=0, chunk_rows=3, patience=3)
        await batcher.start()
        stop = asyncio.Event()

        async def light_client(c: int) -> None:  # always one light request waiting
            while not stop.is_set():
                await batcher.ask([f"old church {c}"], 1)

        try:
            clients = [asyncio.ensure_future(light_client(c)) for c in range(2)]
            await asyncio.sleep(0.05)
            before = len(recording.calls)  # calls started (or in flight) before the heavy request came
            answers = await asyncio.wait_for(batcher.ask(HEAVY[:4], 3), 60)
            stop.set()
            await asyncio.gather(*clients)
            return answers, before
        finally:
            await batcher.stop()

    answers, before = asyncio.run(run())
    assert len(answers) == 4
    heavy_at = [i for i, (_, k) in enumerate(recording.calls) if k == 3]
    # Least-served-first alone would serve the light requests for ever; after `patience` = 3 calls passed
    # over, the heavy request gets its chunk: never more than 3 light calls between two of its chunks.
    gaps = [b - a - 1 for a, b in zip(heavy_at, heavy_at[1:], strict=False)]
    assert len(heavy_at) == 4 and max(gaps) <= 3, recording.calls
    # (+1: a call may have been handed to its thread but not yet recorded when `before` was read)
    assert before <= heavy_at[0] <= before + 4, (before, recording.calls)


def test_requests_of_other_k_never_share_a_call_and_chunks_respect_the_row_budget(pipeline) -> None:
    recording = RecordingPipeline(pipeline)

    async def run() -> None:
        batcher = MicroBatcher(lambda: recording, max_batch_size=16, max_wait_ms=20, chunk_rows=6)
        await batcher.start()
        try:
            await asyncio.gather(
                batcher.ask(HEAVY, 3), batcher.ask(HEAVY[:6], 2), batcher.ask(["old church"], 3)
            )
        finally:
            await batcher.stop()

    asyncio.run(run())
    # Requests over 6 rows are big: at most 6 rows of them per call (2 questions at k = 3, 3 at k = 2); the
    # one-question request (3 rows) rides along with a chunk of its k.
    for n, k in recording.calls:
        assert n * k <= 6 + (3 if k == 3 else 0), recording.calls
    assert sum(n for n, k in recording.calls if k == 3) == len(HEAVY) + 1
    assert sum(n for n, k in recording.calls if k == 2) == 6
