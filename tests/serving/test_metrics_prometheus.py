"""Rollout analysis through a real Prometheus: the same per-version stats as scraping the router directly.

A real ``prometheus`` (Debian's, as in .ci/run) runs on 127.0.0.1 with a 1 s scrape interval. One test points
it at the session's real router (Ray's metrics export port); the others at small exposition servers whose
counters the test sets, to restart a "pod" (counter reset) or take one down (a failed scrape).
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from lockgate.localenv import stop_pid
from serving.metrics import (
    CLASS_METRIC,
    LATENCY_METRIC,
    REQUESTS_METRIC,
    MetricsUnavailable,
    PrometheusVersionStats,
    VersionStats,
    parse_selector,
    query_version_stats,
    scrape_version_stats,
    version_stats_source,
)
from serving.rollout import RolloutController, RolloutEffects, RolloutOutcome
from serving.spec import RolloutPolicy, TrafficSpec
from tests.conftest import PORT_OFFSET
from tests.serving.test_router import closed_loop

# Apart from the session's ports (tests/conftest.py: 17055..17850 + offset), shifted by the same offset.
PROMETHEUS_PORT = 17860 + PORT_OFFSET
EXPORTER_PORTS = (17861 + PORT_OFFSET, 17862 + PORT_OFFSET)
INSTALL_HINT = "apt-get install -y --no-install-recommends prometheus"
# Shaped like a PodMonitor's job in a cluster (`<namespace>/<monitor name>`): characters a regex would escape.
JOB = "lockgate/lockgate-ray-workers"


def _prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip(f"prometheus is not installed ({INSTALL_HINT})")
    return path


def _wait(condition: Callable[[], bool], timeout_s: float, what: str, alive: Callable[[], bool]) -> None:
    """Poll ``condition`` until true; fail naming ``what`` on timeout or when the process died."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert alive(), f"prometheus exited while waiting for {what}"
        assert time.monotonic() < deadline, f"expected {what} within {timeout_s:.0f}s"
        time.sleep(0.25)


@contextmanager
def prometheus(directory: Path, targets: list[str]) -> Iterator[str]:
    """A real Prometheus scraping ``targets`` (host:port) every second as job ``JOB``; yields its URL."""
    binary = _prometheus_binary()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
            }
        )
    )
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}"
    with (directory / "prometheus.log").open("ab") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:

        def scraped_all() -> bool:
            try:
                answer = requests.get(f"{url}/api/v1/query", params={"query": "up"}, timeout=2).json()
            except (requests.RequestException, ValueError):
                return False
            return len(answer["data"]["result"]) == len(targets)

        _wait(scraped_all, 60, "a first scrape of every target", lambda: process.poll() is None)
        yield url
    finally:
        stop_pid(process.pid, Path(binary))


class Exporter:
    """A router-shaped exposition server (the router's metric names and labels) on one port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server: Any = None
        self.start()

    def start(self) -> None:
        """Start (again) with every counter at 0: a pod that restarted."""
        self.registry = CollectorRegistry()
        tags = ("version", "role", "mode")
        self.requests = Counter(REQUESTS_METRIC, "requests", (*tags, "status"), registry=self.registry)
        self.latency = Histogram(
            LATENCY_METRIC, "latency", tags, buckets=(0.01, 0.1, 1.0), registry=self.registry
        )
        self.classes = Counter(CLASS_METRIC, "classes", (*tags, "class"), registry=self.registry)
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    def stop(self) -> None:
        """Stop answering scrapes."""
        self.server.shutdown()
        self.server.server_close()

    def serve(self, version: str, role: str, ok: int, errors: int = 0) -> None:
        """Count answers as the router does: by status, latency and predicted class."""
        for status, count in (("ok", ok), ("error", errors)):
            if count:
                self.requests.labels(version, role, "weighted", status).inc(count)
        for _ in range(ok + errors):
            self.latency.labels(version, role, "weighted").observe(0.05)
        if ok:
            self.classes.labels(version, role, "weighted", "1").inc(ok)


@pytest.fixture()
def exporters() -> Iterator[list[Exporter]]:
    started = [Exporter(port) for port in EXPORTER_PORTS]
    try:
        yield started
    finally:
        for exporter in started:
            exporter.stop()


def _reading_reaches(
    reader: PrometheusVersionStats, key: tuple[str, str], total: float
) -> Callable[[], bool]:
    """A wait condition: a reading shows ``total`` requests for ``key`` (a scrape failing meanwhile: not yet)."""

    def reached() -> bool:
        try:
            return reader().get(key, VersionStats()).total == total
        except (
            MetricsUnavailable
        ):  # a restarted exporter may miss one scrape: the reader refuses that reading
            return False

    return reached


def test_counter_reset_on_one_pod_never_makes_a_delta_negative(exporters, tmp_path) -> None:
    # Given two router pods serving the candidate, scraped by Prometheus
    first, second = exporters
    first.serve("2", "candidate", ok=30, errors=2)
    second.serve("2", "candidate", ok=10)
    key = ("2", "candidate")
    with prometheus(tmp_path, [f"127.0.0.1:{port}" for port in EXPORTER_PORTS]) as url:
        reader = query_version_stats(url)
        _wait(_reading_reaches(reader, key, 42), 30, "42 requests in Prometheus", lambda: True)
        baseline = reader()
        # When the first pod restarts (its counters start from 0) and both serve more
        first.stop()
        first.start()
        first.serve("2", "candidate", ok=5)
        second.serve("2", "candidate", ok=7, errors=1)
        _wait(_reading_reaches(reader, key, 55), 30, "55 requests after the restart", lambda: True)
        delta = reader()[key].minus(baseline[key])
    # Then the step's delta is what was served since the baseline, not minus the restarted pod's history
    assert (delta.ok, delta.errors) == (12, 1), f"expected 12 ok and 1 error since the baseline, got {delta}"
    assert delta.latency_buckets[math.inf] == 13, f"expected 13 latency observations, got {delta}"
    assert delta.class_counts == {"1": 12}, f"expected 12 answers of class 1, got {delta.class_counts}"


def test_a_target_down_is_reported_not_judged_on_partial_data(exporters, tmp_path) -> None:
    # Given two pods whose series Prometheus has read once
    for exporter in exporters:
        exporter.serve("1", "champion", ok=20)
    with prometheus(tmp_path, [f"127.0.0.1:{port}" for port in EXPORTER_PORTS]) as url:
        reader = query_version_stats(url)
        _wait(_reading_reaches(reader, ("1", "champion"), 40), 30, "40 requests in Prometheus", lambda: True)
        # When one pod stops answering scrapes mid-step
        exporters[1].stop()
        down = f"127.0.0.1:{EXPORTER_PORTS[1]}"

        def reports_down() -> bool:
            try:
                reader()
            except MetricsUnavailable as error:
                return down in str(error)
            return False

        # Then the next readings raise naming the target instead of returning the other pod's share alone
        _wait(reports_down, 30, f"a MetricsUnavailable naming {down}", lambda: True)
        with pytest.raises(MetricsUnavailable, match=rf"\(job {JOB}\) \(up == 0\)"):
            reader()
        exporters[1].start()  # the fixture stops it again


def test_a_target_down_mid_step_rolls_the_candidate_back_saying_which(exporters, tmp_path) -> None:
    # Given a rollout reading two router pods through Prometheus, both scraped once
    for exporter in exporters:
        exporter.serve("1", "champion", ok=10)
        exporter.serve("2", "candidate", ok=10)
    down = f"127.0.0.1:{EXPORTER_PORTS[1]}"
    with prometheus(tmp_path, [f"127.0.0.1:{port}" for port in EXPORTER_PORTS]) as url:
        reader = query_version_stats(url)
        _wait(_reading_reaches(reader, ("2", "candidate"), 20), 30, "both pods in Prometheus", lambda: True)
        applied: list[float] = []
        events: list[tuple[str, str]] = []
        stopped: list[bool] = []

        def sleep(seconds: float) -> None:
            if not stopped:  # the step's first wait: one pod stops answering scrapes
                exporters[1].stop()
                stopped.append(True)
                seconds = 3.0  # a few scrape intervals, so that Prometheus has marked it down
            time.sleep(min(seconds, 3.0))

        effects = RolloutEffects(
            apply_weight=applied.append,
            scrape=reader,
            promote=lambda: pytest.fail("a rollout judged on partial data must not promote"),
            reject=lambda _reason: None,
            emit=lambda kind, message, _details: events.append((kind, message)),
            is_pinned=lambda: False,
            sleep=sleep,
        )
        policy = RolloutPolicy.model_validate({"steps": [50, 100], "interval_s": 1, "max_step_wait_s": 30})
        # When the controller holds its first step
        result = RolloutController(policy, "1", "2", effects).run()
        exporters[1].start()  # the fixture stops it again
    # Then it rolls back at once, weight 0, one rollback event naming the pod Prometheus could not scrape
    assert result.outcome == RolloutOutcome.rolled_back, f"expected a rollback, got {result}"
    assert applied == [50, 0.0], f"expected 50% then 0, got {applied}"
    assert [kind for kind, _ in events].count("rollback") == 1, f"expected one rollback event, got {events}"
    assert down in result.reason and "up == 0" in result.reason, (
        f"expected {down} named, got {result.reason!r}"
    )


def test_selector_keeps_only_the_matching_series(exporters, tmp_path) -> None:
    # Given two pods, Prometheus labelling each with its own instance
    exporters[0].serve("1", "champion", ok=3)
    exporters[1].serve("1", "champion", ok=4)
    with prometheus(tmp_path, [f"127.0.0.1:{port}" for port in EXPORTER_PORTS]) as url:
        everything = query_version_stats(url)
        _wait(
            _reading_reaches(everything, ("1", "champion"), 7), 30, "7 requests in Prometheus", lambda: True
        )
        # When a reader selects one instance
        one = query_version_stats(url, {"instance": f"127.0.0.1:{EXPORTER_PORTS[1]}"})
        # Then it sums that pod's series only
        assert one()[("1", "champion")].ok == 4, "expected only the selected instance's 4 requests"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_prometheus_unreachable_is_a_clear_error() -> None:
    # Given nothing listening where Prometheus should be
    url = f"http://127.0.0.1:{_free_port()}"
    # When a reading is asked for, then the error names the URL and the query
    with pytest.raises(MetricsUnavailable, match=rf"Prometheus at {url}/api/v1/query did not answer"):
        query_version_stats(url, timeout_s=1)()


def test_prometheus_unreachable_ends_a_rollout_as_a_rollback_with_the_reason() -> None:
    # Given a controller whose metrics come from an unreachable Prometheus
    url = f"http://127.0.0.1:{_free_port()}"
    applied: list[float] = []
    events: list[tuple[str, str]] = []
    rejected: list[str] = []
    effects = RolloutEffects(
        apply_weight=applied.append,
        scrape=query_version_stats(url, timeout_s=1),
        promote=lambda: pytest.fail("a rollout without metrics must not promote"),
        reject=rejected.append,
        emit=lambda kind, message, _details: events.append((kind, message)),
        is_pinned=lambda: False,
        sleep=lambda _s: None,
    )
    policy = RolloutPolicy.model_validate({"steps": [50, 100], "interval_s": 1, "max_step_wait_s": 2})
    # When it runs
    result = RolloutController(policy, "1", "2", effects).run()
    # Then it rolls back, weight 0, one rollback event saying Prometheus could not be asked
    assert result.outcome == RolloutOutcome.rolled_back, f"expected a rollback, got {result}"
    assert applied[-1] == 0.0, f"expected the candidate's weight to end at 0, got {applied}"
    assert [kind for kind, _ in events].count("rollback") == 1, f"expected one rollback event, got {events}"
    assert f"Prometheus at {url}" in result.reason, (
        f"expected the reason to name {url}, got {result.reason!r}"
    )
    assert rejected == [result.reason], f"expected the candidate tagged rejected once, got {rejected}"


def test_selector_from_the_environment_is_checked() -> None:
    assert parse_selector(None) == {} and parse_selector("") == {}, "expected no selector when unset"
    assert parse_selector('{"namespace": "ml", "application": "lockgate"}') == {
        "namespace": "ml",
        "application": "lockgate",
    }, "expected the JSON object's labels"
    for bad in ("namespace=ml", '["ml"]', '{"name-space": "ml"}', '{"namespace": 3}'):
        with pytest.raises(ValueError, match="prometheus selector"):
            parse_selector(bad)


def test_prometheus_url_selects_the_prometheus_reader(exporters, tmp_path) -> None:
    # Given an exporter both readers can reach
    exporters[0].serve("1", "champion", ok=6)
    direct = f"http://127.0.0.1:{EXPORTER_PORTS[0]}/metrics"
    assert version_stats_source(direct)()[("1", "champion")].ok == 6, "expected the endpoint read directly"
    with prometheus(tmp_path, [f"127.0.0.1:{EXPORTER_PORTS[0]}"]) as url:
        # When a Prometheus URL is given, then the reading comes from Prometheus, with the selector applied
        source = version_stats_source(direct, url, {"job": JOB})
        assert isinstance(source, PrometheusVersionStats), f"expected the Prometheus reader, got {source}"
        _wait(_reading_reaches(source, ("1", "champion"), 6), 30, "6 requests in Prometheus", lambda: True)
        elsewhere = version_stats_source(direct, url, {"job": "another-stack"})
        assert elsewhere() == {}, "expected no series for another stack's selector"


@pytest.mark.e2e
def test_prometheus_reading_equals_the_direct_scrape_of_a_real_router(deployed, local_env, tmp_path) -> None:
    # Given the session's real router at a 50/50 split, and Prometheus scraping Ray's metrics endpoint
    deployed.apply(TrafficSpec(candidate_weight=50))
    target = local_env.metrics_url.removeprefix("http://").removesuffix("/metrics")
    with prometheus(tmp_path, [target]) as url:
        # Selected as a cluster selects its router (infra sets LOCKGATE_PROMETHEUS_SELECTOR): by the Serve
        # application label Ray adds to every custom metric (ray/serve/metrics.py, APPLICATION_TAG).
        selector = {"application": deployed.spec.app_name}
        reader = query_version_stats(url, selector)
        # When traffic is served and has stopped
        with closed_loop(deployed.url, clients=4) as load:
            deadline = time.monotonic() + 120
            while load.responses < 300 and time.monotonic() < deadline:
                time.sleep(0.1)
        assert load.failed == 0, f"expected no failed requests, got {load.failures.most_common(3)}"
        keys = [(deployed.champion.version, "champion"), (deployed.candidate.version, "candidate")]

        def settled() -> bool:
            # Ray exports on its own period and Prometheus scrapes on its own: wait until both agree.
            # Both select the application: earlier tests' applications share this Ray cluster's endpoint.
            direct = scrape_version_stats(local_env.metrics_url, selector=selector)
            queried = reader()
            seen[:] = [
                (key, direct.get(key, VersionStats()).total, queried.get(key, VersionStats()).total)
                for key in keys
            ]
            return all(
                direct.get(key, VersionStats()).total == queried.get(key, VersionStats()).total
                for key in keys
            ) and all(direct.get(key, VersionStats()).total > 0 for key in keys)

        seen: list[tuple[tuple[str, str], float, float]] = []  # (key, direct total, Prometheus total)
        try:
            _wait(settled, 120, "Prometheus to catch up with the router's endpoint", lambda: True)
        except AssertionError as error:
            raise AssertionError(f"{error}; last (key, direct, Prometheus) totals: {seen}") from None
        direct, queried = scrape_version_stats(local_env.metrics_url, selector=selector), reader()
    # Then every statistic the analysis uses is the same through Prometheus as from the endpoint
    for key in keys:
        expected, got = direct[key], queried[key]
        assert (got.ok, got.errors) == (expected.ok, expected.errors), (
            f"{key}: expected {expected}, got {got}"
        )
        assert got.latency_buckets == expected.latency_buckets, f"{key}: latency buckets differ"
        assert got.prediction_buckets == expected.prediction_buckets, f"{key}: prediction buckets differ"
        assert got.prediction_count == expected.prediction_count, f"{key}: prediction counts differ"
        assert got.prediction_sum == pytest.approx(expected.prediction_sum), f"{key}: prediction sums differ"
        assert got.class_counts == expected.class_counts, f"{key}: class counts differ"
        assert got.value_moments == pytest.approx(expected.value_moments), f"{key}: moments differ"
