"""The shipped examples as a team runs them: its own trainer, any task, as Ray jobs on the real local environment."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from lockgate.jobs import submit_pipeline
from pipeline.run import EXIT_BLOCKED, EXIT_FAILED, EXIT_OK
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def example(name: str, directory: Path, **override: object) -> tuple[Path, str]:
    """A copy of ``examples/<name>`` (pipeline file, trainers, data) under a fresh model name."""
    target = directory / name
    if not target.exists():
        shutil.copytree(ROOT / "examples" / name, target, ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((ROOT / "examples" / name / "pipeline.yaml").read_text())
    model = f"{name}-{uuid.uuid4().hex[:6]}"
    raw["registry"]["model_name"] = model
    raw["events"] = {"log_file": "events.jsonl"}
    for key, value in override.items():
        raw[key] = {**raw.get(key, {}), **value}  # type: ignore[dict-item]
    path = target / f"{model}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, model


def versions_of(model: str) -> tuple[list[str], dict[str, str]]:
    client = MlflowClient()
    found = client.search_model_versions(f"name = '{model}'")
    aliases = client.get_registered_model(model).aliases if found else {}
    return sorted((v.version for v in found), key=int), {a: str(v) for a, v in aliases.items()}


def test_a_regression_trainer_registers_then_is_gated_and_a_planted_regression_is_blocked(
    local_env, tmp_path
) -> None:
    # Given the diabetes example (scikit-learn regression, the team's own trainer),
    config, model = example("diabetes", tmp_path)
    # when it runs twice with the same code and then once with a crippled model (one boosting round),
    first = submit_pipeline(local_env, config, stream=lambda _: None)
    second = submit_pipeline(local_env, config, stream=lambda _: None)
    raw = yaml.safe_load(config.read_text())
    raw["training"]["params"] = {"learning_rate": 0.01, "max_iter": 1}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    crippled = submit_pipeline(local_env, config, stream=lambda _: None)
    # then the first is champion, the second passed its gates against it, the crippled one registered nothing.
    assert (first.exit_code, second.exit_code) == (EXIT_OK, EXIT_OK), (first.message, second.message)
    assert crippled.exit_code == EXIT_BLOCKED and crippled.outcome == "blocked", crippled
    versions, aliases = versions_of(model)
    assert versions == ["1", "2"] and aliases == {"champion": "1", "candidate": "2"}, (versions, aliases)
    client = MlflowClient()
    run = client.get_run(second.run_id)
    assert run.data.params["train.trainer"] == "trainers.progression:train", "the trainer is on the run"
    assert run.data.params["param.max_iter"] == "200", "the team's hyperparameters are logged"
    assert {"test.rmse", "test.mae", "test.r2"} <= set(run.data.metrics), (
        f"metrics: {sorted(run.data.metrics)}"
    )
    gates = json.loads(client.get_model_version(model, "2").tags["lockgate.gates"])
    regression = next(g for g in gates if g["gate"] == "regression")
    assert regression["details"]["metric"] == "rmse" and regression["status"] == "passed", regression
    blocked = json.loads(client.get_run(crippled.run_id).data.tags["lockgate.gates"])
    assert next(g for g in blocked if g["gate"] == "regression")["status"] == "blocked", blocked


def test_a_multiclass_trainer_registers_with_class_probabilities(local_env, tmp_path) -> None:
    # Given the wine example (three cultivars, gradient boosting with predict_proba),
    config, model = example("wine", tmp_path)
    # when it runs,
    outcome = submit_pipeline(local_env, config, stream=lambda _: None)
    # then a champion is registered with the task's metrics, and the model knows its class labels.
    assert outcome.exit_code == EXIT_OK, outcome.message
    versions, aliases = versions_of(model)
    assert aliases == {"champion": "1"}, aliases
    metrics = MlflowClient().get_run(outcome.run_id).data.metrics
    assert metrics["test.accuracy"] >= 0.8 and "test.macro_f1" in metrics and "test.log_loss" in metrics, (
        metrics
    )


def test_a_trainer_that_does_not_import_fails_before_training_and_registers_nothing(
    local_env, tmp_path
) -> None:
    # Given a pipeline naming a trainer module that is not there,
    config, model = example("diabetes", tmp_path, training={"trainer": "trainers.nowhere:train"})
    # when it runs,
    outcome = submit_pipeline(local_env, config, stream=lambda _: None)
    # then the run fails in its train stage, naming the field and the module, and nothing is registered.
    assert outcome.exit_code == EXIT_FAILED, outcome
    tags = MlflowClient().get_run(outcome.run_id).data.tags
    assert tags["lockgate.failed_stage"] == "train", tags
    assert "training.trainer: cannot import 'trainers.nowhere'" in tags["lockgate.error"], tags[
        "lockgate.error"
    ]
    assert versions_of(model) == ([], {}), "nothing registered, no alias moved"
