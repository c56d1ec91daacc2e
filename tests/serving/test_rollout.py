"""Progressive rollout on real Ray Serve: promotion, automatic rollback on errors and latency, CAS aliases."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from benchmarks.chaos_bench.forwarder import TcpForwarder
from pipeline.data import make_loans
from pipeline.events import read_events
from tests.conftest import write_pipeline
from tests.serving.conftest import SERVE_PORT, register_version
from tests.serving.test_router import closed_loop, tally

pytestmark = pytest.mark.e2e
PASSED = {"lockgate.gate.thresholds": "passed", "lockgate.gate.regression": "passed"}
POLICY = {
    "steps": [25, 100],
    "interval_s": 3,
    "max_step_wait_s": 60,
    "analysis": {
        "min_requests": 25,
        "max_error_rate_increase": 0.02,
        "max_p99_latency_ratio": 4,
        "p99_latency_floor_s": 0.1,
        "max_prediction_divergence": 0.5,
    },
}


def serving_setup(tmp_path, local_env, **candidate_faults):
    """A model with a champion and a (possibly faulty) candidate, aliased, served, with its pipeline file."""
    name = f"roll-{uuid.uuid4().hex[:6]}"
    champion = register_version(name, 1, tags=PASSED)
    candidate = register_version(name, 2, tags=PASSED, **candidate_faults)
    client = MlflowClient()
    client.set_registered_model_alias(name, "champion", champion.version)
    client.set_registered_model_alias(name, "candidate", candidate.version)
    (tmp_path / "serving.yaml").write_text(
        yaml.safe_dump(
            {
                "model_name": name,
                "serving": {
                    "app_name": "rollout-test",
                    "route_prefix": "/rollout",
                    "http_port": SERVE_PORT,
                    "replica_num_cpus": 0.25,
                },
            }
        )
    )
    config = write_pipeline(
        tmp_path, {"registry": {"model_name": name}, "rollout": POLICY}, frame=make_loans(200, seed=0)
    )
    lockgate("apply", "-f", str(tmp_path / "serving.yaml"), env=local_env)
    return name, champion.version, candidate.version, config


def lockgate(*args: str, env) -> subprocess.CompletedProcess:
    """The CLI, as a user runs it, against the session environment."""
    done = subprocess.run(
        [sys.executable, "-m", "lockgate", *args, "--state-dir", str(env.state_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode in (0, 3), (
        f"lockgate {args}: {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
    )
    return done


def rollout_result(done: subprocess.CompletedProcess) -> dict:
    line = next(x for x in done.stdout.splitlines() if x.startswith("ROLLOUT_RESULT "))
    return json.loads(line.removeprefix("ROLLOUT_RESULT "))


def aliases(name: str) -> dict[str, str]:
    return {a: str(v) for a, v in MlflowClient().get_registered_model(name).aliases.items()}


URL = f"http://127.0.0.1:{SERVE_PORT}/rollout"


def test_good_candidate_is_promoted_then_rollback_restores_previous(local_env, tmp_path) -> None:
    name, champion, candidate, config = serving_setup(tmp_path, local_env)
    with closed_loop(URL, clients=4) as load:
        done = lockgate("rollout", "run", "--config", str(config), env=local_env)
    result = rollout_result(done)
    assert done.returncode == 0 and result["outcome"] == "promoted", result
    assert [s["weight"] for s in result["steps"]] == [25, 100]
    assert aliases(name) == {"champion": candidate, "previous": champion}, (
        "traffic and aliases moved together"
    )
    assert tally(URL, 20) == {candidate: 20}, "the router now serves the promoted version"
    events = [e.type for e in read_events(tmp_path / "events.jsonl")]
    assert events == ["rollout_step", "rollout_step", "promotion"], events
    lockgate("rollout", "rollback", "--config", str(config), env=local_env)
    assert aliases(name) == {"champion": champion}, "rollback restores previous"
    assert MlflowClient().get_model_version(name, candidate).tags["lockgate.rollout"] == "rolled_back"
    # The router follows the champion alias: it serves the restored champion by its next registry poll.
    deadline = time.monotonic() + 15.0
    while (served := tally(URL, 20)) != {champion: 20} and time.monotonic() < deadline:
        time.sleep(0.5)
    assert served == {champion: 20}, f"expected the restored champion within a registry poll, got {served}"
    assert load.failed == 0, load.failures.most_common(3)


@pytest.mark.parametrize("fault", [{"fail_rate": 0.5}, {"delay_s": 0.3}], ids=["errors", "slow"])
def test_bad_candidate_is_rolled_back_automatically(local_env, tmp_path, fault) -> None:
    name, champion, candidate, config = serving_setup(tmp_path, local_env, **fault)
    started = time.monotonic()
    with closed_loop(URL, clients=4) as load:
        done = lockgate("rollout", "run", "--config", str(config), env=local_env)
    took = time.monotonic() - started
    result = rollout_result(done)
    assert done.returncode == 3 and result["outcome"] == "rolled_back", result
    assert took < POLICY["max_step_wait_s"], f"rolled back within the policy's step bound, took {took:.1f}s"
    assert aliases(name) == {"champion": champion}, "champion untouched, candidate out of rollout"
    tags = MlflowClient().get_model_version(name, candidate).tags
    assert tags["lockgate.rollout"] == "rejected" and tags["lockgate.rollout.reason"], tags
    rollbacks = [e for e in read_events(tmp_path / "events.jsonl") if e.type == "rollback"]
    assert len(rollbacks) == 1, f"exactly one alert event, got {len(rollbacks)}"
    assert tally(URL, 50) == {champion: 50}, "after the rollback every answer comes from the champion"
    assert load.responses > 0


CAS_SCRIPT = """
import json, sys, threading, ray
from serving import promotion
ray.init(address=sys.argv[1], logging_level="ERROR")
name, expected, versions = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
results, barrier = {}, threading.Barrier(len(versions))
def run(v):
    barrier.wait()
    try:
        change = promotion.promote(name, v, expected)
        results[v] = {"ok": change.ok, "reason": change.reason}
    except Exception as error:
        results[v] = {"ok": False, "reason": "EXCEPTION " + repr(error)}
threads = [threading.Thread(target=run, args=(v,)) for v in versions]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(results))
"""


def test_concurrent_promoters_compare_and_set(local_env) -> None:
    name = f"cas-{uuid.uuid4().hex[:6]}"
    client = MlflowClient()
    first = register_version(name, 1, tags=PASSED)
    client.set_registered_model_alias(name, "champion", first.version)
    source = client.get_model_version(name, first.version).source
    contenders = [str(mlflow.register_model(source, name, tags=PASSED).version) for _ in range(20)]
    blocked = str(mlflow.register_model(source, name, tags={"lockgate.gate.regression": "blocked"}).version)
    env = {**os.environ, **local_env.client_env()}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CAS_SCRIPT,
            f"127.0.0.1:{local_env.ports.ray_gcs}",
            name,
            first.version,
            json.dumps([blocked, *contenders]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert not [v for v, r in results.items() if "EXCEPTION" in r["reason"]], results
    winners = [v for v, r in results.items() if r["ok"]]
    assert len(winners) == 1 and winners[0] in contenders, f"exactly one promotion wins: {winners}"
    assert aliases(name)["champion"] == winners[0] and aliases(name)["previous"] == first.version
    assert not results[blocked]["ok"], "a version a gate blocked is never made champion"


OUTAGE_SCRIPT = """
import json, sys
from dataclasses import replace
from pathlib import Path
import ray
from contracts.settings import ServingTarget
from pipeline.config import load_config
from serving.live import rollout_controller
gcs, config_path, metrics_url, dashboard_url, home, token, champion, candidate = sys.argv[1:]
ray.init(address=gcs, logging_level="ERROR")
config = load_config(Path(config_path))
target = ServingTarget(dashboard_url, metrics_url, Path(home), Path(token))
def emit(kind, message, details):
    print("EVENT " + json.dumps({"kind": kind, "message": message}), flush=True)
serving_file = Path(config_path).parent / config.rollout.serving_file
controller = rollout_controller(config.rollout, target, serving_file, (champion, candidate), emit)
controller.effects = replace(
    controller.effects, progress=lambda p: print("PROGRESS " + json.dumps(p.to_dict()), flush=True)
)
result = controller.run()
print("RESULT " + json.dumps({"outcome": result.outcome, "reason": result.reason,
                              "steps": [s["weight"] for s in result.steps]}), flush=True)
"""
OUTAGE_S = 15.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_15s_metrics_outage_mid_step_holds_the_step_and_a_good_candidate_is_still_promoted(
    local_env, tmp_path
) -> None:
    # Given a good candidate whose controller reads Ray's metrics through a forwarder we can take away,
    name, champion, candidate, config = serving_setup(tmp_path, local_env)
    metrics_port = int(local_env.metrics_url.split(":")[-1].split("/")[0])
    forwarder = TcpForwarder(free_port(), metrics_port)
    forwarder.start()
    lines: queue.Queue[tuple[float, str]] = queue.Queue()
    seen: list[tuple[float, str]] = []
    command = [
        sys.executable,
        "-c",
        OUTAGE_SCRIPT,
        f"127.0.0.1:{local_env.ports.ray_gcs}",
        str(config),
        f"http://127.0.0.1:{forwarder.listen_port}/metrics",
        local_env.dashboard_url,
        str(local_env.state_dir),
        str(local_env.ray_token_path),
        champion,
        candidate,
    ]
    env = {**os.environ, **local_env.client_env()}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(
        target=lambda: [lines.put((time.monotonic(), line.rstrip())) for line in stdout], daemon=True
    ).start()
    outage: tuple[float, float] | None = None
    try:
        with closed_loop(URL, clients=4) as load:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    seen.append(lines.get(timeout=1))
                except queue.Empty:
                    assert process.poll() is None, f"the rollout ended without a result: {seen}"
                    continue
                if seen[-1][1].startswith("RESULT "):
                    break
                if outage is None and seen[-1][1].startswith("EVENT "):
                    # when the endpoint goes away 1 s into the first step (25%) for 15 s,
                    time.sleep(1)
                    began = time.monotonic()
                    forwarder.stop()
                    time.sleep(OUTAGE_S)
                    forwarder.start()
                    outage = (began, time.monotonic())
            else:
                pytest.fail(f"no rollout result within 300 s: {seen}")
    finally:
        process.kill()
        process.wait(timeout=30)
        forwarder.stop()
    # then the candidate is still promoted, after both steps and one ending event,
    result = json.loads(seen[-1][1].removeprefix("RESULT "))
    assert result["outcome"] == "promoted" and result["steps"] == [25, 100], result
    events = [
        json.loads(line.removeprefix("EVENT "))["kind"] for _, line in seen if line.startswith("EVENT ")
    ]
    assert events == ["rollout_step", "rollout_step", "promotion"], events
    assert aliases(name) == {"champion": candidate, "previous": champion}, (
        "traffic and aliases moved together"
    )
    # nothing moved while the metrics were gone, and the step said it was holding for want of them,
    assert outage is not None
    during = [line for at, line in seen if outage[0] + 0.5 < at < outage[1] and line.startswith("EVENT ")]
    assert during == [], f"no step may start while the analysis is impossible: {during}"
    progress = [
        json.loads(line.removeprefix("PROGRESS ")) for _, line in seen if line.startswith("PROGRESS ")
    ]
    holding = [p for p in progress if p["status"] == "outage"]
    assert holding and {p["weight"] for p in holding} == {25}, holding
    assert max(p["metrics_outage_s"] for p in holding) >= 5, "the outage is reported while it lasts"
    assert load.failed == 0, load.failures.most_common(3)
