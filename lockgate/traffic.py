"""Closed-loop load: concurrent clients posting single rows to the router, counting who answered and how it went.

One client serves the demo's simulated users (``TrafficSimulator``), the router's end-to-end tests and the
serving benchmark's weight-change measurement. Each client thread keeps one keep-alive session and sends
its next request as soon as the previous one finished. Light on purpose: only ``requests``, and pandas
only when rows are read from a data file.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import requests

from contracts.vocabulary import Header

# The router's answer headers (serving/app.py defines the same names; tests/lockgate/test_traffic.py checks).
VERSION_HEADER, SPLIT_HEADER, STICKY_HEADER = (
    Header.version.value,
    Header.traffic_split.value,
    Header.sticky_key.value,
)
REQUEST_ID_HEADER = "x-request-id"  # Serve's: it keeps a client's id, logs it, and echoes it on the answer
UNKNOWN = "?"  # an answer without the header
FAILURE_TEXT_CHARS = 120  # how much of a refused request's body names its failure kind
DEMO_CLIENTS = 4
DEMO_TIMEOUT_S = 5.0
DEMO_ROWS = 5_000
_JSON_HEADERS = {"content-type": "application/json"}
_UNAVAILABLE_STATUS = 404  # Serve answers 404 while no application is deployed


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished request: when it was sent and done (``time.monotonic``), and what came back."""

    sent_s: float
    done_s: float
    status: int | None  # None: no HTTP answer (connection refused, timeout, ...)
    version: str | None = None  # answering version, for a 200
    split: str | None = None  # the split that routed it, for a 200
    failure: str | None = None  # failure kind: "<status> <body start>" or the exception's class name
    request_id: str | None = None  # the id the request was sent with (the router records it with a capture)

    @property
    def ok(self) -> bool:
        """Whether the request was answered with a 200."""
        return self.failure is None

    @property
    def latency_s(self) -> float:
        """Seconds from sending to the answer (or the error)."""
        return self.done_s - self.sent_s


def rows_from_file(data_file: Path, features: Sequence[str], limit: int = DEMO_ROWS) -> list[dict[str, Any]]:
    """The first ``limit`` rows of a parquet or CSV file, restricted to ``features``, as plain dicts."""
    import pandas as pd

    columns = list(features)
    frame = (
        pd.read_parquet(data_file, columns=columns)
        if str(data_file).endswith(".parquet")
        else pd.read_csv(data_file, usecols=columns)
    )
    return list(frame.head(limit).to_dict("records"))


def sticky_keys(keys: Sequence[str], header: str = STICKY_HEADER) -> Callable[[], Mapping[str, str]]:
    """Per-request headers that cycle through ``keys`` as the sticky key (shared by all client threads)."""
    if not keys:
        raise ValueError("keys must not be empty")
    state = {"next": 0}
    lock = threading.Lock()

    def headers() -> Mapping[str, str]:
        with lock:
            index = state["next"]
            state["next"] = (index + 1) % len(keys)
        return {header: keys[index]}

    return headers


def percentile(values: Sequence[float], percent: float) -> float | None:
    """Nearest-rank percentile of ``values`` (None when there are none)."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be within (0, 100], got {percent}")
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(percent / 100 * len(ordered)) - 1, 0)]


class LoadClient:
    """Closed-loop clients posting ``{"rows": [row]}`` to ``url``; answers counted by version and by split.

    ``rows`` are drawn at random (seeded by ``seed``); ``headers``, when given, is called for each request's
    extra headers (see ``sticky_keys``). A 200 is an answer; anything else is a failure counted by kind,
    unless ``tolerate_unavailable``: then no connection or a 404 (no application yet, or a restart) makes
    that client back off ``backoff_s`` and try again, counted only in ``unavailable``. ``keep_outcomes``
    keeps every finished request for ``outcomes()`` (timings per request; off, memory stays flat).

    Use ``start()``/``stop()``, ``with LoadClient(...) as load:`` or ``run(duration_s)``. The counters are
    written by the client threads under a lock; read them while running through the methods, or after stop.
    """

    def __init__(
        self,
        url: str,
        rows: Sequence[Mapping[str, Any]],
        *,
        clients: int,
        timeout_s: float,
        seed: int | None = None,
        headers: Callable[[], Mapping[str, str]] | None = None,
        tolerate_unavailable: bool = False,
        backoff_s: float = 0.5,
        keep_outcomes: bool = False,
        version_header: str = VERSION_HEADER,
        split_header: str = SPLIT_HEADER,
    ):
        if clients < 1:
            raise ValueError(f"clients must be at least 1, got {clients}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.url, self.clients, self.timeout_s = url, clients, timeout_s
        self.rows = list(rows)
        self._bodies = [body for body in map(_encode, self.rows) if body is not None]
        if not self._bodies:
            raise ValueError(f"rows: none of the {len(self.rows)} rows can be sent as JSON")
        self._headers = headers
        self._tolerate_unavailable, self._backoff_s = tolerate_unavailable, backoff_s
        self._keep_outcomes = keep_outcomes
        self._version_header, self._split_header = version_header, split_header
        self.answers: Counter[str] = Counter()  # 200 answers by the version that answered
        self.failures: Counter[str] = Counter()  # failed requests by kind
        self.attempts = 0  # finished requests, answered or not (tolerated unavailability excluded)
        self.responses = 0  # of those, the ones that got an HTTP answer (any status)
        self.unavailable = 0  # tolerated attempts while the service was unavailable
        self._by_split: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._latencies: list[float] = []
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._random = random.Random(seed)
        self._threads = [
            threading.Thread(target=self._client, name=f"load-client-{index}", daemon=True)
            for index in range(clients)
        ]

    @property
    def failed(self) -> int:
        """How many requests failed, of every kind."""
        with self._lock:
            return sum(self.failures.values())

    @property
    def running(self) -> bool:
        """Whether any client thread is still alive."""
        return any(thread.is_alive() for thread in self._threads)

    def answers_in(self, split: str) -> Counter[str]:
        """200 answers by version among requests routed by ``split`` (e.g. ``"weighted:10"``); a copy."""
        with self._lock:
            return Counter(self._by_split.get(split, Counter()))

    def latencies_s(self) -> list[float]:
        """Seconds each 200 answer took, in the order they finished; a copy."""
        with self._lock:
            return list(self._latencies)

    def latency_s(self, percent: float) -> float | None:
        """A percentile (e.g. 50, 99) of the 200 answers' latency in seconds; None before any answer."""
        return percentile(self.latencies_s(), percent)

    def outcomes(self) -> list[Outcome]:
        """Every finished request so far, in the order they finished (needs ``keep_outcomes``); a copy."""
        if not self._keep_outcomes:
            raise RuntimeError("outcomes are only kept with keep_outcomes=True")
        with self._lock:
            return list(self._outcomes)

    def start(self) -> Self:
        """Start the clients in the background; returns the client itself, so ``.start()`` can chain."""
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Stop the clients and wait for each: a request in flight ends within its timeout."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=self.timeout_s + self._backoff_s + 5)

    def run(self, duration_s: float) -> Self:
        """Run the clients for ``duration_s`` seconds, then stop them; returns the client for its counts."""
        self.start()
        try:
            self._stop.wait(duration_s)
        finally:
            self.stop()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _client(self) -> None:
        with requests.Session() as session:
            for body in self._bodies_until_stopped():
                headers = {
                    **_JSON_HEADERS,
                    REQUEST_ID_HEADER: uuid.uuid4().hex,
                    **(self._headers() if self._headers else {}),
                }
                request_id = headers[REQUEST_ID_HEADER]
                sent = time.monotonic()
                try:
                    response = session.post(self.url, data=body, headers=headers, timeout=self.timeout_s)
                except requests.RequestException as error:
                    outcome = Outcome(
                        sent, time.monotonic(), None, failure=type(error).__name__, request_id=request_id
                    )
                else:
                    outcome = self._read(response, sent, request_id)
                if self._tolerate_unavailable and outcome.status in (None, _UNAVAILABLE_STATUS):
                    with self._lock:
                        self.unavailable += 1
                    self._stop.wait(self._backoff_s)
                    continue
                self._record(outcome)

    def _bodies_until_stopped(self) -> Iterator[bytes]:
        while not self._stop.is_set():
            yield self._bodies[self._random.randrange(len(self._bodies))]

    def _read(self, response: requests.Response, sent: float, request_id: str) -> Outcome:
        if response.status_code == 200:
            return Outcome(
                sent,
                time.monotonic(),
                200,
                version=response.headers.get(self._version_header, UNKNOWN),
                split=response.headers.get(self._split_header, UNKNOWN),
                request_id=request_id,
            )
        failure = f"{response.status_code} {response.text[:FAILURE_TEXT_CHARS]}"
        return Outcome(sent, time.monotonic(), response.status_code, failure=failure, request_id=request_id)

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.attempts += 1
            if outcome.status is not None:
                self.responses += 1
            if outcome.ok:
                version, split = outcome.version or UNKNOWN, outcome.split or UNKNOWN
                self.answers[version] += 1
                self._by_split[split][version] += 1
                self._latencies.append(outcome.latency_s)
            else:
                self.failures[outcome.failure or UNKNOWN] += 1
            if self._keep_outcomes:
                self._outcomes.append(outcome)


def _encode(row: Mapping[str, Any]) -> bytes | None:
    """One row as a request body; None for a row JSON cannot carry (NaN: requests refused to send those)."""
    try:
        return json.dumps({"rows": [dict(row)]}, allow_nan=False).encode()
    except ValueError:
        return None


class TrafficSimulator(LoadClient):
    """The demo's simulated users: ``clients`` threads replaying rows of a data file against the router.

    Waits out the router's absence (no connection, 404) instead of counting it: ``failed`` counts the
    requests the router refused. ``start()`` in the background, ``stop()`` when done; ``answers`` by version.
    """

    def __init__(
        self, url: str, data_file: Path, features: list[str], clients: int = DEMO_CLIENTS, seed: int = 0
    ):
        super().__init__(
            url,
            rows_from_file(data_file, features),
            clients=clients,
            timeout_s=DEMO_TIMEOUT_S,
            seed=seed,
            tolerate_unavailable=True,
        )
