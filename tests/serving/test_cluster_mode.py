"""Cluster mode's rollout and its faults, each a test: the real store, a real Prometheus, a controller process.

The deploy stage runs as it runs in the training RayJob (no ``LOCKGATE_DASHBOARD_URL``; the live state store
and Prometheus named in the environment). What stands in for the cluster here:

- the router: :class:`FollowingRouter`, a thread that reads the live state store as the real router does
  (every 0.2 s), splits a steady stream of answers by the weight it reads (or by its pin), and exports the
  router's series and its pin gauge on a real exposition endpoint; the real router does this on a real Ray
  Serve in tests/e2e/test_cluster_checks.py;
- MLflow's registry: :class:`MemoryRegistry`, in memory (as tests/serving/test_promotion.py does), with the
  real alias writer (``AliasWriter.apply``, the compare-and-set) called in-process instead of through its Ray
  actor, so MLflow can be made to refuse one alias move halfway.

In every case: the champion keeps answering (the stand-in's champion count keeps growing), exactly one
``rollback`` or ``promotion`` event (none when automation yields to a pin), aliases all moved or none.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow.tracking
import pytest
from mlflow.exceptions import MlflowException
from prometheus_client import Gauge

from contracts.settings import EnvVar
from contracts.vocabulary import RolloutOutcome, ServingMetric
from pipeline.config import load_config
from pipeline.deploy import deploy_and_roll_out
from serving import promotion
from serving.livestate import LiveStateStore, LocalStateStore, RolloutBusy
from serving.spec import AnalysisSpec, RolloutPolicy
from tests.conftest import ROOT
from tests.serving.test_metrics_prometheus import EXPORTER_PORTS, Exporter, prometheus

MODEL = "loan-default"
PASSED = {"lockgate.gate.regression": "passed"}


class MemoryRegistry:
    """MLflow's registry in memory: aliases, version and model tags, and an alias move that can be made to fail."""

    aliases: dict[str, str] = {}
    tags: dict[str, dict[str, str]] = {}
    model_tags: dict[str, str] = {}  # the alias writer's intent record lives here while it moves aliases
    fail_on: str | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def get_registered_model(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(aliases=dict(MemoryRegistry.aliases), tags=dict(MemoryRegistry.model_tags))

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        MemoryRegistry.model_tags[key] = value

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        MemoryRegistry.model_tags.pop(key, None)

    def get_model_version(self, name: str, version: str) -> SimpleNamespace:
        return SimpleNamespace(tags={**PASSED, **MemoryRegistry.tags.get(version, {})})

    def get_model_version_by_alias(self, name: str, alias: str) -> SimpleNamespace:
        if alias not in MemoryRegistry.aliases:
            raise MlflowException(f"no alias {alias}")
        return SimpleNamespace(version=MemoryRegistry.aliases[alias])

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        if alias == MemoryRegistry.fail_on:
            raise ConnectionError(f"MLflow refused moving {alias}")
        MemoryRegistry.aliases[alias] = version

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        MemoryRegistry.aliases.pop(alias, None)

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        MemoryRegistry.tags.setdefault(version, {})[key] = value


class _InProcessWriter:
    """The alias writer's ``apply`` without its Ray actor: the same compare-and-set, in this process."""

    class apply:  # noqa: N801 - mimics ``actor.apply.remote``
        @staticmethod
        def remote(*args: Any) -> Any:
            return promotion.AliasWriter().apply(*args)


@pytest.fixture()
def registry(monkeypatch: pytest.MonkeyPatch) -> type[MemoryRegistry]:
    monkeypatch.setattr(mlflow.tracking, "MlflowClient", MemoryRegistry)
    monkeypatch.setattr(promotion, "alias_writer", lambda: _InProcessWriter)
    monkeypatch.setattr(promotion, "ray", SimpleNamespace(get=lambda value: value))
    MemoryRegistry.aliases = {"champion": "1", "candidate": "2"}
    MemoryRegistry.tags = {}
    MemoryRegistry.model_tags = {}
    MemoryRegistry.fail_on = None
    return MemoryRegistry


class FollowingRouter:
    """The router's part a rollout relies on: follow the store's weight (a pin wins), count answers, export.

    ``error_versions`` answer every request with an error (a bad candidate).
    """

    def __init__(self, store: LiveStateStore, exporter: Exporter, error_versions: tuple[str, ...] = ()):
        self.store, self.exporter, self.error_versions = store, exporter, error_versions
        self.pin: float | None = None
        self.pinned = Gauge(ServingMetric.weight_pinned.exported, "pin", registry=exporter.registry)
        self.pinned.set(0)
        self.champion_answers = 0
        self.weights_seen: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def set_pin(self, weight: float | None) -> None:
        """What `pulumi config set lockgate:canaryWeight N && pulumi up` does to the real router."""
        self.pin = weight
        self.pinned.set(0 if weight is None else 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            state = self.store.read(MODEL)[0]
            weight = self.pin if self.pin is not None else state.candidate_weight
            if not self.weights_seen or self.weights_seen[-1] != weight:
                self.weights_seen.append(weight)
            # The champion the live state names (or the alias's, none in rollout): 40 answers per tick.
            champion = state.champion or MemoryRegistry.aliases.get("champion", "1")
            to_candidate = round(40 * weight / 100) if state.candidate else 0
            self.exporter.serve(champion, "champion", ok=40 - to_candidate)
            self.champion_answers += 40 - to_candidate
            if to_candidate and state.candidate is not None:
                bad = state.candidate in self.error_versions
                self.exporter.serve(
                    state.candidate,
                    "candidate",
                    ok=0 if bad else to_candidate,
                    errors=to_candidate if bad else 0,
                )
            self._stop.wait(0.2)

    def stop(self) -> None:
        """Stop answering."""
        self._stop.set()
        self._thread.join(5)


@pytest.fixture()
def exporter() -> Iterator[Exporter]:
    started = Exporter(EXPORTER_PORTS[0])
    try:
        yield started
    finally:
        started.stop()


POLICY = RolloutPolicy(
    steps=(50.0, 100.0),
    interval_s=2,
    max_step_wait_s=30,
    analysis=AnalysisSpec(min_requests=20, max_metrics_outage_s=4),
)


def _config(tmp_path: Path, policy: RolloutPolicy = POLICY) -> Any:
    """The repository's pipeline file with a short rollout and a serving file in ``tmp_path``."""
    serving = tmp_path / "serving.yaml"
    serving.write_text(f"model_name: {MODEL}\n")
    config = load_config(ROOT / "pipeline.yaml")
    return config.model_copy(update={"rollout": policy.model_copy(update={"serving_file": str(serving)})})


@pytest.fixture()
def cluster_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], LocalStateStore]:
    """The training RayJob's environment: no dashboard, the live state store and Prometheus named."""
    for var in (EnvVar.dashboard_url, EnvVar.metrics_url, EnvVar.home, EnvVar.ray_auth_token_path):
        monkeypatch.delenv(var.value, raising=False)
    store_dir = tmp_path / "rollout"
    monkeypatch.setenv(EnvVar.live_state_uri.value, str(store_dir))
    monkeypatch.setenv(EnvVar.prometheus_selector.value, json.dumps({"job": "lockgate/lockgate-ray-workers"}))

    def at(prometheus_url: str) -> LocalStateStore:
        monkeypatch.setenv(EnvVar.prometheus_url.value, prometheus_url)
        return LocalStateStore(store_dir)

    return at


@pytest.fixture()
def live(
    tmp_path: Path, cluster_env: Callable[[str], LocalStateStore], exporter: Exporter
) -> Iterator[tuple[LocalStateStore, FollowingRouter]]:
    """A real Prometheus scraping the stand-in router, which follows the cluster env's store; stopped after."""
    with prometheus(tmp_path / "prom", [f"127.0.0.1:{EXPORTER_PORTS[0]}"]) as url:
        store = cluster_env(url)
        router = FollowingRouter(store, exporter)
        try:
            yield store, router
        finally:
            router.stop()


def _deploy(config: Any, tmp_path: Path, version: str, events: list[tuple[str, str, dict]]) -> Any:
    return deploy_and_roll_out(
        config, tmp_path, None, ("candidate",), version, lambda *event: events.append(event)
    )


def _endings(events: list[tuple[str, str, dict]]) -> list[str]:
    return [kind for kind, _, _ in events if kind in ("rollback", "promotion")]


def _assert_ended(store: LiveStateStore) -> None:
    state = store.read(MODEL)[0]
    assert (state.candidate, state.candidate_weight, state.lease) == (None, 0.0, None), (
        f"expected the rollout ended in the store (no candidate, weight 0, no lease), got {state}"
    )


def test_a_first_champion_in_cluster_mode_needs_nothing_deployed(tmp_path, cluster_env, registry) -> None:
    cluster_env("http://127.0.0.1:1")
    result = deploy_and_roll_out(_config(tmp_path), tmp_path, None, ("champion",), "1", lambda *e: None)
    assert result.outcome == RolloutOutcome.deployed, f"expected deployed, got {result}"
    assert "follows the alias" in result.reason, f"expected the reason to say why, got {result.reason!r}"


def test_without_store_or_prometheus_the_stage_still_skips(tmp_path, monkeypatch) -> None:
    for var in (EnvVar.dashboard_url, EnvVar.live_state_uri, EnvVar.prometheus_url):
        monkeypatch.delenv(var.value, raising=False)
    result = deploy_and_roll_out(_config(tmp_path), tmp_path, None, ("candidate",), "2", lambda *e: None)
    assert result.outcome == RolloutOutcome.skipped, f"expected skipped, got {result}"
    assert EnvVar.prometheus_url.value in result.reason, (
        f"expected the reason to name it, got {result.reason}"
    )


def test_cluster_mode_promotes_a_good_candidate_through_store_and_prometheus(
    tmp_path, live, registry
) -> None:
    events: list[tuple[str, str, dict]] = []
    store, router = live
    result = _deploy(_config(tmp_path), tmp_path, "2", events)
    assert result.outcome == RolloutOutcome.promoted, f"expected promoted, got {result}"
    assert {50.0, 100.0} <= set(router.weights_seen), f"expected 50 and 100 served, saw {router.weights_seen}"
    assert registry.aliases == {"champion": "2", "previous": "1"}, (
        f"aliases moved together: {registry.aliases}"
    )
    assert _endings(events) == ["promotion"], f"expected one promotion event, got {_endings(events)}"
    _assert_ended(store)


def test_a_pin_set_mid_rollout_makes_the_controller_yield(tmp_path, live, registry) -> None:
    events: list[tuple[str, str, dict]] = []
    policy = POLICY.model_copy(update={"steps": (10.0, 50.0, 100.0)})
    store, router = live

    def pin_at_first_step(kind: str, message: str, details: dict) -> None:
        events.append((kind, message, details))
        if kind == "rollout_step" and details.get("weight") == 10.0:
            router.set_pin(0.0)  # `pulumi config set lockgate:canaryWeight 0 && pulumi up`

    result = deploy_and_roll_out(
        _config(tmp_path, policy), tmp_path, None, ("candidate",), "2", pin_at_first_step
    )
    answered_before = router.champion_answers
    time.sleep(0.5)
    champion_kept_serving = router.champion_answers > answered_before
    assert result.outcome == RolloutOutcome.pinned, f"expected the controller to yield, got {result}"
    assert router.weights_seen[-1] == 0.0, f"expected the router to obey the pin, saw {router.weights_seen}"
    assert _endings(events) == [], f"expected no promotion or rollback when yielding, got {_endings(events)}"
    assert registry.aliases == {"champion": "1", "candidate": "2"}, f"aliases untouched: {registry.aliases}"
    assert champion_kept_serving, "expected the champion to keep answering"
    assert store.read(MODEL)[0].lease is None, "expected the lease released on yielding"


def test_prometheus_unreachable_mid_step_holds_then_rolls_back(
    tmp_path, cluster_env, registry, exporter
) -> None:
    events: list[tuple[str, str, dict]] = []
    prom = prometheus(tmp_path / "prom", [f"127.0.0.1:{EXPORTER_PORTS[0]}"])
    url = prom.__enter__()
    store = cluster_env(url)
    router = FollowingRouter(store, exporter)
    stopped: list[float] = []

    def stop_prometheus_at_first_step(kind: str, message: str, details: dict) -> None:
        events.append((kind, message, details))
        if kind == "rollout_step" and not stopped:
            prom.__exit__(None, None, None)  # Prometheus goes away while the step holds
            stopped.append(time.monotonic())

    try:
        result = deploy_and_roll_out(
            _config(tmp_path), tmp_path, None, ("candidate",), "2", stop_prometheus_at_first_step
        )
    finally:
        router.stop()
        if not stopped:
            prom.__exit__(None, None, None)
    held_s = time.monotonic() - stopped[0]
    assert result.outcome == RolloutOutcome.rolled_back, f"expected a rollback, got {result}"
    assert "max_metrics_outage_s" in result.reason, f"expected the outage bound named, got {result.reason!r}"
    assert held_s >= POLICY.analysis.max_metrics_outage_s, (
        f"expected it to hold through the bound, {held_s:.1f}s"
    )
    assert _endings(events) == ["rollback"], f"expected one rollback event, got {_endings(events)}"
    assert registry.aliases == {"champion": "1"}, (
        f"champion kept, candidate alias dropped: {registry.aliases}"
    )
    assert registry.tags["2"]["lockgate.rollout"] == "rejected", f"expected v2 rejected: {registry.tags}"
    assert router.weights_seen[-1] == 0.0, f"expected the router back at 0, saw {router.weights_seen}"
    _assert_ended(store)


def test_mlflow_refusing_an_alias_move_mid_promotion_moves_none(tmp_path, live, registry) -> None:
    events: list[tuple[str, str, dict]] = []
    registry.fail_on = "previous"  # champion moves first, then MLflow refuses `previous`
    store, router = live
    result = _deploy(_config(tmp_path), tmp_path, "2", events)
    assert result.outcome == RolloutOutcome.rolled_back, f"expected no promotion, got {result}"
    assert "MLflow refused" in result.reason, f"expected the refusal named, got {result.reason!r}"
    # The champion alias had moved to v2 and was put back: never half-moved.
    assert registry.aliases == {"champion": "1"}, f"expected champion v1 and no previous: {registry.aliases}"
    assert registry.tags["2"]["lockgate.rollout"] == "rejected", f"expected v2 rejected: {registry.tags}"
    assert _endings(events) == ["rollback"], f"expected one rollback event, got {_endings(events)}"
    _assert_ended(store)


def test_a_second_candidate_is_refused_while_the_first_rolls_out(tmp_path, live, registry) -> None:
    events: list[tuple[str, str, dict]] = []
    store, _ = live
    first: list[Any] = []
    runner = threading.Thread(target=lambda: first.append(_deploy(_config(tmp_path), tmp_path, "2", events)))
    runner.start()
    try:
        deadline = time.monotonic() + 20
        while store.read(MODEL)[0].lease is None:
            assert time.monotonic() < deadline, "expected the first rollout to take the lease"
            time.sleep(0.1)
        registry.aliases["candidate"] = "3"  # a second run registers v3 meanwhile
        with pytest.raises(RolloutBusy, match="candidate version 2 .* refusing to start candidate version 3"):
            _deploy(_config(tmp_path), tmp_path, "3", events)
    finally:
        runner.join(60)
    assert first and first[0].outcome == RolloutOutcome.promoted, f"expected the first promoted, got {first}"
    assert registry.aliases["champion"] == "2", f"expected v2 champion, got {registry.aliases}"
    assert _endings(events) == ["promotion"], f"expected one promotion event, got {_endings(events)}"


CONTROLLER = """
import sys
from pathlib import Path
from serving.live import LeasedRolloutController, RolloutTarget, live_effects, rollout_owner
from serving.livestate import LocalStateStore
from serving.spec import AnalysisSpec, RolloutPolicy
store, serving, metrics = LocalStateStore(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
target = RolloutTarget(metrics_url=metrics, local_router=False, applied_bound_s=0.0)
owner = rollout_owner()
policy = RolloutPolicy(steps=(50.0, 100.0), interval_s=600, max_step_wait_s=600,
                       analysis=AnalysisSpec(min_requests=20))
effects = live_effects(target, serving, store, ("1", "2"), lambda *event: None, owner, lease_ttl_s=2.0)
LeasedRolloutController(policy, ("1", "2"), effects, store, "loan-default", owner, lease_ttl_s=2.0).run()
"""


def test_a_controller_killed_mid_step_is_reclaimed_once_by_trigger_checks(
    tmp_path, registry, exporter, monkeypatch
) -> None:
    from lockgate.watch import Watcher

    store = LocalStateStore(tmp_path / "rollout")
    store.update(MODEL, lambda s: s.model_copy(update={"paused": False}))
    router = FollowingRouter(store, exporter)
    config = _config(tmp_path)
    metrics = f"http://127.0.0.1:{EXPORTER_PORTS[0]}/metrics"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Given a controller process holding the rollout at 50%,
    process = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, str(store.directory), config.rollout.serving_file, metrics],
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while store.read(MODEL)[0].candidate_weight != 50.0:
            assert process.poll() is None, f"the controller exited early ({process.returncode})"
            assert time.monotonic() < deadline, "expected the controller to reach 50%"
            time.sleep(0.1)
        # when it is SIGKILLed mid-step (no cleanup runs) and its lease expires,
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        orphan = store.read(MODEL)[0]
        assert orphan.candidate == "2" and orphan.lease is not None, (
            f"expected the rollout orphaned: {orphan}"
        )
        time.sleep(max(0.0, (orphan.lease.expires_at - datetime.now(UTC)).total_seconds()) + 0.2)
        # and two trigger checks (the CronJob's, and a `watch`) run at once,
        events_file = tmp_path / "events.jsonl"
        monkeypatch.setenv(EnvVar.events_file.value, str(events_file))
        champion_none = SimpleNamespace(champion_version=lambda name: None)

        def watcher() -> Watcher:
            return Watcher(
                config,
                tmp_path,
                MODEL,
                str(tmp_path / "capture"),
                str(tmp_path / "state"),
                submit=lambda trigger: "none",
                running_runs=lambda: 1,  # a run in progress: no trigger fires in this test
                registry=champion_none,  # type: ignore[arg-type]
                live_store=store,
            )

        checkers = [watcher(), watcher()]
        results: list[Any] = []
        threads = [threading.Thread(target=lambda w=w: results.append(w.check())) for w in checkers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        time.sleep(0.5)  # the stand-in router reads the reclaimed state
        answered_before = router.champion_answers
        time.sleep(0.5)
    finally:
        router.stop()
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
    # then the rollout is back at weight 0, the candidate rejected, and exactly one rollback event was sent.
    after = store.read(MODEL)[0]
    assert (after.candidate, after.candidate_weight, after.lease) == (None, 0.0, None), after
    assert after.generation > orphan.generation, (
        "expected the reclaim written after what the controller wrote"
    )
    assert after.paused is False, "expected nothing else in the store changed"
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    rollbacks = [e for e in events if e["type"] == "rollback"]
    assert len(rollbacks) == 1, f"expected exactly one rollback event from two checks, got {events}"
    assert rollbacks[0]["details"]["reclaimed"] is True and rollbacks[0]["model_version"] == "2", rollbacks
    assert registry.tags["2"]["lockgate.rollout"] == "rejected", f"expected v2 rejected: {registry.tags}"
    assert registry.aliases == {"champion": "1"}, (
        f"champion kept, candidate alias dropped: {registry.aliases}"
    )
    assert router.weights_seen[-1] == 0.0, f"expected the router back at 0, saw {router.weights_seen}"
    assert router.champion_answers > answered_before, "expected the champion to keep answering"
    assert len(results) == 2 and all(r.decision is not None for r in results), (
        "both checks decided the triggers"
    )
