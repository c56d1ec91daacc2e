"""No manual step: pipeline runs deploy, promote a good candidate and roll back a bad one on live evidence."""

from __future__ import annotations

import uuid

import pytest
import yaml
from mlflow.tracking import MlflowClient

from lockgate.jobs import submit_pipeline
from lockgate.traffic import TrafficSimulator
from pipeline.data import make_loans, write_table
from pipeline.events import read_events
from pipeline.run import EXIT_BLOCKED, EXIT_OK
from tests.conftest import FAST_ROLLOUT, write_pipeline
from tests.serving.conftest import SERVE_PORT  # Serve's HTTP port is cluster-wide: another route on it

pytestmark = pytest.mark.e2e


def test_pipeline_deploys_promotes_and_rolls_back_by_itself(local_env, tmp_path) -> None:
    name = f"auto-{uuid.uuid4().hex[:6]}"
    (tmp_path / "serving.yaml").write_text(
        yaml.safe_dump(
            {
                "model_name": name,
                "serving": {
                    "app_name": "pipeline-test",
                    "route_prefix": "/pipeline",
                    "http_port": SERVE_PORT,
                    "replica_num_cpus": 0.25,
                },
            }
        )
    )
    config = write_pipeline(
        tmp_path,
        {
            "registry": {"model_name": name},
            "rollout": FAST_ROLLOUT,
        },
    )
    batch = write_table(make_loans(8_000, seed=1), tmp_path / "batch-2.parquet")
    # Default risk rose across the board: the retrained model ranks as well (gates pass) but predicts higher.
    drifted = write_table(make_loans(8_000, seed=2, risk_shift=1.2), tmp_path / "batch-3.parquet")
    users = TrafficSimulator(
        f"http://127.0.0.1:{SERVE_PORT}/pipeline",
        tmp_path / "data.parquet",
        [
            "age",
            "income",
            "loan_amount",
            "credit_score",
            "employment_years",
            "debt_to_income",
            "open_accounts",
            "region",
            "product",
        ],
    ).start()
    try:
        first = submit_pipeline(local_env, config, stream=lambda _: None)
        second = submit_pipeline(local_env, config, stream=lambda _: None, data=str(batch))
        third = submit_pipeline(local_env, config, stream=lambda _: None, data=str(drifted))
    finally:
        users.stop()
    assert (first.exit_code, first.outcome) == (EXIT_OK, "registered"), first.message
    assert (second.exit_code, second.outcome) == (EXIT_OK, "promoted"), second.message
    aliases = {a: str(v) for a, v in MlflowClient().get_registered_model(name).aliases.items()}
    assert aliases == {"champion": "2", "previous": "1"}, aliases
    kinds = [e.type for e in read_events(tmp_path / "events.jsonl") if e.run_id == second.run_id]
    assert kinds.count("rollout_step") == 2 and kinds[-2:] == ["promotion", "pipeline_succeeded"], kinds
    assert (third.exit_code, third.outcome) == (EXIT_BLOCKED, "rolled_back"), third.message
    after = {a: str(v) for a, v in MlflowClient().get_registered_model(name).aliases.items()}
    assert after == {"champion": "2", "previous": "1"}, f"the champion stays after a rollback: {after}"
    rejected = MlflowClient().get_model_version(name, "3").tags
    assert rejected["lockgate.gate.regression"] == "passed", "it passed its offline gates"
    assert rejected["lockgate.rollout"] == "rejected" and "prediction" in rejected["lockgate.rollout.reason"]
    third_events = [e.type for e in read_events(tmp_path / "events.jsonl") if e.run_id == third.run_id]
    assert third_events.count("rollback") == 1 and "promotion" not in third_events, third_events
    assert users.answers["2"] > 0 and users.answers["1"] > 0, f"both versions answered users: {users.answers}"
    assert users.failed == 0, "no user saw an error while the weights moved"
