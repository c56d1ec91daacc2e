"""One event schema for the whole platform, and the sinks that deliver events (a JSON-lines file, webhooks)."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import requests
from pydantic import Field, ValidationError

from contracts.settings import EnvVar, Settings
from contracts.strict import StrictModel
from pipeline.config import EventsConfig, WebhookSink
from pipeline.store import StateStore

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Set by `lockgate run` for a job: the event log resolved against the submitter's pipeline file, so a relative
# `events.log_file` lands next to the user's file, not in the job's temporary copy of its working directory.
EVENTS_FILE_ENV = EnvVar.events_file.value
# Set in a cluster's pods: every event is also written, one object each, under this artefact-store URI, so
# runs, trigger checks and the exporter, each in its own short-lived pod, share one log (any number of writers).
EVENTS_URI_ENV = EnvVar.events_uri.value


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


class Event(StrictModel):
    """A structured platform event."""

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
    # The user names the variable that holds a webhook's secret URL: not a Lockgate setting.
    return os.environ.get(sink.url_env or "") or None


def log_path(config: EventsConfig, base_dir: Path | None = None, settings: Settings | None = None) -> Path:
    """Where events are logged: LOCKGATE_EVENTS_FILE if set, else ``log_file`` (relative to ``base_dir``).

    ``settings`` is the process's environment, read at its edge; without it the environment is read here.
    """
    events_file = (settings if settings is not None else Settings.from_environ()).events_file
    path = Path(events_file or config.log_file)
    return base_dir / path if not path.is_absolute() and base_dir is not None else path


def emit(
    event: Event, config: EventsConfig, base_dir: Path | None = None, settings: Settings | None = None
) -> dict[str, bool]:
    """Deliver to every configured sink that wants this event type; returns delivery status per sink.

    A sink that fails is reported in the log (without its URL, which may hold a secret) and does not
    stop the others: an alert path must never be the thing that crashes the pipeline. ``settings`` says
    where the event log and the event store are; without it the environment is read here.
    """
    if settings is None:
        settings = Settings.from_environ()
    payload = event.model_dump(mode="json")
    delivered: dict[str, bool] = {}
    file = log_path(config, base_dir, settings)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with file.open("a") as handle:
            handle.write(json.dumps(payload, sort_keys=True) + "\n")
        delivered["log_file"] = True
    except OSError as error:
        logger.error("event %s not written to %s: %s", event.type, file, error)
        delivered["log_file"] = False
    uri = settings.events_uri
    if uri:
        try:
            StateStore(uri).write_text(object_name(event), json.dumps(payload, sort_keys=True))
            delivered["store"] = True
        except Exception as error:  # noqa: BLE001 - any store failure is reported, never raised
            logger.error("event %s not written to the event store: %s", event.type, type(error).__name__)
            delivered["store"] = False
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


RolloutSink = Callable[[str, str, dict[str, Any]], None]
"""What the rollout controller reports through: (event type, message, details)."""


@dataclass(frozen=True)
class Emitter:
    """Events of one pipeline run, bound once to where they go and whose they are.

    Every event it sends carries the pipeline, run and model it was bound to; ``for_version`` binds the
    model version once one is registered, ``sink`` gives the rollout controller its ``(kind, message,
    details)`` callable.
    """

    config: EventsConfig
    base_dir: Path | None
    settings: Settings
    pipeline: str
    model_name: str | None = None
    run_id: str | None = None
    model_version: str | None = None

    def for_run(self, run_id: str) -> Emitter:
        """The same emitter, for events of one MLflow run."""
        return replace(self, run_id=run_id)

    def for_version(self, model_version: str) -> Emitter:
        """The same emitter, for events about one registered model version."""
        return replace(self, model_version=model_version)

    def emit(
        self,
        type: EventType,
        *,
        stage: str | None = None,
        message: str = "",
        error: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> dict[str, bool]:
        """Send one event to every configured sink; returns delivery status per sink (a failed sink is logged)."""
        event = Event(
            type=type,
            pipeline=self.pipeline,
            run_id=self.run_id,
            stage=stage,
            model_name=self.model_name,
            model_version=self.model_version,
            message=message,
            error=error,
            details=details if details is not None else {},
        )
        return emit(event, self.config, self.base_dir, self.settings)

    def sink(self, stage: str) -> RolloutSink:
        """The ``(kind, message, details)`` callable a rollout controller reports through, for ``stage``."""

        def send(kind: str, message: str, details: dict[str, Any]) -> None:
            self.emit(EventType(kind), stage=stage, message=message, details=details)

        return send


def slack_compatible(payload: dict[str, Any]) -> dict[str, Any]:
    """The event itself plus a ``text`` line, which Slack-style incoming webhooks display."""
    parts = [f"[lockgate] {payload['type']}", f"pipeline={payload['pipeline']}"]
    for key in ("run_id", "stage", "model_name", "model_version"):
        if payload.get(key):
            parts.append(f"{key}={payload[key]}")
    text = " ".join(parts) + (f": {payload['message']}" if payload.get("message") else "")
    return {"text": text, **payload}


def object_name(event: Event) -> str:
    """An event's object in the event store: by day, then time and id, so names sort in time order."""
    stamp = datetime.fromisoformat(event.time).astimezone(UTC)
    return f"{stamp:%Y-%m-%d}/{stamp:%Y%m%dT%H%M%S%f}-{event.event_id}.json"


def parse_event(text: str | bytes, where: str) -> Event | None:
    """One stored event, or None (logged) when it is not one: a truncated line, an unknown type, bad JSON.

    Readers skip such an event and count it, so one bad line never stops an exporter or a report.
    """
    try:
        return Event.model_validate_json(text)
    except (ValidationError, ValueError) as error:
        logger.warning("skipped an unreadable event in %s: %s", where, str(error).splitlines()[0][:200])
        return None


class EventLog:
    """New events of a JSON-lines log file, read incrementally (whole lines only); bad lines skipped, counted."""

    def __init__(self, path: Path):
        self.path, self._offset = path, 0
        self.skipped = 0

    def read_new(self) -> list[Event]:
        """Events appended since the last read."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        events = []
        for line in complete.splitlines():
            if line.strip():
                event = parse_event(line, str(self.path))
                if event is None:
                    self.skipped += 1
                else:
                    events.append(event)
        return events


class EventObjects:
    """New events of an event store (one object per event under a URI), read incrementally."""

    def __init__(self, uri: str):
        self.store, self._seen = StateStore(uri), set[str]()
        self.skipped = 0

    def read_new(self) -> list[Event]:
        """Events written since the last read, in time order."""
        fresh = [name for name in self.store.names() if name.endswith(".json") and name not in self._seen]
        events = []
        for name in fresh:
            text = self.store.read_text(name)
            event = parse_event(text, f"{self.store.uri}/{name}") if text is not None else None
            if event is not None:
                events.append(event)
            elif text is not None:
                self.skipped += 1
            self._seen.add(name)
        return sorted(events, key=lambda event: event.time)


def event_source(location: str | Path) -> EventLog | EventObjects:
    """The events at a log file's path, or in an event store (a URI such as ``s3://bucket/events``)."""
    return EventObjects(str(location)) if "://" in str(location) else EventLog(Path(location))


def read_events(location: str | Path) -> list[Event]:
    """Every event of a JSON-lines log file, or of an event store."""
    return event_source(location).read_new()
