"""End to end on the real local environment: runs submitted as Ray jobs, the registry asserted after each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lockgate.jobs import submit_pipeline
from pipeline.config import load_config
from pipeline.data import make_loans
from pipeline.events import read_events
from pipeline.register import register_version
from pipeline.run import EXIT_BLOCKED, EXIT_FAILED, EXIT_OK
from tests.conftest import ROOT, write_pipeline

pytestmark = pytest.mark.e2e


def model_state(name: str) -> tuple[list[str], dict[str, str]]:
    client = MlflowClient()
    versions = sorted((v.version for v in client.search_model_versions(f"name = '{name}'")), key=int)
    return versions, {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


@pytest.fixture(scope="module")
def two_runs(local_env, tmp_path_factory):
    """The pipeline twice on one model name: the second run is gated against the first's champion."""
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    config = write_pipeline(tmp_path_factory.mktemp("two-runs"), {"registry": {"model_name": name}})
    outcomes = [submit_pipeline(local_env, config, stream=lambda _: None) for _ in range(2)]
    return name, config, outcomes


def test_two_runs_register_champion_then_candidate_with_lineage(two_runs) -> None:
    name, config, outcomes = two_runs
    assert [o.exit_code for o in outcomes] == [EXIT_OK, EXIT_OK], [o.message for o in outcomes]
    versions, aliases = model_state(name)
    assert versions == ["1", "2"], versions
    assert aliases == {"champion": "1", "candidate": "2"}, aliases
    client = MlflowClient()
    second = client.get_model_version(name, "2")
    for tag in ("git_commit", "data_fingerprint", "config_hash", "pipeline_run_id", "submission_id"):
        assert second.tags.get(f"lockgate.{tag}"), f"lineage tag lockgate.{tag} is set"
    assert second.tags["lockgate.pipeline_run_id"] == outcomes[1].run_id
    assert second.tags["lockgate.gate.regression"] == "passed", "v2 was gated against the champion"
    gates = json.loads(second.tags["lockgate.gates"])
    regression = next(g for g in gates if g["gate"] == "regression")
    assert regression["details"]["champion_version"] == "1"
    assert (
        regression["details"]["ci_low"] <= regression["details"]["delta"] <= regression["details"]["ci_high"]
    )
    assert client.get_model_version(name, "1").tags["lockgate.gate.regression"] == "skipped"
    run = client.get_run(outcomes[1].run_id)
    for stage in ("prepare", "train", "package", "evaluate", "gate", "register"):
        assert f"duration_s.{stage}" in run.data.metrics, f"stage {stage} has its duration logged"
    assert run.data.metrics["test.auc"] > 0.7
    assert len(client.get_metric_history(run.info.run_id, "train.val_auc")) == 3, "one point per epoch"
    assert run.inputs.dataset_inputs, "the data set is logged as the run's input"
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert (
        model.metadata.signature is not None and model.metadata.get_input_schema().input_names()[0] == "age"
    )
    requirements = mlflow.artifacts.download_artifacts(f"models:/{name}/2") + "/requirements.txt"
    assert "torch==2.13.0" in open(requirements).read(), "requirements are pinned"


def test_worse_model_is_blocked_and_champion_stays(two_runs, local_env, tmp_path) -> None:
    """Submitted with plain `ray job submit`, as the README shows."""
    name, _, _ = two_runs
    worse = write_pipeline(
        tmp_path,
        {
            "registry": {"model_name": name},
            "model": {"features": ["age", "region", "product"]},  # drops the informative columns
            "gates": {"thresholds": {"mode": "dry_run"}},
        },
    )
    env = {**os.environ, **local_env.client_env(include_secrets=False)}
    env.pop("MLFLOW_TRACKING_PASSWORD", None)
    # The README's command, from the repository root: the pipeline package ships as a module.
    runtime_env = json.dumps({"py_modules": ["pipeline"], "excludes": [".venv", ".lockgate", ".git"]})
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    submitted = subprocess.run(
        [
            ray,
            "job",
            "submit",
            "--working-dir",
            str(tmp_path),
            "--runtime-env-json",
            runtime_env,
            "--",
            "python",
            "-m",
            "pipeline.run",
            "--config",
            "pipeline.yaml",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert submitted.returncode != 0, "a blocked candidate fails the job"
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("loan-default").experiment_id],
        filter_string=f"tags.`lockgate.config_hash` = '{load_config(worse).config_hash()}'",
    )
    assert [r.data.tags["lockgate.outcome"] for r in runs] == ["blocked"], "one run, and the gate blocked it"
    assert runs[0].data.tags["lockgate.gate.regression"] == "blocked"
    versions, aliases = model_state(name)
    assert versions == ["1", "2"] and aliases == {"champion": "1", "candidate": "2"}, (
        "nothing registered or moved"
    )
    events = read_events(tmp_path / "events.jsonl")
    blocked = [e for e in events if e.type == "gate_blocked"]
    assert len(blocked) == 1 and "regression" in blocked[0].message


def test_bad_data_is_refused_with_its_report(local_env, tmp_path, webhook) -> None:
    name = f"bad-{uuid.uuid4().hex[:6]}"
    config = write_pipeline(
        tmp_path,
        {"registry": {"model_name": name}, "events": {"webhooks": [{"url": webhook.url}]}},
        frame=make_loans(3_000, seed=4, bad_fraction=0.02),
    )
    outcome = submit_pipeline(local_env, config, stream=lambda _: None)
    assert outcome.exit_code == EXIT_FAILED and outcome.outcome == "failed"
    run = MlflowClient().get_run(outcome.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["lockgate.failed_stage"] == "prepare"
    assert "credit_score: missing value" in run.data.tags["lockgate.error"]
    report = mlflow.artifacts.load_dict(f"runs:/{outcome.run_id}/data_validation.json")
    assert {p["column"] for p in report["problems"]} == {"credit_score", "age", "region"}, report
    assert len(webhook.received) == 1, "exactly one notification for one failure"
    assert webhook.received[0]["run_id"] == outcome.run_id and webhook.received[0]["stage"] == "prepare"
    assert MlflowClient().search_registered_models(f"name = '{name}'") == [], "nothing registered"


def test_worker_failure_resumes_from_checkpoint(local_env, tmp_path) -> None:
    name = f"fault-{uuid.uuid4().hex[:6]}"
    config = write_pipeline(
        tmp_path,
        {"registry": {"model_name": name}, "training": {"inject_failure_at_epoch": 1, "max_failures": 1}},
    )
    outcome = submit_pipeline(local_env, config, stream=lambda _: None)
    assert outcome.exit_code == EXIT_OK, outcome.message
    versions, aliases = model_state(name)
    assert versions == ["1"] and aliases == {"champion": "1"}, "exactly one version registered"
    metrics = MlflowClient().get_run(outcome.run_id).data.metrics
    assert metrics["train.resumed_from_epoch_final"] == 1, "training resumed from the epoch-1 checkpoint"


def test_invalid_file_and_missing_services_give_clear_errors(tmp_path) -> None:
    bad = tmp_path / "pipeline.yaml"
    bad.write_text("name: Bad Name\nregistry: {model_name: x}\n")
    cli = [sys.executable, "-m", "lockgate"]
    result = subprocess.run([*cli, "validate", "--config", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    for path in ("name:", "data:", "schema:"):
        assert path in result.stderr, result.stderr
    good = write_pipeline(tmp_path / "ok", {})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    direct = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "--config", str(good)],
        capture_output=True,
        text=True,
        env={**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
        timeout=120,
    )
    assert direct.returncode == EXIT_FAILED and "run `lockgate up`" in direct.stderr, direct.stderr
    down = subprocess.run(
        [*cli, "run", "--config", str(good), "--state-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert down.returncode == 1 and "run `lockgate up`" in down.stderr, down.stderr
    assert EXIT_BLOCKED == 3


def test_registration_failure_leaves_no_version_and_no_alias(two_runs) -> None:
    """An error after the version exists (here: setting the alias) deletes it again: all or nothing."""
    name, _, _ = two_runs
    client = MlflowClient()
    source = client.get_model_version(name, "1").source
    target = f"atomic-{uuid.uuid4().hex[:6]}"

    def alias_fails(name: str, version: str, alias: str) -> str:
        raise RuntimeError("registry went away")

    with pytest.raises(RuntimeError, match="registry went away"):
        register_version(client, target, source, {"lockgate.test": "1"}, "champion", point_alias=alias_fails)
    assert client.search_model_versions(f"name = '{target}'") == [], "the half-made version was deleted"
    assert client.get_registered_model(target).aliases == {}, "no alias was set"
