"""The trigger checks as the stack's CronJob runs them: state and capture on S3, runs started as RayJobs.

Real here: the MLflow server (the local environment's), a registered model and its reference profile,
pyarrow's S3 client against an S3 API on 127.0.0.1 (moto's server), the kubernetes client library, and
``lockgate triggers check`` run as a fresh process each time, as each CronJob pod is. The stand-in: the
Kubernetes API server (there is no cluster on these machines), a small HTTP server that stores RayJobs and
answers list calls by label selector.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlparse

import mlflow
import pandas as pd
import pytest
import yaml

from lockgate.exporter import Exporter
from lockgate.jobs import submit_pipeline
from lockgate.kuberay import ROLE_LABEL, TRAINING_ROLE
from pipeline.config import load_config
from pipeline.data import make_loans
from pipeline.events import read_events
from pipeline.run import EXIT_OK
from pipeline.store import StateStore
from serving.capture import CaptureBuffer
from tests.conftest import PORT_OFFSET, write_pipeline
from tests.e2e.mlflow_users import grant_experiment, sign_in, stack_mlflow_user
from tests.infra.conftest import crd_errors

pytestmark = pytest.mark.e2e
WINDOW = 400
NAMESPACE = "lockgate"
TOKEN = "test-token-" + uuid.uuid4().hex[:8]
BUCKET = "lockgate-checks"


class KubeApi:
    """RayJobs by namespace: create, list by label selector; records the bearer token of each call."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tokens: set[str] = set()
        self.refuse_create = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _path_ok(self) -> bool:
                return urlparse(self.path).path == f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs"

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                api.tokens.add(self.headers.get("Authorization", ""))
                job = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self._path_ok():
                    return self._send(404, {"kind": "Status", "message": "not found"})
                if api.refuse_create:
                    return self._send(403, {"kind": "Status", "reason": "Forbidden", "message": "forbidden"})
                api.jobs[job["metadata"]["name"]] = job
                return self._send(201, job)

            def do_GET(self) -> None:  # noqa: N802
                api.tokens.add(self.headers.get("Authorization", ""))
                if not self._path_ok():
                    return self._send(404, {"kind": "Status", "message": "not found"})
                query = parse_qs(urlparse(self.path).query).get("labelSelector", [""])[0]
                wanted = dict(pair.split("=", 1) for pair in query.split(",") if pair)
                items = [
                    job
                    for job in api.jobs.values()
                    if wanted.items() <= job["metadata"].get("labels", {}).items()
                ]
                return self._send(200, {"apiVersion": "ray.io/v1", "kind": "RayJobList", "items": items})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def kube_api() -> Iterator[KubeApi]:
    api = KubeApi()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture()
def s3() -> Iterator[dict[str, str]]:
    """An S3 API on 127.0.0.1 with one bucket; the environment a pod of the stack would have for it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "lockgate-test",
        "AWS_SECRET_ACCESS_KEY": "lockgate-test-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"]).create_bucket(Bucket=BUCKET)
        yield env
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def capture(uri: str, model: Any, name: str, version: str, frame: pd.DataFrame, features: list[str]) -> None:
    """Answer ``frame`` with the model and capture it as the router does (same writer, same schema)."""
    buffer = CaptureBuffer(uri, batch_rows=10_000, flush_s=3600)
    rows = frame[features].to_dict("records")
    answers = model.predict(pd.DataFrame(rows)).to_dict("records")
    for row, answer in zip(rows, answers, strict=True):
        buffer.add([row], [answer], request_id=uuid.uuid4().hex, model=name, version=version, role="champion")
    assert buffer.flush() is not None


def test_trigger_checks_in_a_cluster_start_one_rayjob_per_drift_event(
    local_env, tmp_path, s3, kube_api
) -> None:
    name = f"cluster-{uuid.uuid4().hex[:6]}"
    (tmp_path / "serving.yaml").write_text(
        yaml.safe_dump({"model_name": name, "capture": {"sample_percent": 10}})
    )
    config = write_pipeline(
        tmp_path,
        {
            "registry": {"model_name": name},
            "triggers": {
                "drift": {"window_rows": WINDOW, "confirm": {"breaches": 1, "windows": 1}},
                "guardrails": {"cooldown_s": 3600, "max_concurrent_runs": 1},
            },
        },
    )
    first = submit_pipeline(local_env, config, stream=lambda _: None)
    assert (first.exit_code, first.outcome) == (EXIT_OK, "registered"), first.message
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    features = list(load_config(config).features)

    template, kubeconfig = _rayjob_template(tmp_path), _kubeconfig(tmp_path, kube_api.url)
    capture_uri, state_uri = f"s3://{BUCKET}/capture", f"s3://{BUCKET}/lockgate-state"
    events_uri = f"s3://{BUCKET}/events"
    # The stack's serving file (mounted from a ConfigMap in the pod) stands in for the pipeline's own.
    stack_serving = tmp_path / "stack-serving.yaml"
    (tmp_path / "serving.yaml").rename(stack_serving)
    pod_env = {
        **os.environ,
        **local_env.client_env(include_secrets=True),
        **s3,
        "KUBECONFIG": str(kubeconfig),
        "LOCKGATE_CAPTURE_URI": capture_uri,
        "LOCKGATE_STATE_URI": state_uri,
        "LOCKGATE_JOB_TEMPLATE": str(template),
        "LOCKGATE_NAMESPACE": NAMESPACE,
        "LOCKGATE_SERVING_FILE": str(stack_serving),
        "LOCKGATE_EVENTS_URI": events_uri,
    }

    def check(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lockgate", "triggers", "check", "-c", str(config)],
            env={**pod_env, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )

    def check_ok() -> dict[str, Any]:
        result = check()
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout)

    stable = make_loans(WINDOW, seed=11)
    capture(capture_uri, model, name, "1", stable, features)
    summary = check_ok()
    assert summary["drifted"] is False and summary["window_rows"] == WINDOW, summary
    assert summary["submission_id"] is None and kube_api.jobs == {}, "stable traffic starts nothing"
    history = StateStore(state_uri).child("watch", name)
    judged = history.read("cursor.json")["drift_files"]["seen"]
    assert len(judged) == 1, f"the next pod judges only files not judged yet: {judged}"

    shifted = make_loans(WINDOW, seed=12, shift=1.0)
    capture(capture_uri, model, name, "1", shifted, features)
    summary = check_ok()
    assert summary["drifted"] is True and summary["reason"] == "drift", summary
    assert list(kube_api.jobs) == [summary["submission_id"]], "one RayJob, named by the submission id"
    job = kube_api.jobs[summary["submission_id"]]
    assert crd_errors(job) == [], "the created RayJob is valid against KubeRay's CRD"
    assert job["metadata"]["labels"][ROLE_LABEL] == TRAINING_ROLE
    env_vars = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    trigger = json.loads(env_vars["LOCKGATE_TRIGGER"])
    assert trigger["reason"] == "drift" and trigger["event_id"], "the run records what started it"
    assert env_vars["LOCKGATE_SUBMISSION_ID"] == summary["submission_id"]
    assert kube_api.tokens == {f"Bearer {TOKEN}"}, "every call carries the pod's credentials"

    # The run is in flight; the shift goes on. A new pod remembers the event (state in S3): no second run.
    job["status"] = {"jobDeploymentStatus": "Running"}
    capture(capture_uri, model, name, "1", make_loans(WINDOW, seed=13, shift=1.0), features)
    summary = check_ok()
    assert summary["drifted"] is True and summary["submission_id"] is None, summary
    assert len(kube_api.jobs) == 1, "one event, one run"
    assert len(history.rows("drift.jsonl")) == 3, "each judged window is kept for the report"
    events = read_events(tmp_path / "events.jsonl")
    kinds = [e.type for e in events if e.model_name == name]
    assert kinds.count("drift_detected") == 1 and kinds.count("trigger_fired") == 1, kinds
    # Each pod's events also land in the shared event store, where the cluster's exporter reads them.
    stored = [e for e in read_events(events_uri) if e.model_name == name]
    assert [e.type for e in stored] == ["drift_detected", "trigger_fired"], (
        "what the check pods emitted, in order"
    )
    exporter = Exporter(load_config(config).name, name, events_uri)
    exporter.read_history(history)
    metrics = exporter.snapshot()
    assert metrics[f'lockgate_drift_detected{{model="{name}"}}'] == 1, (
        "the checks' verdict, from their history"
    )
    assert metrics['lockgate_last_event_timestamp_seconds{type="trigger_fired"}'] > 0

    # Refused by the API: a clear error, nothing recorded, so the next check tries again.
    kube_api.refuse_create = True
    job["status"] = {"jobDeploymentStatus": "Complete"}
    cursor = history.read("cursor.json")
    refused = check(LOCKGATE_STATE_URI=f"s3://{BUCKET}/other-state")
    assert refused.returncode == 1 and "creating RayJobs in namespace lockgate: 403" in refused.stderr, (
        refused.stderr[-2000:]
    )
    assert history.read("cursor.json") == cursor
    untouched = StateStore(f"s3://{BUCKET}/other-state").child("watch", name)
    assert untouched.read("trigger_state.json") is None and untouched.rows("drift.jsonl") == []
    assert len([e for e in read_events(tmp_path / "events.jsonl") if e.model_name == name]) == len(kinds)

    missing = check(LOCKGATE_JOB_TEMPLATE=str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr, missing.stderr[-2000:]


# Apart from the session's ports and tests/serving/test_metrics_prometheus.py's (17860..17862), shifted alike.
CLUSTER_PROMETHEUS_PORT = 17863 + PORT_OFFSET
CLUSTER_ROLLOUT = {
    "enabled": True,
    "steps": [50, 100],
    "interval_s": 4,
    "max_step_wait_s": 120,
    "analysis": {"min_requests": 30, "max_metrics_outage_s": 60, "max_error_rate_increase": 0.05},
}


ROLL_OUT_IN_A_DRIVER = """
import json, sys
from pathlib import Path
from lockgate.localenv import LocalEnvironment, require_healthy
from lockgate.runtime import connect_ray
from pipeline.config import load_config
from pipeline.deploy import deploy_and_roll_out

state_dir, config, base, version = sys.argv[1:5]
env = require_healthy(LocalEnvironment(Path(state_dir)))
connect_ray(env)  # the alias writer is a Ray actor, as in the RayJob's driver
events = []
result = deploy_and_roll_out(
    load_config(Path(config)), Path(base), None, ("candidate",), version, lambda *e: events.append(e)
)
print(json.dumps({"outcome": result.outcome.value, "reason": result.reason, "events": events}, default=str))
"""


def test_a_drift_triggered_run_rolls_out_in_cluster_mode(
    local_env, tmp_path, s3, kube_api, monkeypatch
) -> None:
    """Cluster mode end to end: a drift-triggered run registers a candidate and its rollout ends promoted;
    a bad candidate then ends at weight 0 with one rollback event.

    Real: MLflow, Ray (training and Serve), the router reading the live state from S3 (moto's server), a real
    ``prometheus`` scraping the router, the trigger check as a fresh process creating the RayJob (stand-in API),
    and the alias writer. The runs and the rollout sign in to MLflow as the stack's training user and the check as
    its trigger-checks user (infra's users.json entries, no admin). The triggered run is not a KubeRay RayJob
    (there is no cluster): it is the RayJob's entrypoint (``python -m pipeline.run --config …``) submitted as a
    Ray job with the env vars the created RayJob carries (its ``runtimeEnvYAML``) plus the pod env infra gives the
    training RayJob (``LOCKGATE_LIVE_STATE_URI``, ``LOCKGATE_PROMETHEUS_URL``/``_SELECTOR``, the store's AWS
    variables) and no ``LOCKGATE_DASHBOARD_URL`` (blanked: the session's Ray head has one). The router is deployed
    once, as the RayService's ``serveConfigV2`` would be (the shape only, the champion alias followed), with the
    store's variables in its runtime env where a pod has them from its identity. The bad candidate is registered
    directly (a model failing half its answers; no training makes one) and rolled out by the deploy stage in this
    process with the same cluster env.
    """
    from contracts.vocabulary import ServingMetric
    from lockgate.jobs import job_client, job_runtime_env, wait_pipeline
    from lockgate.traffic import LoadClient
    from serving.deploy import deploy_config, wait_running
    from serving.desired import following_router_config, load_serving_file, registry_aliases
    from serving.livestate import S3StateStore
    from serving.metrics import PrometheusVersionStats
    from serving.render import render_serve_config
    from tests.conftest import SESSION_SERVE_PORT, remove_serve_applications
    from tests.serving.conftest import register_version
    from tests.serving.test_metrics_prometheus import prometheus
    from tests.serving.test_router import ROW

    monkeypatch.setattr("tests.serving.test_metrics_prometheus.PROMETHEUS_PORT", CLUSTER_PROMETHEUS_PORT)
    name = f"cmode-{uuid.uuid4().hex[:6]}"
    app_name = "lockgate-cluster-mode"
    serving_yaml = {
        "model_name": name,
        "serving": {"app_name": app_name, "http_port": SESSION_SERVE_PORT, "replica_num_cpus": 0.25},
        "capture": {"sample_percent": 0},
    }
    (tmp_path / "serving.yaml").write_text(yaml.safe_dump(serving_yaml))
    config = write_pipeline(
        tmp_path,
        {
            # An experiment of its own: the training user is no admin and writes only to what it created.
            "registry": {"model_name": name, "experiment": name},
            "rollout": CLUSTER_ROLLOUT,
            "triggers": {
                "drift": {"window_rows": WINDOW, "confirm": {"breaches": 1, "windows": 1}},
                "guardrails": {"cooldown_s": 3600, "max_concurrent_runs": 1},
            },
        },
    )
    live_uri, capture_uri = f"s3://{BUCKET}/rollout", f"s3://{BUCKET}/capture"
    state_uri, events_uri = f"s3://{BUCKET}/lockgate-state", f"s3://{BUCKET}/events"
    store = S3StateStore(live_uri)
    target = local_env.metrics_url.removeprefix("http://").removesuffix("/metrics")
    selector = json.dumps({"application": app_name})
    # The stack's MLflow users, none an admin: the training RayJob's (MANAGE on the served model; the rollout
    # runs as it) and the trigger checks' (MANAGE on it, to reclaim an orphaned rollout).
    trainer = stack_mlflow_user(local_env, "training", name)
    checker = stack_mlflow_user(local_env, "triggers", name)
    with prometheus(tmp_path / "prometheus", [target]) as prometheus_url:
        # The training RayJob pod's environment in cluster mode (infra/components/ray_platform.py).
        cluster_env = {
            **s3,
            "LOCKGATE_DASHBOARD_URL": "",
            "LOCKGATE_LIVE_STATE_URI": live_uri,
            "LOCKGATE_PROMETHEUS_URL": prometheus_url,
            "LOCKGATE_PROMETHEUS_SELECTOR": selector,
            "LOCKGATE_EVENTS_URI": events_uri,
            **trainer,
        }
        client = job_client(local_env)

        def run_as_rayjob(env_vars: dict[str, str], key: str) -> Any:
            submission_id = f"cluster-mode-{name}-{key}"
            runtime_env = job_runtime_env(config, submission_id)
            runtime_env["env_vars"].update({**env_vars, **cluster_env})
            client.submit_job(
                entrypoint=f"python -m pipeline.run --config {config.name}",
                submission_id=submission_id,
                runtime_env=runtime_env,
            )
            return wait_pipeline(client, submission_id, load_config(config), lambda _: None, 1200, local_env)

        # Given a first champion registered by a run in cluster mode: nothing deployed by the run,
        first = run_as_rayjob({}, "first")
        assert (first.exit_code, first.outcome) == (EXIT_OK, "registered"), first.message
        # The stack's MLflow lets every user read every experiment (infra: default_permission READ); the local
        # server lets none (NO_PERMISSIONS): the checks' user is given that READ on the run's experiment.
        experiment = mlflow.MlflowClient().get_experiment_by_name(name)
        assert experiment is not None, f"expected the run to have created experiment {name}"
        grant_experiment(local_env, experiment.experiment_id, checker["MLFLOW_TRACKING_USERNAME"], "READ")
        # and the router as the RayService serves it (shape only), following the live state in S3.
        rendered = render_serve_config(
            load_serving_file(tmp_path / "serving.yaml").serving,
            following_router_config(load_serving_file(tmp_path / "serving.yaml"), capture_uri),
        )
        rendered["applications"][0]["runtime_env"].setdefault("env_vars", {}).update(
            {**s3, "LOCKGATE_LIVE_STATE_URI": live_uri}
        )
        headers = local_env.ray_auth_header()
        deploy_config(local_env.dashboard_url, headers, rendered)
        try:
            wait_running(local_env.dashboard_url, headers, app_name)
            url = f"http://127.0.0.1:{SESSION_SERVE_PORT}/"
            # When the applicants drift and a trigger check (the CronJob's pod) starts a RayJob,
            model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
            features = list(load_config(config).features)
            capture(capture_uri, model, name, "1", make_loans(WINDOW, seed=12, shift=1.0), features)
            template, kubeconfig = _rayjob_template(tmp_path), _kubeconfig(tmp_path, kube_api.url)
            checked = subprocess.run(
                [sys.executable, "-m", "lockgate", "triggers", "check", "-c", str(config)],
                env={
                    **os.environ,
                    **local_env.client_env(include_secrets=True),
                    **s3,
                    "KUBECONFIG": str(kubeconfig),
                    "LOCKGATE_CAPTURE_URI": capture_uri,
                    "LOCKGATE_STATE_URI": state_uri,
                    "LOCKGATE_JOB_TEMPLATE": str(template),
                    "LOCKGATE_NAMESPACE": NAMESPACE,
                    "LOCKGATE_EVENTS_URI": events_uri,
                    "LOCKGATE_LIVE_STATE_URI": live_uri,
                    **checker,
                },
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert checked.returncode == 0, checked.stderr[-3000:]
            summary = json.loads(checked.stdout)
            assert summary["reason"] == "drift" and summary["submission_id"], summary
            job_env = yaml.safe_load(kube_api.jobs[summary["submission_id"]]["spec"]["runtimeEnvYAML"])[
                "env_vars"
            ]
            # and that job runs while users are served,
            with LoadClient(url, [ROW], clients=4, timeout_s=5) as load:
                triggered = run_as_rayjob(job_env, "drift")
                served_during = load.responses
                failed_during = load.failed
            # then its candidate was rolled out on the live router and promoted, with no failed request.
            assert triggered.exit_code == EXIT_OK, triggered.message
            aliases = registry_aliases(name)
            assert (aliases.get("champion"), aliases.get("previous")) == ("2", "1"), f"promoted: {aliases}"
            assert failed_during == 0 and served_during > 0, (
                f"expected every request answered during the rollout, {failed_during} of {served_during} failed"
            )
            final = store.read(name)[0]
            assert (final.candidate, final.candidate_weight, final.lease) == (None, 0.0, None), final
            stored = [e for e in read_events(events_uri) if e.model_name == name]
            assert [e.type for e in stored].count("promotion") == 1, [e.type for e in stored]
            assert json.loads(job_env["LOCKGATE_TRIGGER"])["reason"] == "drift", (
                "the run is the triggered one"
            )
            # The router reports the pin it obeys (none here) where the controller looks for it.
            gauge = PrometheusVersionStats(prometheus_url, {"application": app_name}).query(
                ServingMetric.weight_pinned.exported
            )
            assert gauge and all(float(g["value"][1]) == 0.0 for g in gauge), (
                f"expected 0 per replica: {gauge}"
            )

            # Given a bad candidate (half its answers fail) registered next,
            tags = {"lockgate.gate.regression": "passed"}
            bad = register_version(name, seed=7, fail_rate=0.5, tags=tags)
            mlflow.MlflowClient().set_registered_model_alias(name, "candidate", bad.version)
            # when the deploy stage rolls it out in cluster mode under load, in a fresh driver process as the
            # RayJob's is (Ray reads its auth mode and node address once per process, at its first use),
            driver_env = {**os.environ, **local_env.client_env(include_secrets=True), **cluster_env}
            driver_env.pop("LOCKGATE_DASHBOARD_URL", None)
            with LoadClient(url, [ROW], clients=4, timeout_s=5):
                driver = subprocess.run(
                    [sys.executable, "-c", ROLL_OUT_IN_A_DRIVER, str(local_env.state_dir), str(config)]
                    + [str(tmp_path), bad.version],
                    env=driver_env,
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
            assert driver.returncode == 0, f"the rollout's driver failed: {driver.stderr[-3000:]}"
            ended = json.loads(driver.stdout.strip().splitlines()[-1])
            result = SimpleNamespace(outcome=ended["outcome"], reason=ended["reason"])
            events = [tuple(event) for event in ended["events"]]
        finally:
            remove_serve_applications(local_env)
    # then it ends at weight 0, tagged rejected, with exactly one rollback event, the champion unmoved.
    assert result.outcome == "rolled_back", f"expected a rollback, got {result}"
    assert [kind for kind, _, _ in events if kind in ("rollback", "promotion")] == ["rollback"], events
    after = registry_aliases(name)
    assert after.get("champion") == "2" and "candidate" not in after, f"champion v2 kept: {after}"
    state = store.read(name)[0]
    assert (state.candidate, state.candidate_weight) == (None, 0.0), f"expected weight 0: {state}"
    tags_after = mlflow.MlflowClient().get_model_version(name, bad.version).tags
    assert tags_after.get("lockgate.rollout") == "rejected", f"expected rejected: {tags_after}"
    # And the user all of that ran as is no admin: a model it holds no grant on refuses its changes.
    from mlflow.exceptions import MlflowException

    other = f"{name}-other"
    mlflow.MlflowClient().create_registered_model(other)
    sign_in(monkeypatch, trainer)
    with pytest.raises(MlflowException) as refused:
        mlflow.MlflowClient().set_registered_model_tag(other, "lockgate.rollout", "rejected")
    assert refused.value.error_code == "PERMISSION_DENIED", f"expected a refusal, got {refused.value}"


def _rayjob_template(directory: Any) -> Any:
    """The stack's training RayJob template (its ``trainingJobManifest``), as the CronJob's pod mounts it."""
    template = directory / "rayjob.yaml"
    template.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "ray.io/v1",
                "kind": "RayJob",
                "metadata": {
                    "generateName": "lockgate-train-",
                    "labels": {"app.kubernetes.io/instance": "lockgate", ROLE_LABEL: TRAINING_ROLE},
                },
                "spec": {"entrypoint": "python -m pipeline.run --config pipeline.yaml"},
            }
        )
    )
    return template


def _kubeconfig(directory: Any, server: str) -> Any:
    """A kubeconfig naming the stand-in API server, with the check pod's bearer token."""
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": server}}],
                "users": [{"name": "checks", "user": {"token": TOKEN}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "checks"}}],
                "current-context": "test",
            }
        )
    )
    return kubeconfig


def test_a_run_in_an_experiment_its_user_did_not_create_fails_naming_the_grant(
    local_env, monkeypatch
) -> None:
    from pipeline.tracking import MlflowTracker

    # Given an experiment a person (the admin) created, and the stack's training user, which is no admin
    name = f"grant-{uuid.uuid4().hex[:6]}"
    experiment_id = mlflow.MlflowClient().create_experiment(name)
    trainer = stack_mlflow_user(local_env, "training", name)
    sign_in(monkeypatch, trainer)
    # When a run starts there as the training user, then it fails naming the user, the experiment and the grant
    user = trainer["MLFLOW_TRACKING_USERNAME"]
    with pytest.raises(PermissionError) as refused:
        MlflowTracker().start_run(name, "refused")
    message = str(refused.value)
    # (the local server's default_permission is NO_PERMISSIONS, so the user cannot read the experiment's id: the
    # grant names how to find it; under a stack's READ it names the id itself)
    assert f"MLflow user {user!r} may not start a run in experiment {name!r}" in message, message
    id_expression = f"mlflow.get_experiment_by_name({name!r}).experiment_id"
    assert f".grant_user_permission({user!r}, 'experiment', {id_expression}, 'EDIT')" in message, message
    assert trainer["MLFLOW_TRACKING_PASSWORD"] not in message, "the password stays out of the error"
    # and with that grant made by the admin (MLflow's permissions API), the same run starts.
    grant_experiment(local_env, experiment_id, user, "EDIT")
    tracker = MlflowTracker()
    assert tracker.start_run(name, "granted"), "expected the run to start once EDIT is granted"
    tracker.end_run("FINISHED")


def test_a_user_who_is_no_admin_finds_no_alias_on_a_model_not_registered_yet(local_env, monkeypatch) -> None:
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import MlflowTracker
    from serving.scoring import registry_version
    from serving.spec import AliasRef

    # Given the stack's router user (READ on a model not registered yet): MLflow answers its alias lookup 403
    name = f"absent-{uuid.uuid4().hex[:6]}"
    sign_in(monkeypatch, stack_mlflow_user(local_env, "serving", name))
    client = mlflow.MlflowClient()
    with pytest.raises(MlflowException) as refused:
        client.get_model_version_by_alias(name, "champion")
    assert refused.value.error_code == "PERMISSION_DENIED", "MLflow's answer changed: re-check alias_version"
    # When the pipeline and the router ask which version the champion alias names, then: none yet
    assert MlflowTracker().alias_version(name, "champion") is None
    assert registry_version(AliasRef(name=name, alias="champion")) is None
