"""Greedy batching: concurrent requests scored in one call, each answered with exactly its own rows."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from serving.batching import Batcher
from serving.scoring import Scored


class SlowModel:
    """Scores each row as its value doubled; every call takes a while and is recorded."""

    def __init__(self, poison: Any = None) -> None:
        self.calls: list[int] = []
        self.poison = poison
        self.lock = threading.Lock()

    def predict(self, rows: list[dict[str, Any]]) -> Scored:
        with self.lock:
            self.calls.append(len(rows))
        time.sleep(0.05)
        if any(row["x"] == self.poison for row in rows):
            raise ValueError("this row breaks the model")
        return Scored([{"prediction": row["x"] * 2} for row in rows], [row["x"] * 2 for row in rows])


async def requests_at_once(batcher: Batcher, bodies: list[list[dict[str, Any]]]) -> list[Any]:
    return await asyncio.gather(*(batcher.predict(rows) for rows in bodies), return_exceptions=True)


def test_concurrent_requests_share_calls_and_get_their_own_answers() -> None:
    # Given a slow model and 40 requests of 1-3 rows arriving together,
    model = SlowModel()
    batcher = Batcher(model.predict, max_rows=32)
    bodies = [[{"x": 100 * i + j} for j in range(1 + i % 3)] for i in range(40)]
    # when they are scored,
    results = asyncio.run(requests_at_once(batcher, bodies))
    # then each got exactly its own rows' answers, in order,
    for rows, scored in zip(bodies, results, strict=True):
        assert isinstance(scored, Scored), scored
        assert [a["prediction"] for a in scored.answers] == [row["x"] * 2 for row in rows]
        assert scored.predictions == [row["x"] * 2 for row in rows]
    # in far fewer calls than requests, none over the row bound (the first call takes the first request alone).
    assert len(model.calls) <= 6 and max(model.calls) <= 32, model.calls
    assert sum(model.calls) == sum(len(rows) for rows in bodies), model.calls


def test_a_request_that_breaks_the_model_fails_alone() -> None:
    # Given a model that fails on one value, and a batch where one request carries it,
    model = SlowModel(poison=7)
    batcher = Batcher(model.predict, max_rows=32)
    bodies = [[{"x": 1}], [{"x": 2}], [{"x": 7}], [{"x": 3}]]

    async def scenario() -> list[Any]:
        blocker = asyncio.ensure_future(batcher.predict([{"x": 0}]))  # keeps the model busy: the rest queue
        await asyncio.sleep(0.01)
        results = await requests_at_once(batcher, bodies)
        await blocker
        return results

    results = asyncio.run(scenario())
    # then only that request gets the error; the others their answers.
    assert isinstance(results[2], ValueError), results
    assert [r.answers[0]["prediction"] for i, r in enumerate(results) if i != 2] == [2, 4, 6], results


def test_a_lone_request_is_scored_at_once_and_its_failure_is_not_retried() -> None:
    # Given one request at a time, when it is scored, then one call, no waiting for company;
    model = SlowModel(poison=5)
    batcher = Batcher(model.predict, max_rows=32)
    started = time.perf_counter()
    assert asyncio.run(batcher.predict([{"x": 1}])).predictions == [2]
    assert time.perf_counter() - started < 1.0 and model.calls == [1]
    # and a failing one fails once: a flaky model's errors stay visible to the rollout.
    with pytest.raises(ValueError, match="breaks the model"):
        asyncio.run(batcher.predict([{"x": 5}]))
    assert model.calls == [1, 1], model.calls


def test_batching_off_scores_each_request_alone() -> None:
    model = SlowModel()
    batcher = Batcher(model.predict, max_rows=1)
    asyncio.run(requests_at_once(batcher, [[{"x": i}] for i in range(5)]))
    assert model.calls == [1, 1, 1, 1, 1], model.calls
