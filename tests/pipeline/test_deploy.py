"""The deploy stage: when it skips and why, what it refuses, and the rollout.json it records."""

from __future__ import annotations

import shutil

import pytest

from contracts.settings import ServingTarget, Settings
from contracts.vocabulary import RolloutOutcome
from pipeline.config import parse_config
from pipeline.deploy import DeployResult, deploy_and_roll_out
from pipeline.register import Registration
from pipeline.stages import ROLLOUT_ARTIFACT, rollout
from tests.conftest import ROOT, deep_merge, shipped_config
from tests.pipeline.test_run import RecordingTracker


def config(**override):
    return parse_config(deep_merge(shipped_config(), override), "test")


def no_events(kind: str, message: str, details: dict) -> None:
    raise AssertionError("a skipped stage sends no rollout events")


def test_no_serving_target_in_the_settings_skips_the_stage(tmp_path) -> None:
    # Given an environment without serving (no dashboard URL and friends)
    target = Settings.from_environ({}).serving_target
    # When the stage runs for a registered candidate
    result = deploy_and_roll_out(config(), tmp_path, target, ("candidate",), "2", no_events)
    # Then it is skipped and says which setting is missing
    assert result.outcome == RolloutOutcome.skipped, "no serving target, no rollout"
    assert result.reason == (
        "no serving target in this environment (LOCKGATE_DASHBOARD_URL unset, and "
        "LOCKGATE_LIVE_STATE_URI with LOCKGATE_PROMETHEUS_URL not both set)"
    ), "the reason names the missing settings (local serving, or cluster mode)"


def test_a_disabled_rollout_is_skipped_even_with_a_target(tmp_path) -> None:
    # Given a serving target but rollout.enabled false
    target = ServingTarget("http://127.0.0.1:9", "http://127.0.0.1:9", tmp_path, tmp_path / "token")
    # When the stage runs, then it is skipped for that reason and touches nothing
    result = deploy_and_roll_out(
        config(rollout={"enabled": False}), tmp_path, target, ("champion",), "1", no_events
    )
    assert result == DeployResult(RolloutOutcome.skipped, "rollout.enabled is false"), "skipped by config"


def test_a_serving_file_for_another_model_is_refused(tmp_path) -> None:
    # Given a serving file that serves loan-default, and a pipeline that registers another model
    shutil.copy(ROOT / "serving.yaml", tmp_path / "serving.yaml")
    target = ServingTarget("http://127.0.0.1:9", "http://127.0.0.1:9", tmp_path, tmp_path / "token")
    other = config(registry={"model_name": "churn"})
    # When the stage runs, then it refuses before deploying anything
    with pytest.raises(ValueError, match="serves 'loan-default', not 'churn'"):
        deploy_and_roll_out(other, tmp_path, target, ("champion",), "1", no_events)


def test_rollout_json_keeps_its_shape() -> None:
    # Given a skipped stage and a progressive rollout's result
    skipped = DeployResult(RolloutOutcome.skipped, "rollout.enabled is false")
    promoted = DeployResult(RolloutOutcome.promoted, "", [{"weight": 50, "status": "pass"}])
    # When each is recorded, then only a rollout that ran has steps
    assert skipped.to_dict() == {"outcome": "skipped", "reason": "rollout.enabled is false"}, "no steps key"
    assert promoted.to_dict() == {
        "outcome": "promoted",
        "reason": "",
        "steps": [{"weight": 50, "status": "pass"}],
    }, "steps when a rollout ran"


def test_the_rollout_stage_records_its_result_through_the_tracker(tmp_path) -> None:
    # Given a tracker and no serving target
    tracker = RecordingTracker()
    registration = Registration("loan-default", "2", ("candidate",))
    # When the rollout stage runs
    result = rollout(config(), tmp_path, None, registration, no_events, tracker)  # type: ignore[arg-type]
    # Then rollout.json holds the stage's result
    assert tracker.artifacts[ROLLOUT_ARTIFACT] == result.to_dict(), "rollout.json is the stage's result"
    assert result.outcome == RolloutOutcome.skipped, "skipped without a target"


def test_the_rollout_stage_logs_its_timeline_from_the_events_it_forwards(tmp_path, monkeypatch) -> None:
    # Given a rollout that steps to 10% and is rolled back, its events forwarded to the run's sink
    import pipeline.stages

    def rolled_back(config, base_dir, target, aliases, version, emit) -> DeployResult:
        emit("rollout_step", "candidate v2 at 10%", {"weight": 10.0})
        step = {"weight": 10.0, "status": "breach", "candidate_error_rate": 0.2, "champion_error_rate": 0.0}
        emit(
            "rollback", "candidate v2 rolled back at 10%", {"weight": 10.0, "verdict": step, "steps": [step]}
        )
        return DeployResult(RolloutOutcome.rolled_back, "errors", [step])

    monkeypatch.setattr(pipeline.stages, "deploy_and_roll_out", rolled_back)
    tracker, forwarded = RecordingTracker(), []
    # When the stage runs
    rollout(
        config(),
        tmp_path,
        None,
        Registration("loan-default", "2", ("candidate",)),
        lambda kind, message, details: forwarded.append(kind),
        tracker,  # type: ignore[arg-type]
    )
    # Then every event still reaches the sink, and the timeline is a PNG artefact of the run
    assert forwarded == ["rollout_step", "rollback"], "events forwarded unchanged"
    assert tracker.artifacts["figures/rollout.png"].startswith(b"\x89PNG"), "the rollout timeline logged"
