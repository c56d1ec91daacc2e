"""Concurrent requests for one model version scored in one call: a single-row predict costs what 32 rows cost.

Measured with benchmarks/bench_any_model.py: a scikit-learn pipeline's single-row ``pyfunc.predict`` takes
2.8–3.6 ms of CPU and 32 rows in one call 2.5–3.9 ms, so on a saturated replica per-request calls, not the
model, bound throughput. The batch is greedy: while one call runs in a worker thread, the requests that arrive
wait in a queue, and the next call takes them all (up to ``max_rows``). A lone request waits for nothing.

Answers are per row (the router's contract), so each request gets back exactly its own rows' answers. Should
the joint call fail (one request's rows break the model), every request of that batch is scored again on
its own: only the request that fails gets an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from serving.scoring import Scored

Rows = list[dict[str, Any]]


class Batcher:
    """Greedy batching of one model version's predictions; one per loaded version of a replica."""

    def __init__(self, predict: Callable[[Rows], Scored], max_rows: int) -> None:
        """``predict`` scores rows (run in a worker thread); ``max_rows``: the most rows one call takes."""
        self._predict = predict
        self.max_rows = max(1, max_rows)
        self._waiting: list[tuple[Rows, asyncio.Future[Scored]]] = []
        self._running = False
        self.calls = 0  # model calls made (a figure for tests and benchmarks)

    async def predict(self, rows: Rows) -> Scored:
        """The answers to ``rows``, scored together with whatever else is waiting."""
        future: asyncio.Future[Scored] = asyncio.get_running_loop().create_future()
        self._waiting.append((rows, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[Rows, asyncio.Future[Scored]]]:
        """The oldest waiting requests, up to ``max_rows`` rows (always at least one request)."""
        taken: list[tuple[Rows, asyncio.Future[Scored]]] = []
        rows = 0
        while self._waiting and (not taken or rows + len(self._waiting[0][0]) <= self.max_rows):
            item = self._waiting.pop(0)
            taken.append(item)
            rows += len(item[0])
        return taken

    async def _drain(self) -> None:
        try:
            while self._waiting:
                await self._score(self._take())
        finally:
            self._running = False

    async def _score(self, batch: list[tuple[Rows, asyncio.Future[Scored]]]) -> None:
        joined = [row for rows, _ in batch for row in rows]
        self.calls += 1
        try:
            scored = await asyncio.to_thread(self._predict, joined)
            if len(scored.answers) != len(joined) or len(scored.predictions) != len(joined):
                raise ValueError(f"{len(scored.answers)} answers for {len(joined)} rows")
        except Exception as error:  # noqa: BLE001 - one request's rows may be the cause: score each on its own
            if (
                len(batch) == 1
            ):  # its own failure: returned as it is, not retried (a flaky model stays visible)
                if not batch[0][1].done():
                    batch[0][1].set_exception(error)
                return
            for rows, future in batch:
                await self._alone(rows, future)
            return
        start = 0
        for rows, future in batch:
            end = start + len(rows)
            if not future.done():
                future.set_result(Scored(scored.answers[start:end], scored.predictions[start:end]))
            start = end

    async def _alone(self, rows: Rows, future: asyncio.Future[Scored]) -> None:
        self.calls += 1
        try:
            result = await asyncio.to_thread(self._predict, rows)
        except Exception as error:  # noqa: BLE001 - the request's own failure, returned to it
            if not future.done():
                future.set_exception(error)
            return
        if not future.done():
            future.set_result(result)
