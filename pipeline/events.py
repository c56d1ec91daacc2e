"""One event schema for the whole platform, and the sinks that deliver events (a JSON-lines file, webhooks)."""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import requests
from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import EventsConfig, WebhookSink

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Set by `lockgate run` for a job: the event log resolved against the submitter's pipeline file, so a relative
# `events.log_file` lands next to the user's file, not in the job's temporary copy of its working directory.
EVENTS_FILE_ENV = "LOCKGATE_EVENTS_FILE"


class EventType(StrEnum):
    """Everything the platform reports; alerts, run reports and delivery metrics are computed from these."""

    pipeline_started = "pipeline_started"
    pipeline_failed = "pipeline_failed"
    pipeline_succeeded = "pipeline_succeeded"
    gate_passed = "gate_passed"
    gate_blocked = "gate_blocked"
    model_registered = "model_registered"
    rollout_step = "rollout_step"
    promotion = "promotion"
    rollback = "rollback"
    drift_detected = "drift_detected"
    trigger_fired = "trigger_fired"


class Event(BaseModel):
    """A structured platform event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    type: EventType
    time: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())
    pipeline: str
    run_id: str | None = None
    stage: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    message: str = ""
    error: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


def _resolve_url(sink: WebhookSink) -> str | None:
    if sink.url is not None:
        return sink.url
    return os.environ.get(sink.url_env or "") or None


def log_path(config: EventsConfig, base_dir: Path | None = None) -> Path:
    """Where events are logged: LOCKGATE_EVENTS_FILE if set, else ``log_file`` (relative to ``base_dir``)."""
    path = Path(os.environ.get(EVENTS_FILE_ENV) or config.log_file)
    return base_dir / path if not path.is_absolute() and base_dir is not None else path


def emit(event: Event, config: EventsConfig, base_dir: Path | None = None) -> dict[str, bool]:
    """Deliver to every configured sink that wants this event type; returns delivery status per sink.

    A sink that fails is reported in the log (without its URL, which may hold a secret) and does not
    stop the others: an alert path must never be the thing that crashes the pipeline.
    """
    payload = event.model_dump(mode="json")
    delivered: dict[str, bool] = {}
    file = log_path(config, base_dir)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with file.open("a") as handle:
            handle.write(json.dumps(payload, sort_keys=True) + "\n")
        delivered["log_file"] = True
    except OSError as error:
        logger.error("event %s not written to %s: %s", event.type, file, error)
        delivered["log_file"] = False
    for index, sink in enumerate(config.webhooks):
        if event.type.value not in sink.events:
            continue
        name = f"webhook[{index}]"
        url = _resolve_url(sink)
        if url is None:
            logger.error("event %s not sent to %s: env var %s is not set", event.type, name, sink.url_env)
            delivered[name] = False
            continue
        try:
            response = requests.post(url, json=slack_compatible(payload), timeout=sink.timeout_s)
            response.raise_for_status()
            delivered[name] = True
        except requests.RequestException as error:
            logger.error("event %s not delivered to %s: %s", event.type, name, type(error).__name__)
            delivered[name] = False
    return delivered


def slack_compatible(payload: dict[str, Any]) -> dict[str, Any]:
    """The event itself plus a ``text`` line, which Slack-style incoming webhooks display."""
    parts = [f"[lockgate] {payload['type']}", f"pipeline={payload['pipeline']}"]
    for key in ("run_id", "stage", "model_name", "model_version"):
        if payload.get(key):
            parts.append(f"{key}={payload[key]}")
    text = " ".join(parts) + (f": {payload['message']}" if payload.get("message") else "")
    return {"text": text, **payload}


def read_events(path: str | Path) -> list[Event]:
    """Read a JSON-lines event log back into events."""
    file = Path(path)
    if not file.exists():
        return []
    return [Event.model_validate_json(line) for line in file.read_text().splitlines() if line.strip()]
