"""The load client against a tiny local HTTP server: answers by version, failures by kind, latency, clean stop."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lockgate.traffic import (
    REQUEST_ID_HEADER,
    SPLIT_HEADER,
    STICKY_HEADER,
    VERSION_HEADER,
    LoadClient,
    TrafficSimulator,
    percentile,
    sticky_keys,
)

SPLIT = "weighted:10"
REFUSED = '{"error": "refused"}'


@dataclass
class FakeRouter:
    """What the fake router answered: (status, version) per request, and the sticky keys it saw."""

    url: str = ""
    answered: Counter[tuple[int, str]] = field(default_factory=Counter)
    keys: Counter[str] = field(default_factory=Counter)
    request_ids: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, status: int, version: str = "") -> int:
        with self.lock:
            return self.answered[(status, version)]

    def total(self) -> int:
        with self.lock:
            return sum(self.answered.values())


def row(status: int = 200, version: str = "1", delay_s: float = 0.0) -> dict[str, Any]:
    """A row telling the fake router how to answer it."""
    return {"status": status, "version": version, "delay_s": delay_s}


@pytest.fixture
def router() -> Iterator[FakeRouter]:
    """A router stand-in on 127.0.0.1 (a free port): answers each row as the row asks, with the version header."""
    fake = FakeRouter()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real router

        def do_POST(self) -> None:
            asked = json.loads(self.rfile.read(int(self.headers["content-length"])))["rows"][0]
            time.sleep(asked["delay_s"])
            status, version = asked["status"], asked["version"] if asked["status"] == 200 else ""
            body = json.dumps({"version": version}) if status == 200 else REFUSED
            with fake.lock:
                fake.answered[(status, version)] += 1
                if STICKY_HEADER in self.headers:
                    fake.keys[self.headers[STICKY_HEADER]] += 1
                fake.request_ids.append(self.headers.get(REQUEST_ID_HEADER, ""))
            self.send_response(status)
            if status == 200:
                self.send_header(VERSION_HEADER, version)
                self.send_header(SPLIT_HEADER, SPLIT)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass  # keep the test output quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/"
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        serving.join(timeout=10)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def client_threads_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("load-client-") and t.is_alive()]


def test_answers_are_counted_by_version_and_failures_by_kind(router) -> None:
    # Given rows the router answers from version 1 or 2, or refuses with 500 or 503
    rows = [row(version="1"), row(version="2"), row(status=500), row(status=503)]

    # When three clients run against it for a second
    load = LoadClient(router.url, rows, clients=3, timeout_s=5, seed=1).run(1.0)

    # Then every request the router answered is counted once, under its version or its failure kind
    assert load.answers == Counter({"1": router.count(200, "1"), "2": router.count(200, "2")}), (
        f"answers by version match the router's: {load.answers} vs {router.answered}"
    )
    assert load.failures == Counter(
        {f"500 {REFUSED}": router.count(500), f"503 {REFUSED}": router.count(503)}
    ), f"failures by kind match the router's refusals: {load.failures} vs {router.answered}"
    assert load.attempts == load.responses == router.total() > 40, (
        f"every request got an answer and was counted: {load.attempts}, {load.responses}, {router.total()}"
    )
    assert load.failed == router.count(500) + router.count(503) > 0, f"failed sums the kinds: {load.failures}"
    assert load.answers_in(SPLIT) == load.answers, "answers are also counted under the split that routed them"
    assert load.answers_in("weighted:50") == Counter(), "a split that routed nothing has no answers"


def test_latency_is_recorded_for_every_answer(router) -> None:
    # Given one row answered at once and one answered after 0.2 s
    rows = [row(version="1"), row(version="2", delay_s=0.2)]

    # When two clients run for a second
    load = LoadClient(router.url, rows, clients=2, timeout_s=5, seed=2).run(1.0)

    # Then there is one latency per answer, and the slow answers show in the high percentile
    latencies = load.latencies_s()
    assert len(latencies) == sum(load.answers.values()) > 0, f"{len(latencies)} latencies, {load.answers}"
    assert min(latencies) < 0.2, f"the fast answers are faster than the slow ones: {min(latencies):.3f}s"
    p50, p99 = load.latency_s(50), load.latency_s(99)
    assert p50 is not None and p99 is not None, "percentiles exist once there are answers"
    assert p50 <= p99 and p99 >= 0.2, f"p99 includes the 0.2 s answers: p50 {p50:.3f}s, p99 {p99:.3f}s"


def test_stop_joins_every_client_thread_even_with_requests_in_flight(router) -> None:
    # Given four clients whose every request takes 0.3 s
    load = LoadClient(router.url, [row(delay_s=0.3)], clients=4, timeout_s=5).start()
    time.sleep(0.5)
    assert load.running, "the clients run in the background after start()"

    # When the load is stopped while requests are in flight
    load.stop()

    # Then no client thread is left, and the requests in flight were still counted
    assert not load.running and client_threads_alive() == [], f"threads left: {client_threads_alive()}"
    assert sum(load.answers.values()) == router.count(200, "1") >= 4, (
        f"answers in flight at stop() are counted: {load.answers} vs {router.answered}"
    )


def test_context_manager_stops_the_clients(router) -> None:
    # Given a load used as a context manager
    with LoadClient(router.url, [row()], clients=2, timeout_s=5) as load:
        # When some answers have come back and the block ends
        deadline = time.monotonic() + 10
        while not load.answers and time.monotonic() < deadline:
            time.sleep(0.01)

    # Then the clients stopped with it
    assert load.answers["1"] > 0, f"answers arrived inside the block: {load.answers}"
    assert client_threads_alive() == [], f"threads left after the block: {client_threads_alive()}"


def test_no_connection_is_a_failure_unless_unavailability_is_tolerated() -> None:
    # Given a URL where nothing listens
    url = closed_port_url()

    # When a strict load and a tolerant load run against it
    strict = LoadClient(url, [row()], clients=2, timeout_s=2).run(0.3)
    tolerant = LoadClient(url, [row()], clients=2, timeout_s=2, tolerate_unavailable=True, backoff_s=0.05)
    tolerant.run(0.3)

    # Then the strict load counts each refused connection by its kind; the tolerant one only waits
    assert set(strict.failures) == {"ConnectionError"} and strict.failed > 0, f"{strict.failures}"
    assert strict.attempts == strict.failed and strict.responses == 0, "no request got an HTTP answer"
    assert tolerant.failed == 0 and tolerant.attempts == 0, f"nothing counted: {tolerant.failures}"
    assert 0 < tolerant.unavailable <= 2 * (0.3 / 0.05 + 2), (
        f"backed off between tries: {tolerant.unavailable}"
    )


def test_tolerated_404_backs_off_but_other_refusals_count(router) -> None:
    # Given a router with no application yet (404) for some rows and a refusal (500) for others
    rows = [row(status=404), row(status=500)]

    # When a tolerant load runs
    load = LoadClient(router.url, rows, clients=2, timeout_s=5, tolerate_unavailable=True, backoff_s=0.05)
    load.run(0.5)

    # Then only the 500s are failures
    assert load.failures == Counter({f"500 {REFUSED}": router.count(500)}), f"{load.failures}"
    assert load.unavailable == router.count(404) > 0, (
        f"404s waited out: {load.unavailable} vs {router.answered}"
    )


def test_a_slow_answer_past_the_timeout_fails_as_a_timeout(router) -> None:
    # Given a router that takes 0.5 s to answer and clients that wait 0.1 s
    load = LoadClient(router.url, [row(delay_s=0.5)], clients=1, timeout_s=0.1)

    # When it runs briefly
    load.run(0.3)

    # Then the requests failed as read timeouts and none counted as answered
    assert set(load.failures) == {"ReadTimeout"} and load.failed >= 1, f"{load.failures}"
    assert load.answers == Counter() and load.latencies_s() == [], "a timed-out request has no answer"


def test_outcomes_keep_each_request_in_order(router) -> None:
    # Given a load that keeps its outcomes, on rows answered and refused
    load = LoadClient(router.url, [row(), row(status=503)], clients=2, timeout_s=5, keep_outcomes=True)

    # When it runs
    load.run(0.5)

    # Then each finished request is there with its timing, split or failure
    outcomes = load.outcomes()
    assert len(outcomes) == load.attempts > 0, f"{len(outcomes)} outcomes of {load.attempts}"
    assert all(o.sent_s <= o.done_s for o in outcomes), "sent before done"
    assert [o.done_s for o in outcomes] == sorted(o.done_s for o in outcomes), "in the order they finished"
    assert {(o.ok, o.split, o.status) for o in outcomes} == {(True, SPLIT, 200), (False, None, 503)}, (
        f"answers carry the split, refusals their status: {set(outcomes)}"
    )
    with pytest.raises(RuntimeError, match="keep_outcomes"):
        LoadClient(router.url, [row()], clients=1, timeout_s=1).outcomes()


def test_every_request_carries_its_own_id_kept_in_its_outcome(router) -> None:
    # Given a load that keeps its outcomes, on rows answered and refused
    load = LoadClient(router.url, [row(), row(status=503)], clients=2, timeout_s=5, keep_outcomes=True)

    # When it runs
    load.run(0.5)

    # Then each request was sent with an id of its own, and its outcome names that id
    ids = [o.request_id for o in load.outcomes()]
    assert ids and all(ids), f"every outcome has an id: {ids[:5]}"
    assert len(set(ids)) == len(ids), "no id is used twice"
    with router.lock:
        seen = set(router.request_ids)
    assert set(ids) <= seen, f"the ids kept are the ids sent: {sorted(set(ids) - seen)[:5]}"


def test_a_request_without_an_answer_keeps_its_id() -> None:
    # Given nothing listening on a port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    load = LoadClient(f"http://127.0.0.1:{port}/", [row()], clients=1, timeout_s=1, keep_outcomes=True)

    # When it runs
    load.run(0.2)

    # Then the refused connections are failures that still name the id they were sent with
    outcomes = load.outcomes()
    assert outcomes and all(o.status is None and o.request_id for o in outcomes), outcomes[:3]


def test_sticky_keys_cycle_through_every_key(router) -> None:
    # Given three sticky keys
    keys = ["user-0", "user-1", "user-2"]

    # When two clients send with them
    load = LoadClient(router.url, [row()], clients=2, timeout_s=5, headers=sticky_keys(keys)).run(0.5)

    # Then the router saw every key, about equally often
    seen = router.keys
    assert set(seen) == set(keys), f"every key sent: {seen}"
    assert max(seen.values()) - min(seen.values()) <= 1, f"keys cycle evenly: {seen}"
    assert sum(seen.values()) == load.attempts, "one key per request"


def test_traffic_simulator_replays_a_data_files_rows(router, tmp_path: Path) -> None:
    # Given a CSV file whose feature columns are the rows the fake router understands, and an extra column
    data_file = tmp_path / "rows.csv"
    data_file.write_text("status,version,delay_s,label\n200,v1,0.0,0\n200,v2,0.0,1\n500,none,0.0,0\n")

    # When the demo's simulated users run over its features
    users = TrafficSimulator(router.url, data_file, ["status", "version", "delay_s"], clients=2).start()
    time.sleep(0.5)
    users.stop()

    # Then answers are counted by version and refusals in failed, as the demo reports them
    assert users.rows[0] == {"status": 200, "version": "v1", "delay_s": 0.0}, (
        f"features only: {users.rows[0]}"
    )
    assert set(users.answers) <= {"v1", "v2"} and sum(users.answers.values()) > 0, f"{users.answers}"
    assert isinstance(users.failed, int) and users.failed == router.count(500), f"{users.failures}"
    assert client_threads_alive() == [], "stop() joined the simulated users"


def test_rows_json_cannot_carry_are_left_out(router) -> None:
    # Given a row with a NaN (version 1) and a sendable one (version 2)
    rows = [row(version="1", delay_s=math.nan), row(version="2")]

    # When a load runs on them
    load = LoadClient(router.url, rows, clients=1, timeout_s=5).run(0.3)

    # Then only the sendable row was sent, and a load with none is refused
    assert set(load.answers) == {"2"} and load.failed == 0, f"the NaN row is left out: {load.answers}"
    with pytest.raises(ValueError, match="none of the 1 rows"):
        LoadClient(router.url, rows[:1], clients=1, timeout_s=1)


@pytest.mark.parametrize(
    ("arguments", "field_name"),
    [({"clients": 0, "timeout_s": 1.0}, "clients"), ({"clients": 1, "timeout_s": 0.0}, "timeout_s")],
)
def test_invalid_settings_are_refused_by_name(arguments: dict[str, Any], field_name: str) -> None:
    # Given / when / then: a setting out of range names itself
    with pytest.raises(ValueError, match=field_name):
        LoadClient("http://127.0.0.1:9/", [row()], **arguments)


def test_percentile_is_nearest_rank() -> None:
    # Given the latencies 1..100
    values = [float(v) for v in range(100, 0, -1)]

    # When / then: nearest-rank percentiles, None without values
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0), (
        "nearest rank of 1..100"
    )
    assert percentile([], 50) is None, "no values, no percentile"
    with pytest.raises(ValueError, match="percent"):
        percentile(values, 0)


def test_header_names_are_the_routers() -> None:
    # Given the router's own header names
    from serving.app import SPLIT_HEADER as ROUTER_SPLIT_HEADER
    from serving.app import VERSION_HEADER as ROUTER_VERSION_HEADER

    # When / then: the load client reads the same headers
    assert (VERSION_HEADER, SPLIT_HEADER) == (ROUTER_VERSION_HEADER, ROUTER_SPLIT_HEADER), (
        "the client counts by the headers the router sets"
    )
