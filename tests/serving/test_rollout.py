"""Progressive rollout on real Ray Serve: promotion, automatic rollback on errors and latency, CAS aliases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

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
    assert tally(URL, 20) == {champion: 20}
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
