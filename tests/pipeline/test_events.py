"""Events: one schema, delivered to the log file and to webhooks that want them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.config import EventsConfig, WebhookSink
from pipeline.events import Event, EventType, emit, read_events


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
