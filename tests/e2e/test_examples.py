"""The shipped examples as a team runs them: its own trainer, any task, as Ray jobs on the real local environment."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from mlflow.tracking import MlflowClient

from lockgate.jobs import submit_pipeline
from lockgate.traffic import TrafficSimulator
from pipeline.events import read_events
from pipeline.run import EXIT_BLOCKED, EXIT_FAILED, EXIT_OK
from tests.conftest import FAST_ROLLOUT, ROOT
from tests.serving.conftest import (
    SERVE_PORT,
)  # Serve's HTTP port is cluster-wide: each example on its own route

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


CRIPPLED = {
    # One boosting round at a tiny rate: a model that learned almost nothing, for the gates to block.
    "diabetes": {"learning_rate": 0.01, "max_iter": 1},
    "wine": {"learning_rate": 0.01, "n_estimators": 1},
}
REGRESSION_METRIC = {"diabetes": "rmse", "wine": "log_loss"}
TASK_METRICS = {"diabetes": {"test.rmse", "test.mae", "test.r2"}, "wine": {"test.accuracy", "test.macro_f1"}}


def served_example(name: str, directory: Path) -> tuple[Path, str, str]:
    """The example under a fresh model name, served on the tests' Serve port on its own route; its URL."""
    config, model = example(name, directory, rollout={**FAST_ROLLOUT, "analysis": {"min_requests": 40}})
    serving = yaml.safe_load((config.parent / "serving.yaml").read_text())
    serving["model_name"] = model
    serving["serving"].update(app_name=f"example-{name}", route_prefix=f"/{name}", http_port=SERVE_PORT)
    (config.parent / "serving.yaml").write_text(yaml.safe_dump(serving, sort_keys=False))
    return config, model, f"http://127.0.0.1:{SERVE_PORT}/{name}"


@pytest.mark.parametrize("name", ["diabetes", "wine"])
def test_an_example_registers_rolls_out_to_promotion_and_a_planted_regression_is_blocked(
    name: str, local_env, tmp_path
) -> None:
    # Given a shipped example (the team's own trainer: scikit-learn regression, LightGBM multiclass) and
    # simulated users replaying its data against its route,
    config, model, url = served_example(name, tmp_path)
    raw = yaml.safe_load(config.read_text())
    features = [column for column in raw["schema"]["columns"] if column != raw["schema"]["label"]]
    users = TrafficSimulator(url, config.parent / raw["data"]["uri"], features).start()
    try:
        # when it runs twice with the same code (deploy, then a progressive rollout of the second),
        first = submit_pipeline(local_env, config, stream=lambda _: None)
        second = submit_pipeline(local_env, config, stream=lambda _: None)
        # and once with a crippled model,
        raw["training"]["params"] = {**raw["training"]["params"], **CRIPPLED[name]}
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        crippled = submit_pipeline(local_env, config, stream=lambda _: None)
        answer = requests.post(url, json={"rows": [users.rows[0]]}, timeout=10).json()
    finally:
        users.stop()
    # then the first deployed as champion, the second passed its gates and was promoted on live traffic,
    assert (first.exit_code, first.outcome) == (EXIT_OK, "registered"), first.message
    assert (second.exit_code, second.outcome) == (EXIT_OK, "promoted"), second.message
    versions, aliases = versions_of(model)
    assert versions == ["1", "2"] and aliases == {"champion": "2", "previous": "1"}, (versions, aliases)
    kinds = [e.type for e in read_events(config.parent / "events.jsonl") if e.run_id == second.run_id]
    assert kinds.count("rollout_step") == 2 and kinds[-2:] == ["promotion", "pipeline_succeeded"], kinds
    # and the crippled one was blocked by its no-regression gate: nothing registered, no alias moved;
    assert (crippled.exit_code, crippled.outcome) == (EXIT_BLOCKED, "blocked"), crippled
    client = MlflowClient()
    blocked = json.loads(client.get_run(crippled.run_id).data.tags["lockgate.gates"])
    regression = next(g for g in blocked if g["gate"] == "regression")
    assert regression["status"] == "blocked" and regression["details"]["metric"] == REGRESSION_METRIC[name]
    assert versions_of(model)[0] == ["1", "2"], "the blocked run registered nothing"
    # the team's trainer and hyperparameters are on the run, with the task's metrics;
    run = client.get_run(second.run_id)
    assert run.data.params["train.trainer"] == raw["training"]["trainer"], run.data.params
    assert TASK_METRICS[name] <= set(run.data.metrics), sorted(run.data.metrics)
    # both versions answered users, none of whom saw an error, with the task's answer.
    assert users.answers["1"] > 0 and users.answers["2"] > 0, users.answers
    assert users.failed == 0, f"{users.failed} failed answers while the weights moved"
    (row,) = answer["predictions"]
    if name == "wine":
        assert set(row["probabilities"]) == {"cultivar_a", "cultivar_b", "cultivar_c"}, row
        assert row["prediction"] in row["probabilities"], row
    else:
        assert isinstance(row["prediction"], float) and "probabilities" not in row, row


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
