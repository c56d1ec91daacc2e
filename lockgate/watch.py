"""Closing the loop locally: check captured traffic, let the triggers decide, start the pipeline as a Ray job.

Each check reads captured traffic and labels, judges drift and quality against the serving model's training
reference, lets the triggers' guardrails decide, and starts a run when one fires.

The pure parts live in pipeline/drift.py and pipeline/triggers.py; this is the edge. State kept between
checks (``<state>/watch/<model>/``, a local directory or the artefact store) is owned by pipeline/history.py:
the guardrails' memory, how far captured traffic has been judged, and the drift, quality and serving history
the report and the exporter read.

Before anything else a check reclaims a rollout whose controller died (its lease in the live state store
expired): weight 0, the candidate tagged rejected, one ``rollback`` event. The CronJob's trigger check and
``lockgate watch`` run it every few minutes, so an orphaned rollout needs nobody.

The watcher asks the model registry (:class:`ModelRegistry`) which version is champion and what it was
trained against; :class:`MlflowRegistry`, the default, asks the MLflow server the environment names.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from contracts.vocabulary import Alias, RolloutOutcome, Task
from pipeline.config import PipelineConfig
from pipeline.drift import (
    PROFILE_ARTIFACT,
    DriftReport,
    ReferenceProfile,
    check_drift,
    class_key,
    drift_histograms,
    measure_quality,
)
from pipeline.events import Event, EventType, emit
from pipeline.history import (
    TRIGGER_STATE,
    DriftRow,
    HistoryRow,
    QualityRow,
    ServingSample,
    WatchCursor,
    append_row,
    history_store,
    read_cursor,
    write_cursor,
)
from pipeline.tasks import Predictions
from pipeline.triggers import Decision, TriggerState, decide, event_slug, make_window
from serving.answers import (
    PREDICTION,
    PROBABILITIES,
    PROBABILITY,
    binary_probability,
    class_label,
    numeric_prediction,
)

logger = logging.getLogger(__name__)


class ModelRegistry(Protocol):
    """What the watcher asks the model registry: who serves, and what that version was trained against."""

    def champion_version(self, model_name: str) -> str | None:
        """The version the champion alias names, or None when there is no champion yet."""
        ...

    def reference_profile(self, model_name: str, version: str) -> ReferenceProfile:
        """The training reference profile stored with a version."""
        ...

    def offline_metric(self, model_name: str, version: str, metric: str) -> float | None:
        """A version's offline (test-split) value of a metric such as ``auc``; None when it was not logged."""
        ...


class MlflowRegistry:
    """The registry on the MLflow server the environment names; a client is opened per call, not at import."""

    def __init__(self) -> None:
        self._run_ids: dict[tuple[str, str], str] = {}

    def champion_version(self, model_name: str) -> str | None:
        """The version the champion alias names, or None when there is no champion yet."""
        from serving.desired import registry_aliases

        return registry_aliases(model_name).get(Alias.champion)

    def _run_id(self, model_name: str, version: str) -> str:
        if (model_name, version) not in self._run_ids:
            from mlflow.tracking import MlflowClient

            run_id = MlflowClient().get_model_version(model_name, version).run_id
            if run_id is None:
                raise RuntimeError(f"model {model_name} v{version} has no run: no reference profile")
            self._run_ids[(model_name, version)] = run_id
        return self._run_ids[(model_name, version)]

    def reference_profile(self, model_name: str, version: str) -> ReferenceProfile:
        """The profile the training run logged as an artefact (:data:`pipeline.drift.PROFILE_ARTIFACT`)."""
        import mlflow

        text = mlflow.artifacts.load_text(f"runs:/{self._run_id(model_name, version)}/{PROFILE_ARTIFACT}")
        return ReferenceProfile.from_json(text)

    def offline_metric(self, model_name: str, version: str, metric: str) -> float | None:
        """The training run's ``test.<metric>``."""
        from mlflow.tracking import MlflowClient

        metrics = MlflowClient().get_run(self._run_id(model_name, version)).data.metrics
        value = metrics.get(f"test.{metric}")
        return None if value is None else float(value)


@dataclass
class CheckResult:
    """What one check saw and decided."""

    champion: str | None
    window_rows: int
    drift: DriftReport | None
    quality: dict[str, float] | None
    decision: Decision | None
    submission_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready, for the CLI."""
        return {
            "champion": self.champion,
            "window_rows": self.window_rows,
            "drifted": None if self.drift is None or not self.drift.sufficient else self.drift.drifted,
            "drift": self.drift.explanation if self.drift is not None else None,
            "quality": self.quality,
            "fire": bool(self.decision and self.decision.fire),
            "reason": self.decision.reason.value if self.decision and self.decision.reason else None,
            "explanation": self.decision.explanation if self.decision else None,
            "submission_id": self.submission_id,
            "notes": self.notes,
        }


def check_verdict(summary: dict[str, Any]) -> str:
    """A check's outcome in a few words (drift, and whether a run was started), from its summary."""
    drifted = summary.get("drifted")
    drift = "drift not judged" if drifted is None else "DRIFT" if drifted else "no drift"
    if summary.get("fire"):
        return f"{drift}, RUN STARTED ({summary.get('reason')}, {summary.get('submission_id')})"
    return f"{drift}, no run"


def describe_check(summary: dict[str, Any], at: datetime) -> str:
    """One line a person reads for a check: when, what it judged, and what it decided (and why)."""
    champion = summary.get("champion")
    parts = [
        f"{at:%H:%M:%S} UTC",
        f"champion v{champion}" if champion else "no champion",
        f"{summary.get('window_rows', 0)} new rows",
        check_verdict(summary),
    ]
    quality = summary.get("quality")
    if quality:
        parts.append("quality " + ", ".join(f"{name} {value:.3g}" for name, value in sorted(quality.items())))
    if summary.get("explanation"):
        parts.append(str(summary["explanation"]))
    parts += [str(note) for note in summary.get("notes") or ()]
    return " | ".join(parts)


def describe_watch(
    pipeline: str,
    interval_s: float,
    last: tuple[datetime, dict[str, Any]] | None,
    next_in_s: float | None,
) -> str:
    """The status line of ``lockgate watch`` on a terminal: what it watches, the last check, the next one.

    ``next_in_s`` None: a check is running now.
    """
    parts = [f"watching {pipeline} every {interval_s:g}s"]
    if last is not None:
        at, summary = last
        parts.append(f"last check {at:%H:%M:%S} UTC: {check_verdict(summary)}")
    parts.append("checking now" if next_in_s is None else f"next check in {math.ceil(max(next_in_s, 0)):d}s")
    return " | ".join(parts)


class Watcher:
    """Runs checks for one pipeline and the model it serves."""

    def __init__(
        self,
        config: PipelineConfig,
        config_dir: Path,
        model_name: str,
        capture_uri: str,
        state_uri: str,
        submit: Callable[[dict[str, Any]], str],
        running_runs: Callable[[], int],
        metrics_url: str | None = None,
        exporter: Any = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        registry: ModelRegistry | None = None,
        live_store: Any = None,
    ):
        """``registry``: where the champion and its reference come from (default: the MLflow server).

        ``live_store``: the live rollout state store (``serving.livestate.LiveStateStore``) whose orphaned
        rollouts each check reclaims; None: none is reclaimed.
        """
        self.config, self.config_dir, self.model_name = config, config_dir, model_name
        self.capture_uri, self.submit, self.running_runs = capture_uri, submit, running_runs
        self.metrics_url, self.exporter, self.clock = metrics_url, exporter, clock
        self.registry: ModelRegistry = registry if registry is not None else MlflowRegistry()
        self.store = history_store(state_uri, model_name)
        self._profiles: dict[str, tuple[ReferenceProfile, float | None]] = {}
        self._last_scrape: tuple[float, dict] | None = None
        # History rows of the current check: written with the state, once the check has succeeded.
        self._pending: list[HistoryRow] = []
        self.live_store = live_store

    def _profile(self, version: str) -> tuple[ReferenceProfile, float | None]:
        """The version's reference profile and its offline value of the degradation metric (cached)."""
        if version not in self._profiles:
            profile = self.registry.reference_profile(self.model_name, version)
            metric = self.config.triggers.degradation.metric
            baseline = self.registry.offline_metric(self.model_name, version, metric)
            self._profiles[version] = (profile, baseline)
        return self._profiles[version]

    def _sample_serving(self) -> None:
        """Throughput, error rate and latency per version since the last check, from the router's metrics."""
        if not self.metrics_url:
            return
        from serving.metrics import scrape_version_stats

        try:
            now, stats = time.time(), scrape_version_stats(self.metrics_url)
        except Exception as error:  # the router may not be up: the report just has a gap
            logger.info("serving metrics not read: %s", error)
            return
        if self._last_scrape is not None:
            then, before = self._last_scrape
            elapsed = max(now - then, 1e-9)
            for (version, role), current in stats.items():
                delta = current.minus(before.get((version, role), type(current)()))
                if delta.total <= 0:
                    continue
                sample = ServingSample(
                    time=now,
                    version=version,
                    role=role,
                    requests_per_s=delta.total / elapsed,
                    error_rate=delta.error_rate,
                    p50_s=_finite(delta.latency_quantile(0.5)),
                    p99_s=_finite(delta.latency_quantile(0.99)),
                )
                append_row(self.store, sample)
        self._last_scrape = (now, stats)

    def check(self) -> CheckResult:
        """One check: judge new traffic, decide, maybe start a run. Never raises for missing data."""
        from serving.capture import REQUESTS_DIR, list_files, read_captured, read_labels

        spec = self.config.triggers
        now = self.clock()
        self._pending = []
        self._notes: list[str] = []
        self._reclaim_orphan()
        self._sample_serving()
        champion = self.registry.champion_version(self.model_name)
        notes: list[str] = []
        cursor = read_cursor(self.store)
        saved = self.store.read(TRIGGER_STATE)
        state = TriggerState.model_validate(saved) if saved is not None else TriggerState()
        report, quality, window_rows, baseline = None, None, 0, None
        if champion is None:
            notes.append(f"model {self.model_name} has no champion yet: only the schedule is checked")
        else:
            profile, baseline = self._profile(champion)
            # Files, not times: a replica's file may land after newer rows of another were judged.
            unjudged = cursor.drift_files.unseen(list_files(self.capture_uri, REQUESTS_DIR))
            captured = read_captured(self.capture_uri, files=unjudged)
            served = captured[(captured["model"] == self.model_name) & (captured["version"] == champion)]
            window_rows = len(served)
            if spec.drift.enabled and window_rows >= spec.drift.window_rows:
                answered = served_predictions(served, self.config.task)
                report = check_drift(profile, served, answered.drift_values(), spec.drift.check)
                cursor = cursor.model_copy(update={"drift_files": cursor.drift_files.advance(unjudged)})
                scores = {name: f.score for name, f in report.features.items()}
                if report.prediction is not None:
                    scores["__prediction__"] = report.prediction.score
                row = DriftRow(
                    time=now.timestamp(),
                    version=champion,
                    drifted=report.drifted,
                    scores=scores,
                    histograms=drift_histograms(profile, served, report),
                )
                self._pending.append(row)
                if self.exporter is not None:
                    self.exporter.set_drift(scores, report.drifted)
            elif spec.drift.enabled:
                notes.append(f"{window_rows} of {spec.drift.window_rows} captured rows for a drift window")
            quality, cursor = self._quality(read_captured, read_labels, cursor, champion)
        window = None
        if report is not None or quality is not None:
            window = make_window(
                spec,
                drift_report=report,
                quality=quality,
                baseline=baseline,
                model_version=champion,
                window_id=now.strftime("%Y%m%dT%H%M%S"),
            )
        running = self.running_runs()
        decision, new_state = decide(spec, state, window, now, running)
        submission, trigger = None, None
        if decision.fire and decision.reason is not None:
            trigger = {
                "reason": decision.reason.value,
                "event_id": decision.event_id or "",
                "fired_at": now.timestamp(),
                # The same for every check that decides about this event: the run starts once.
                "run_key": event_slug(decision.event_id or now.strftime("%Y%m%dT%H%M%S")),
            }
            # If this raises, nothing below happens: no event, no state, so the next check decides again.
            submission = self.submit(trigger)
        if report is not None and report.drifted and new_state.drift.event_id != state.drift.event_id:
            self._emit(
                EventType.drift_detected,
                f"drift against v{champion}'s training data: {report.explanation}",
                champion,
                {"event_id": new_state.drift.event_id, **report.to_metrics()},
            )
        if trigger is not None:
            self._emit(
                EventType.trigger_fired,
                decision.explanation,
                champion,
                {**trigger, "submission_id": submission},
            )
        for pending in self._pending:
            append_row(self.store, pending)
        write_cursor(self.store, cursor)
        self.store.write(TRIGGER_STATE, new_state.model_dump(mode="json"))
        return CheckResult(champion, window_rows, report, quality, decision, submission, notes + self._notes)

    def _reclaim_orphan(self) -> None:
        """End a rollout of the model whose controller died; one event by whichever checker won the store's CAS.

        A failure is a note, never the end of the check: the triggers are still decided (the next check
        tries again, and the lease stays expired until someone reclaims it).
        """
        if self.live_store is None:
            return
        from serving.live import reclaim_rollout

        try:
            reclaimed = reclaim_rollout(self.live_store, self.model_name)
        except Exception as error:  # the store or MLflow unreachable: the next check retries
            self._notes.append(f"reclaiming an orphaned rollout failed: {type(error).__name__}: {error}")
            return
        if reclaimed is None:
            return
        details: dict[str, Any] = {
            "weight": reclaimed.weight,
            "owner": reclaimed.owner,
            "reclaimed": True,
            "champion": reclaimed.champion,
        }
        if reclaimed.promoted:
            self._notes.append(f"v{reclaimed.candidate}'s rollout was reclaimed after its promotion")
            self._emit(
                EventType.promotion,
                f"candidate v{reclaimed.candidate} promoted to champion (its controller died after the "
                "alias moves; the rollout was ended by a trigger check)",
                reclaimed.candidate,
                details,
            )
            return
        self._notes.append(f"reclaimed the orphaned rollout of v{reclaimed.candidate}: weight 0")
        self._emit(
            EventType.rollback,
            f"candidate v{reclaimed.candidate} rolled back at {reclaimed.weight:g}%: {reclaimed.reason}"
            + ("" if reclaimed.tagged else "; tagging it rejected failed (see the log)"),
            reclaimed.candidate,
            {**details, "outcome": RolloutOutcome.rolled_back.value, "tagged": reclaimed.tagged},
        )

    def _quality(
        self, read_captured: Callable, read_labels: Callable, cursor: WatchCursor, champion: str
    ) -> tuple[dict[str, float] | None, WatchCursor]:
        """Quality on champion answers whose labels arrived since the last measured window, and the cursor."""
        # Measured (and exported) whenever labels arrive; only the degradation trigger, if enabled, acts on it.
        spec = self.config.triggers.degradation
        from serving.capture import LABELS_DIR, list_files

        unread = cursor.labels_files.unseen(list_files(self.capture_uri, LABELS_DIR))
        if not unread:
            return None, cursor
        fresh = read_labels(self.capture_uri, files=unread)
        if fresh.empty:
            return None, cursor
        captured = read_captured(self.capture_uri)
        mine = captured[(captured["model"] == self.model_name) & (captured["version"] == champion)]
        joined = mine.merge(fresh, on="request_id")
        if len(joined) < spec.min_labelled_rows:
            return None, cursor
        answered = served_predictions(joined, self.config.task)
        usable = answered.usable_labels(joined["label"])
        if (~usable).any():
            # A label the model cannot have (a typo, another model's) must not stop every later check.
            self._notes.append(
                f"{int((~usable).sum())} labelled answers set aside: no usable answer, or a label a "
                f"{self.config.task.value} model cannot predict"
            )
        if int(usable.sum()) < spec.min_labelled_rows:
            return None, cursor
        cursor = cursor.model_copy(update={"labels_files": cursor.labels_files.advance(unread)})
        quality = measure_quality(
            joined["label"][usable], answered.quality_predictions(usable), self.config.task
        )
        self._pending.append(QualityRow(time=self.clock().timestamp(), version=champion, metrics=quality))
        if self.exporter is not None:
            self.exporter.set_quality(champion, quality)
        return quality, cursor

    def _emit(self, kind: EventType, message: str, version: str | None, details: dict[str, Any]) -> None:
        emit(
            Event(
                type=kind,
                pipeline=self.config.name,
                model_name=self.model_name,
                model_version=version,
                message=message,
                details=details,
            ),
            self.config.events,
            self.config_dir,
        )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ServedPredictions:
    """What the champion answered on captured rows, per task, read back from the capture files."""

    task: Task
    answers: list[dict[str, Any] | None]

    def _numbers(self, key: str) -> np.ndarray:
        reader = binary_probability if key == PROBABILITY else numeric_prediction
        return np.asarray(
            [math.nan if a is None or reader(a) is None else reader(a) for a in self.answers], dtype="float64"
        )

    def drift_values(self) -> np.ndarray:
        """Per row: P(positive) (binary), the value (regression) or the predicted class (multiclass)."""
        if self.task == Task.binary:
            return self._numbers(PROBABILITY)
        if self.task == Task.regression:
            return self._numbers(PREDICTION)
        return np.asarray([None if a is None else class_label(a) for a in self.answers], dtype=object)

    def _classes(self) -> tuple[str, ...] | None:
        """The classes of the first answer that gives class probabilities (the model's own order)."""
        for answer in self.answers:
            if answer is not None and isinstance(answer.get(PROBABILITIES), dict):
                return tuple(class_key(label) for label in answer[PROBABILITIES])
        return None

    def usable_labels(self, labels: pd.Series) -> np.ndarray:
        """Which labelled rows quality can be measured on: an answer of the task and a label it could be."""
        labels = pd.Series(labels).reset_index(drop=True)
        present = labels.notna().to_numpy()
        if self.task == Task.multiclass:
            classes = self._classes()
            predicted = self.drift_values()
            ok = np.asarray([p is not None for p in predicted])
            if classes is not None:
                ok &= np.asarray([_has_probabilities(a, classes) for a in self.answers])
                known = np.asarray([v is not None and v == v and class_key(v) in classes for v in labels])
                return present & ok & known
            return present & ok
        numbers = pd.to_numeric(labels, errors="coerce").to_numpy(dtype="float64")
        answered = ~np.isnan(self.drift_values())
        if self.task == Task.binary:
            return present & answered & np.isin(numbers, (0.0, 1.0))
        return present & answered & np.isfinite(numbers)

    def quality_predictions(self, rows: np.ndarray) -> np.ndarray | Predictions:
        """The predictions of the ``rows`` selected, as :func:`pipeline.drift.measure_quality` takes them."""
        if self.task != Task.multiclass:
            return self.drift_values()[rows]
        # usable_labels keeps only rows with an answer: none of these is None.
        chosen = [a for a, keep in zip(self.answers, rows, strict=True) if keep and a is not None]
        classes = self._classes()
        if classes is None:
            return Predictions(self.task, np.asarray([class_label(a) for a in chosen], dtype=object))
        matrix = np.asarray(
            [[_probability_of(a, label) for label in classes] for a in chosen], dtype="float64"
        ).reshape(len(chosen), len(classes))
        return Predictions(self.task, matrix, classes)


def _has_probabilities(answer: dict[str, Any] | None, classes: tuple[str, ...]) -> bool:
    found = answer.get(PROBABILITIES) if answer is not None else None
    return isinstance(found, dict) and {class_key(label) for label in found} == set(classes)


def _probability_of(answer: dict[str, Any], label: str) -> float:
    return float(next(v for k, v in answer[PROBABILITIES].items() if class_key(k) == label))


def served_predictions(captured: pd.DataFrame, task: Task) -> ServedPredictions:
    """The answers of captured rows, ready for the drift and quality checks of ``task``."""
    from serving.capture import captured_answers

    return ServedPredictions(task, captured_answers(captured))
