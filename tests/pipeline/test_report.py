"""Delivery metrics from events, run costs, and the HTML report (parsed, figures and numbers checked)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from html.parser import HTMLParser

import pytest

import pipeline.report
from pipeline.delivery import delivery_metrics, estimate_cost, runs_from_events
from pipeline.events import Event, EventType
from pipeline.history import DRIFT_HISTORY, SERVING_HISTORY, DriftRow, ServingSample, history_store
from pipeline.report import ReportInputs, collect_inputs, render_report

T0 = 1_800_000_000.0


def event(kind: EventType, at: float, run: str, **fields) -> Event:
    stamp = datetime.fromtimestamp(T0 + at, UTC).isoformat()
    return Event(type=kind, time=stamp, pipeline="loans", run_id=run, model_name="m", **fields)


def history() -> list[Event]:
    durations = {"prepare": 1.0, "train": 20.0, "rollout": 60.0}
    return [
        # Run a, the first model: promoted after a rollout that started 100 s in.
        event(EventType.pipeline_started, 0, "a"),
        event(EventType.rollout_step, 100, "a", details={"weight": 10}),
        event(EventType.promotion, 160, "a", model_version="1"),
        event(
            EventType.pipeline_succeeded,
            161,
            "a",
            model_version="1",
            details={"durations_s": durations, "cost_estimate": 0.01},
        ),
        # Run b, started by a drift trigger 50 s before the run; rolled back 30 s after its first traffic.
        event(
            EventType.pipeline_started,
            1_000,
            "b",
            details={"trigger": "drift", "trigger_fired_at": T0 + 950},
        ),
        event(EventType.rollout_step, 1_100, "b", details={"weight": 10}),
        event(EventType.rollback, 1_130, "b", model_version="2"),
        event(
            EventType.pipeline_succeeded,
            1_131,
            "b",
            details={"durations_s": durations, "cost_estimate": 0.02},
        ),
        # Run c fails in training.
        event(EventType.pipeline_started, 2_000, "c"),
        event(EventType.pipeline_failed, 2_010, "c", stage="train", error="boom"),
        # Run d, triggered and promoted: its lead time counts from the trigger.
        event(
            EventType.pipeline_started,
            3_000,
            "d",
            details={"trigger": "drift", "trigger_fired_at": T0 + 2_990},
        ),
        event(EventType.rollout_step, 3_050, "d", details={"weight": 10}),
        event(EventType.promotion, 3_090, "d", model_version="3"),
    ]


def test_delivery_metrics_from_events() -> None:
    metrics = delivery_metrics(history(), now=T0 + 86_400)
    assert (metrics.promotions, metrics.rollbacks, metrics.rollouts_ended) == (2, 1, 3)
    assert metrics.change_failure_rate == pytest.approx(1 / 3)
    assert metrics.lead_times_s == [160.0, 100.0], "from the run start, or from the trigger that fired it"
    assert metrics.restore_times_s == [30.0]
    assert metrics.deployment_frequency_per_day == pytest.approx(2.0)
    assert delivery_metrics([]).change_failure_rate is None


def test_runs_from_events() -> None:
    runs = {r.run_id: r for r in runs_from_events(history())}
    assert {k: r.outcome for k, r in runs.items()} == {
        "a": "promoted",
        "b": "rolled_back",
        "c": "failed",
        "d": "promoted",
    }
    assert runs["c"].failed_stage == "train" and runs["b"].trigger == "drift" and runs["a"].trigger is None
    assert runs["b"].cost == 0.02 and runs["a"].durations_s["train"] == 20.0


def test_cost_is_resource_seconds_times_price() -> None:
    cost = estimate_cost({"train": 3600.0, "prepare": 1800.0}, {"train": 3.0}, price_per_cpu_hour=0.05)
    assert cost == pytest.approx((3 * 3600 + 1800) * 0.05 / 3600)


class Outline(HTMLParser):
    """Figure ids with whether they hold an SVG, table row counts, and the embedded summary."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, bool] = {}
        self.rows: dict[str, int] = {}
        self.summary = ""
        self._figure: str | None = None
        self._table: str | None = None
        self._in_summary = False
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ids = dict(attrs).get("id")
        if tag == "figure":
            self._figure = ids
            self.figures[str(ids)] = False
        elif tag == "svg" and self._figure:
            self.figures[self._figure] = True
        elif tag == "table":
            self._table = ids
            self.rows[str(ids)] = 0
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._table and self._in_body:
            self.rows[self._table] += 1
        elif tag == "script" and ids == "summary":
            self._in_summary = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "script":
            self._in_summary = False

    def handle_data(self, data: str) -> None:
        if self._in_summary:
            self.summary += data


def test_report_renders_every_figure_and_number() -> None:
    inputs = ReportInputs(
        pipeline="loans",
        model_name="m",
        events=history(),
        versions=[
            {"version": "1", "created": T0, "test.auc": 0.75},
            {"version": "2", "created": T0 + 1_000, "test.auc": 0.76},
        ],
        serving=[
            ServingSample(
                time=T0 + s,
                version=v,
                role="champion",
                requests_per_s=50.0 + s,
                error_rate=0.0,
                p50_s=0.01,
                p99_s=0.02,
            )
            for s in range(0, 60, 10)
            for v in ("1", "2")
        ],
        drift=[
            DriftRow(time=T0 + s, version="1", drifted=s > 30, scores={"age": s / 100})
            for s in range(0, 60, 10)
        ],
    )
    page = render_report(inputs, generated_at=T0 + 86_400)
    outline = Outline()
    outline.feed(page)
    assert outline.figures == {
        "stage-durations": True,
        "model-metrics": True,
        "gate-decision": False,
        "rollout-timeline": True,
        "rollout-timeline-2": True,
        "rollout-timeline-3": True,
        "serving": True,
        "drift-scores": True,
        "drift-histograms": False,
    }, "every figure with data drawn (no gate records, no drift histograms here), newest rollout first"
    assert page.index("<figcaption>Stage durations") < page.index("<svg"), "the caption sits above its figure"
    assert outline.rows == {"delivery": 6, "runs": 4}, "six delivery metrics, four runs"
    summary = json.loads(outline.summary)
    assert summary["runs"] == 4 and summary["total_cost"] == pytest.approx(0.03), "runs and their cost"
    assert summary["delivery"]["promotions"] == 2, "two promotions"
    assert "33% (1/3)" in page, "one rollback in three ended rollouts"
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page) is None, (
        "self-contained: no external loads"
    )

    empty = Outline()
    empty.feed(render_report(ReportInputs(pipeline="loans", model_name="m", events=[]), generated_at=T0))
    assert not any(empty.figures.values()) and len(empty.figures) == 7, (
        "empty figures say so instead of failing"
    )


def test_the_report_reads_the_watch_history_typed_and_skips_a_bad_line(tmp_path, monkeypatch) -> None:
    # Given a watch history in today's format with a half-written last line, and no registry to ask
    monkeypatch.setattr(pipeline.report, "registered_versions", lambda model_name: [])
    history = history_store(tmp_path / "state", "m")
    history.append(DRIFT_HISTORY, {"time": T0, "version": "1", "drifted": False, "scores": {"age": 0.01}})
    history.append(
        SERVING_HISTORY,
        {
            "time": T0,
            "version": "1",
            "role": "champion",
            "requests_per_s": 20.0,
            "error_rate": 0.0,
            "p50_s": 0.01,
            "p99_s": None,
        },
    )
    history.write_text(DRIFT_HISTORY, (history.read_text(DRIFT_HISTORY) or "") + '{"time": ')

    # When the report's inputs are collected
    inputs = collect_inputs("loans", "m", tmp_path / "events.jsonl", history)

    # Then the rows arrive typed, the bad line left out
    assert inputs.drift == [DriftRow(time=T0, version="1", drifted=False, scores={"age": 0.01})], (
        "one drift row"
    )
    assert [(row.version, row.p99_s) for row in inputs.serving] == [("1", None)], "one serving sample"
    page = render_report(inputs, generated_at=T0 + 60)
    outline = Outline()
    outline.feed(page)
    assert outline.figures["drift-scores"] and outline.figures["serving"], "both drawn"
