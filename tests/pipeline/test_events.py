"""Events: one schema, delivered to the log file and to webhooks that want them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contracts.settings import Settings
from pipeline.config import EventsConfig, WebhookSink
from pipeline.events import Emitter, Event, EventType, emit, read_events


def test_file_and_filtered_webhook_delivery(tmp_path, webhook) -> None:
    config = EventsConfig(log_file=str(tmp_path / "events.jsonl"), webhooks=(WebhookSink(url=webhook.url),))
    started = Event(type=EventType.pipeline_started, pipeline="p", run_id="r1")
    failed = Event(type=EventType.pipeline_failed, pipeline="p", run_id="r1", stage="train", error="boom")
    assert emit(started, config) == {"log_file": True}, (
        "a started event is not a webhook's business by default"
    )
    assert emit(failed, config) == {"log_file": True, "webhook[0]": True}
    assert [e.type for e in read_events(tmp_path / "events.jsonl")] == ["pipeline_started", "pipeline_failed"]
    assert len(webhook.received) == 1
    body = webhook.received[0]
    assert body["run_id"] == "r1" and body["stage"] == "train" and body["type"] == "pipeline_failed"
    assert "stage=train" in body["text"], "a Slack-compatible text line"


def test_unreachable_webhook_and_missing_env_do_not_raise(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HOOK_URL", raising=False)
    config = EventsConfig(
        log_file=str(tmp_path / "e.jsonl"),
        webhooks=(WebhookSink(url="http://127.0.0.1:9/none", timeout_s=1), WebhookSink(url_env="HOOK_URL")),
    )
    delivered = emit(Event(type=EventType.pipeline_failed, pipeline="p"), config)
    assert delivered == {"log_file": True, "webhook[0]": False, "webhook[1]": False}


def test_sink_and_event_validation() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        WebhookSink(url="http://x", url_env="Y")
    with pytest.raises(ValidationError):
        Event(type="not_a_type", pipeline="p")  # type: ignore[arg-type]


def test_the_emitter_binds_pipeline_run_model_and_version(tmp_path) -> None:
    # Given an emitter bound to a pipeline and model, then to a run, then to a version
    config = EventsConfig(log_file="events.jsonl")
    run = Emitter(config, tmp_path, Settings(), pipeline="p", model_name="m").for_run("r1")
    # When the run-level and the version-level emitters each send an event
    run.emit(EventType.gate_passed, stage="gate", details={"gates": []})
    run.for_version("3").emit(EventType.model_registered, stage="register", message="registered")
    # Then both carry what they were bound to, in the log file relative to the base directory
    first, second = read_events(tmp_path / "events.jsonl")
    assert (first.pipeline, first.run_id, first.model_name, first.model_version) == ("p", "r1", "m", None), (
        "the run-level emitter sends no version"
    )
    assert (second.type, second.stage, second.model_version, second.message) == (
        EventType.model_registered,
        "register",
        "3",
        "registered",
    ), "the version-level emitter adds the version"
    assert first.details == {"gates": []} and second.details == {}, "details as given, empty by default"


def test_the_emitters_sink_is_what_the_rollout_controller_calls(tmp_path) -> None:
    # Given the rollout sink of a version-level emitter
    config = EventsConfig(log_file=str(tmp_path / "events.jsonl"))
    sink = Emitter(
        config, None, Settings(), pipeline="p", model_name="m", run_id="r1", model_version="4"
    ).sink("rollout")
    # When the controller reports a step through it
    sink("rollout_step", "candidate at 50%", {"weight": 50})
    # Then the event is a rollout step of that stage and version
    (event,) = read_events(tmp_path / "events.jsonl")
    assert (event.type, event.stage, event.model_version) == (EventType.rollout_step, "rollout", "4"), (
        "the kind becomes the event type, under the bound stage and version"
    )
    assert (event.message, event.details) == ("candidate at 50%", {"weight": 50}), (
        "message and details as sent"
    )


def test_the_emitter_writes_where_its_settings_say_not_the_environment(tmp_path, monkeypatch) -> None:
    # Given settings naming an events file and an event store, and an environment naming others
    monkeypatch.setenv("LOCKGATE_EVENTS_FILE", str(tmp_path / "from-environ.jsonl"))
    monkeypatch.setenv("LOCKGATE_EVENTS_URI", str(tmp_path / "environ-store"))
    store = f"file://{tmp_path}/store"
    settings = Settings(events_file=str(tmp_path / "from-settings.jsonl"), events_uri=store)
    emitter = Emitter(EventsConfig(log_file="ignored.jsonl"), tmp_path, settings, pipeline="p")
    # When an event is sent
    delivered = emitter.emit(EventType.pipeline_started)
    # Then it goes to the settings' file and store only
    assert delivered == {"log_file": True, "store": True}, "written to the file and the store"
    assert len(read_events(tmp_path / "from-settings.jsonl")) == 1, "the settings' events file"
    assert len(read_events(store)) == 1, "the settings' event store"
    assert not (tmp_path / "from-environ.jsonl").exists(), "not the environment's file"
    assert not (tmp_path / "environ-store").exists(), "nor its store"
    assert not (tmp_path / "ignored.jsonl").exists(), "the settings' file overrides the config's"


def test_a_truncated_or_unknown_event_is_skipped_and_counted_not_fatal(tmp_path) -> None:
    from pipeline.events import EventLog

    # Given a log with a good event, a line cut short by a crash, an event of an unknown type, and another good one,
    log = tmp_path / "events.jsonl"
    good = Event(type=EventType.pipeline_started, pipeline="p").model_dump_json()
    unknown = good.replace('"pipeline_started"', '"from_the_future"')
    log.write_text("\n".join([good, good[:40], unknown, good]) + "\n")
    # when it is read,
    reader = EventLog(log)
    events = reader.read_new()
    # then the two good events come back and the two bad lines are counted, not raised.
    assert [e.type for e in events] == ["pipeline_started", "pipeline_started"], events
    assert reader.skipped == 2, f"two unreadable lines counted, got {reader.skipped}"
