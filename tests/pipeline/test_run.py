"""The run's orchestration with fake stages and a recording tracker: outcomes, tags, events, failure order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import pipeline.run as run_module
from contracts.settings import RESULT_MARKER, Settings
from contracts.vocabulary import RolloutOutcome, RunOutcome, Tag
from pipeline.config import GateMode, PipelineConfig, parse_config
from pipeline.deploy import DeployResult
from pipeline.events import EventType, read_events
from pipeline.gates import GateDecision
from pipeline.prepare import PreparedData, ValidationReport
from pipeline.register import Lineage, Registration
from pipeline.run import (
    EXIT_BLOCKED,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    RunResult,
    StageFailed,
    main,
    run_pipeline,
)
from pipeline.stages import Evaluated, GateOutcome, Packaged, Prepared, StageFunctions, Trained
from tests.conftest import deep_merge, shipped_config

STAGES = ("prepare", "train", "package", "evaluate", "gate", "register", "rollout")


class MlflowDown(ConnectionError):
    """What a tracking call raises once the fake MLflow has gone away."""


class RecordingTracker:
    """A tracker that keeps what the run records in memory; ``broken`` makes every call after it fail."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.params: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}
        self.artifacts: dict[str, Any] = {}
        self.ended: list[str] = []
        self.registered: list[tuple[str, dict[str, str]]] = []
        self.broken = False

    def _call(self) -> None:
        if self.broken:
            raise MlflowDown("tracking server went away")

    def start_run(self, experiment: str, run_name: str) -> str:
        self._call()
        self.experiment, self.run_name = experiment, run_name
        return "run-1"

    def end_run(self, status: str) -> None:
        self._call()
        self.ended.append(status)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._call()
        self.tags.update({str(key): str(value) for key, value in tags.items()})

    def log_params(self, params: dict[str, Any]) -> None:
        self._call()
        self.params.update(params)

    def log_metric(self, key: str, value: float) -> None:
        self._call()
        self.metrics[key] = value

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self._call()
        self.metrics.update(metrics)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._call()
        self.artifacts[artifact_file] = data

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call()
        self.artifacts[artifact_file] = text

    def log_figure(self, png: bytes, artifact_file: str) -> None:
        self._call()
        self.artifacts[artifact_file] = png

    def log_table(self, columns: dict[str, list[Any]], artifact_file: str) -> None:
        self._call()
        self.artifacts[artifact_file] = columns

    def log_dataset(self, frame: pd.DataFrame, source: str, name: str, target: str, digest: str) -> None:
        self._call()

    def log_model(self, encoder: Any, state_dict: dict[str, Any], input_example: pd.DataFrame) -> str:
        self._call()
        return "runs:/run-1/model"

    def load_model(self, model_uri: str) -> Any:
        self._call()
        raise AssertionError("fake stages never load a model")

    def alias_version(self, model_name: str, alias: str) -> str | None:
        self._call()
        return None

    def register(
        self, model_name: str, model_uri: str, tags: dict[str, str], first_model_alias: str
    ) -> Registration:
        self._call()
        self.registered.append((model_uri, tags))
        return Registration(model_name, "1", (first_model_alias,))


def config_for(tmp_path: Path, override: dict[str, Any] | None = None) -> PipelineConfig:
    """The shipped pipeline with its event log in ``tmp_path``."""
    raw = deep_merge(
        shipped_config(), {"events": {"log_file": str(tmp_path / "events.jsonl")}, **(override or {})}
    )
    return parse_config(raw, "test")


def decision(passed: bool) -> GateDecision:
    return GateDecision(gate="regression", mode=GateMode.enforced, passed=passed, reason="auc fell by 0.05")


def fake_stages(
    gate_passes: bool = True,
    rollout: RolloutOutcome = RolloutOutcome.promoted,
    failing: str | None = None,
    calls: list[str] | None = None,
    seen: dict[str, Any] | None = None,
) -> StageFunctions:
    """Stages that return tiny fixed results; ``failing`` names one that raises, ``calls`` records the order."""
    frame = pd.DataFrame({"age": [30, 40], "default": [0, 1]})
    report = ValidationReport(rows=2, columns=("age", "default"))
    prepared = Prepared(frame, "memory://loans", PreparedData(frame, frame, "fp-1", report))
    log = calls if calls is not None else []
    records = seen if seen is not None else {}

    def step(name: str, result: Any) -> Any:
        def run(*args: Any) -> Any:
            log.append(name)
            records[name] = args
            if name == failing:
                raise RuntimeError(f"{name} broke")
            return result(*args) if callable(result) else result

        return run

    def rollout_stage(config, base_dir, target, registration, emit, tracker) -> DeployResult:
        emit("rollout_step", "candidate at 50%", {"weight": 50})
        return DeployResult(rollout, "as the fake decided", [])

    gated = GateOutcome((decision(gate_passes),), {f"{Tag.gate_prefix}regression": "passed"})
    return StageFunctions(
        prepare=step("prepare", prepared),
        train=step("train", Trained(data=None, result=None)),  # type: ignore[arg-type]
        package=step("package", Packaged("runs:/run-1/model")),
        evaluate=step("evaluate", Evaluated({}, None, None)),  # type: ignore[arg-type]
        gate=step("gate", gated),
        register=step("register", Registration("loan-default", "7", ("candidate",))),
        rollout=step("rollout", rollout_stage),
    )


def test_a_blocked_gate_returns_blocked_and_registers_nothing(tmp_path) -> None:
    # Given a gate that blocks the candidate
    tracker, calls = RecordingTracker(), []
    # When the pipeline runs
    result = run_pipeline(
        config_for(tmp_path), tmp_path, Settings(), tracker, fake_stages(gate_passes=False, calls=calls)
    )
    # Then the run is blocked, tagged so, finished cleanly, and nothing after the gate ran
    assert result.outcome == RunOutcome.blocked, "the run's outcome is blocked"
    assert tracker.tags[Tag.outcome] == "blocked", "the MLflow run is tagged lockgate.outcome=blocked"
    assert calls == ["prepare", "train", "package", "evaluate", "gate"], "register and rollout never ran"
    assert tracker.ended == ["FINISHED"], "a blocked run ends FINISHED, not FAILED"
    kinds = [e.type for e in read_events(tmp_path / "events.jsonl")]
    assert kinds == [EventType.pipeline_started, EventType.gate_blocked], "started, then blocked; no success"
    blocked = read_events(tmp_path / "events.jsonl")[-1]
    assert blocked.details["gates"] == result.gates, "the blocked event carries the gate records"
    assert "gate" not in blocked.details["durations_s"], "the gate is still running when it reports"
    assert set(result.durations) == set(STAGES[:5]), "the result holds every stage that ran, the gate too"
    assert {f"duration_s.{s}" for s in STAGES[:5]} <= set(tracker.metrics), "each stage's duration is logged"
    assert "cost_estimate" in tracker.metrics, "the cost estimate is logged"


def test_a_passing_run_registers_rolls_out_and_reports_its_outcome(tmp_path) -> None:
    # Given stages that pass the gate and a rollout that promotes
    tracker, calls = RecordingTracker(), []
    # When the pipeline runs
    result = run_pipeline(config_for(tmp_path), tmp_path, Settings(), tracker, fake_stages(calls=calls))
    # Then every stage ran in order and the run's outcome follows the rollout's
    assert calls == list(STAGES), "every stage ran, in order"
    assert result == RunResult(
        "run-1", RunOutcome.promoted, "loan-default", "7", ("candidate",), result.gates, result.durations
    ), "the result names the run, the outcome and the registered version"
    assert tracker.tags[Tag.outcome] == "promoted", "the MLflow run's outcome follows the rollout"
    assert tracker.tags[Tag.rollout_outcome] == "promoted", "and records the rollout's outcome"
    assert tracker.ended == ["FINISHED"], "the run ends FINISHED"
    events = read_events(tmp_path / "events.jsonl")
    assert [e.type for e in events] == [
        EventType.pipeline_started,
        EventType.gate_passed,
        EventType.model_registered,
        EventType.rollout_step,
        EventType.pipeline_succeeded,
    ], "one event per milestone, in order"
    assert all(e.run_id == "run-1" and e.model_name == "loan-default" for e in events), "every event is bound"
    assert [e.model_version for e in events] == [None, None, "7", "7", "7"], "the version once it exists"
    assert events[3].stage == "rollout", "the rollout's own events come through the rollout sink"
    assert events[-1].details["rollout"] == "promoted", "the success event names the rollout's outcome"


@pytest.mark.parametrize(
    ("rollout", "outcome"),
    [
        (RolloutOutcome.skipped, RunOutcome.registered),
        (RolloutOutcome.rolled_back, RunOutcome.rolled_back),
        (RolloutOutcome.stalled, RunOutcome.rolled_back),
    ],
)
def test_the_runs_outcome_follows_the_rollouts(tmp_path, rollout, outcome) -> None:
    # Given a rollout that ends with ``rollout``
    tracker = RecordingTracker()
    # When the pipeline runs
    result = run_pipeline(config_for(tmp_path), tmp_path, Settings(), tracker, fake_stages(rollout=rollout))
    # Then the run's outcome is the one that rollout outcome maps to
    assert result.outcome == outcome, f"a {rollout} rollout makes the run {outcome}"
    assert tracker.tags[Tag.outcome] == outcome, "and the MLflow run says the same"


def test_a_failing_stage_tags_it_and_sends_exactly_one_failure_event(tmp_path) -> None:
    # Given a train stage that raises
    tracker = RecordingTracker()
    # When the pipeline runs
    with pytest.raises(StageFailed) as caught:
        run_pipeline(config_for(tmp_path), tmp_path, Settings(), tracker, fake_stages(failing="train"))
    # Then the failure names the stage everywhere, once
    assert (caught.value.stage, caught.value.run_id) == ("train", "run-1"), "StageFailed names stage and run"
    assert isinstance(caught.value.cause, RuntimeError), "and carries the stage's own error"
    assert tracker.tags[Tag.outcome] == "failed", "the run is tagged failed"
    assert tracker.tags[Tag.failed_stage] == "train", "with the stage that failed"
    assert tracker.tags[Tag.error] == "RuntimeError: train broke", "and the error"
    assert tracker.ended == ["FAILED"], "the run ends FAILED, once"
    failed = [e for e in read_events(tmp_path / "events.jsonl") if e.type == EventType.pipeline_failed]
    assert len(failed) == 1, "exactly one pipeline_failed event"
    assert (failed[0].stage, failed[0].error) == ("train", "RuntimeError: train broke"), "it names the stage"
    assert "duration_s.train" in tracker.metrics, "the failed stage's duration is still logged"


def test_the_failure_event_is_sent_even_when_tagging_the_run_fails(tmp_path) -> None:
    # Given MLflow goes away during the evaluate stage, so tagging and ending the run fail too
    tracker = RecordingTracker()
    stages = fake_stages()

    def evaluate(*args: Any) -> Evaluated:
        tracker.broken = True
        raise MlflowDown("evaluate lost the tracking server")

    broken = StageFunctions(**{**stages.__dict__, "evaluate": evaluate})
    # When the pipeline runs
    with pytest.raises(StageFailed) as caught:
        run_pipeline(config_for(tmp_path), tmp_path, Settings(), tracker, broken)
    # Then the caller still gets the stage's failure, and the event log still has the failure event
    assert caught.value.stage == "evaluate", "the stage's failure, not the tagging error, reaches the caller"
    failed = [e for e in read_events(tmp_path / "events.jsonl") if e.type == EventType.pipeline_failed]
    assert [e.stage for e in failed] == ["evaluate"], "the pipeline_failed event was written"
    assert Tag.failed_stage not in tracker.tags, "(the tracker really could not be tagged)"


def test_settings_not_the_environment_describe_the_run(tmp_path, monkeypatch) -> None:
    # Given settings naming a commit, a submission and a trigger, and an environment that says otherwise
    monkeypatch.setenv("LOCKGATE_GIT_COMMIT", "from-environ")
    monkeypatch.setenv("LOCKGATE_SUBMISSION_ID", "from-environ")
    settings = Settings(
        git_commit="abc123", submission_id="sub-1", trigger='{"reason": "drift", "event_id": "e9"}'
    )
    tracker, seen = RecordingTracker(), {}
    # When the pipeline runs
    run_pipeline(config_for(tmp_path), tmp_path, settings, tracker, fake_stages(seen=seen))
    # Then tags, lineage and the started event come from the settings
    assert tracker.tags[Tag.git_commit] == "abc123", "the commit the submitter recorded"
    assert tracker.tags[Tag.submission_id] == "sub-1", "the submission id"
    assert tracker.tags[f"{Tag.trigger_prefix}reason"] == "drift", "the trigger, one tag per key"
    lineage: Lineage = seen["register"][2]
    assert (lineage.git_commit, lineage.submission_id, lineage.data_fingerprint) == (
        "abc123",
        "sub-1",
        "fp-1",
    ), "the registered version's lineage"
    started = read_events(tmp_path / "events.jsonl")[0]
    assert started.details == {"trigger": "drift", "trigger_event_id": "e9"}, (
        "the started event names the trigger"
    )
    assert seen["rollout"][2] is None, "no serving target in these settings"


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(deep_merge(shipped_config(), {"events": {"log_file": "events.jsonl"}})))
    return path


def test_main_refuses_an_invalid_file(tmp_path) -> None:
    # Given a pipeline file that does not validate
    path = tmp_path / "pipeline.yaml"
    path.write_text("name: Bad Name\n")
    # When the entrypoint runs, then it exits with the config code
    assert main(["--config", str(path)]) == EXIT_CONFIG, "an invalid file exits 2"


def test_main_reports_a_missing_tracking_server_as_a_setup_failure(tmp_path, monkeypatch) -> None:
    # Given no MLflow server in the environment
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LOCKGATE_EVENTS_FILE", raising=False)
    monkeypatch.delenv("LOCKGATE_EVENTS_URI", raising=False)
    path = write_config(tmp_path)
    # When the entrypoint runs
    code = main(["--config", str(path)])
    # Then it fails in setup and says so in one event
    assert code == EXIT_FAILED, "a missing service exits 1"
    events = read_events(tmp_path / "events.jsonl")
    assert [(e.type, e.stage, e.run_id) for e in events] == [(EventType.pipeline_failed, "setup", None)], (
        "one setup failure, before any run exists"
    )


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        (RunOutcome.promoted, EXIT_OK),
        (RunOutcome.blocked, EXIT_BLOCKED),
        (RunOutcome.rolled_back, EXIT_BLOCKED),
    ],
)
def test_main_prints_the_result_line_and_maps_the_outcome(
    tmp_path, monkeypatch, capsys, outcome, code
) -> None:
    # Given a run that ends with ``outcome``
    path = write_config(tmp_path)
    received: list[Settings] = []

    def fake_run(config, base_dir, settings):
        received.append(settings)
        return RunResult("run-1", outcome, "loan-default", "3", ("candidate",), [], {"prepare": 1.0})

    monkeypatch.setenv("LOCKGATE_SUBMISSION_ID", "sub-9")
    monkeypatch.setattr(run_module, "check_mlflow", lambda settings: "http://mlflow")
    monkeypatch.setattr(run_module, "run_pipeline", fake_run)
    # When the entrypoint runs
    exit_code = main(["--config", str(path)])
    # Then the last stdout line is the result as JSON, and the exit code follows the outcome
    last = capsys.readouterr().out.strip().splitlines()[-1]
    marker, _, payload = last.partition(" ")
    assert marker == RESULT_MARKER, "the last line starts with the result marker"
    assert json.loads(payload) == {
        "run_id": "run-1",
        "outcome": str(outcome),
        "model_name": "loan-default",
        "version": "3",
        "aliases": ["candidate"],
        "gates": [],
        "durations": {"prepare": 1.0},
    }, "the result line holds the run's result"
    assert exit_code == code, f"a {outcome} run exits {code}"
    assert received[0].submission_id == "sub-9", "main reads the environment once and passes it down"


def test_secrets_in_the_data_uri_and_webhooks_never_reach_the_logged_config() -> None:
    from contracts.settings import redact_uri
    from pipeline.config import parse_config
    from pipeline.run import loggable_config
    from tests.conftest import deep_merge, shipped_config

    # Given a pipeline reading a signed URL and posting to a webhook whose URL is its secret,
    signed = "https://bucket.example/loans.parquet?X-Amz-Credential=AKIA1&X-Amz-Signature=abc123&part=1"
    raw = deep_merge(
        shipped_config(),
        {"data": {"uri": signed}, "events": {"webhooks": [{"url": "https://hooks.example/T0/B0/secret"}]}},
    )
    # when the config is prepared for the run's artefacts,
    logged = loggable_config(parse_config(raw))
    text = str(logged)
    # then neither the signature, the credential nor the webhook URL is in it; the rest stays readable.
    for secret in ("abc123", "AKIA1", "hooks.example/T0/B0/secret"):
        assert secret not in text, f"{secret} leaked into pipeline_config.json"
    assert logged["data"]["uri"].startswith("https://bucket.example/loans.parquet?") and "part=1" in text
    assert redact_uri("s3://user:pass@bucket/key") == "s3://user:***@bucket/key", "a password in a URI"
    assert redact_uri("data/loans.parquet") == "data/loans.parquet", "a path is left as it is"
