"""The operational picture as one self-contained HTML file.

Runs, stage durations and cost, model metrics per version, the latest gate decision, rollout timelines,
serving throughput, errors and latency per version over time, drift, and delivery metrics.

``render_report`` is pure (inputs in, HTML out; figures are inline SVG drawn by :mod:`pipeline.figures`), so
it is tested by parsing its output and by rendering it in headless Chromium. ``collect_inputs`` is the edge
that reads the event log, MLflow and the watch history.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.vocabulary import TASK_METRICS, Task
from pipeline import figures
from pipeline.delivery import DeliveryMetrics, RunRecord, delivery_metrics, runs_from_events
from pipeline.events import Event, EventType, log_path, read_events
from pipeline.history import DriftRow, ServingSample, history_store, read_rows
from pipeline.store import StateStore

ROLLOUTS_SHOWN = 3
STAGES = ("prepare", "train", "package", "evaluate", "gate", "register", "rollout")


@dataclass
class ReportInputs:
    """Everything the report shows."""

    pipeline: str
    model_name: str
    events: list[Event]
    # One row per registered version: version, created (epoch s), run_id, and test metrics (e.g. "test.auc").
    versions: list[dict[str, Any]] = field(default_factory=list)
    # One sample per version and role between two checks (pipeline/history.py).
    serving: list[ServingSample] = field(default_factory=list)
    # One row per judged drift window (pipeline/history.py).
    drift: list[DriftRow] = field(default_factory=list)
    currency: str = "USD"


def _svg(figure: Any) -> str | None:
    """A figure as inline SVG (None stays None: the figure says it has nothing to show)."""
    return None if figure is None else figures.svg(figure)


def _time(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "n/a"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _figure(identifier: str, caption: str, svg: str | None, empty: str) -> str:
    # The caption comes first: placed below, it read as the title of the next figure.
    body = svg if svg is not None else f'<p class="empty">{html.escape(empty)}</p>'
    return f'<figure id="{identifier}"><figcaption>{html.escape(caption)}</figcaption>{body}</figure>'


def _durations_svg(runs: list[RunRecord]) -> str | None:
    timed = [r for r in runs if r.durations_s]
    if not timed:
        return None
    figure = figures.new_figure(8.0, 3.4)
    (axes,) = figure.axes
    labels = [r.run_id[:8] for r in timed]
    bottom = [0.0] * len(timed)
    for index, stage in enumerate(STAGES):
        values = [r.durations_s.get(stage, 0.0) for r in timed]
        if any(values):
            axes.bar(labels, values, bottom=bottom, label=stage, color=figures.PALETTE[index])
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_ylabel("seconds")
    axes.set_xlabel("run")
    axes.legend(fontsize=7, ncol=4)
    axes.tick_params(axis="x", labelrotation=45, labelsize=7)
    return figures.svg(figure)


def _quality_metrics(versions: list[dict[str, Any]]) -> list[str]:
    """The task metrics the versions carry (``test.<metric>``), in the tasks' order; never row counts."""
    known = [metric for task in Task for metric in TASK_METRICS[task]]
    present = {key.split(".", 1)[1] for row in versions for key in row if key.startswith("test.")}
    return [metric for metric in dict.fromkeys(known) if metric in present]


def _latest_gates(events: list[Event]) -> tuple[Event, list[dict[str, Any]]] | None:
    """The most recent gate decision in the events, with its records."""
    gated = [
        e
        for e in events
        if e.type in (EventType.gate_passed, EventType.gate_blocked) and e.details.get("gates")
    ]
    return (gated[-1], list(gated[-1].details["gates"])) if gated else None


def _latest_histograms(drift: list[DriftRow]) -> DriftRow | None:
    with_bins = [row for row in drift if row.histograms]
    return with_bins[-1] if with_bins else None


def _table(headers: list[str], rows: list[list[str]], identifier: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{identifier}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_report(inputs: ReportInputs, generated_at: float) -> str:
    """The whole report as one HTML document, no external resources."""
    runs = runs_from_events(inputs.events)
    delivery: DeliveryMetrics = delivery_metrics(inputs.events, now=generated_at)
    run_rows = [
        [
            r.run_id[:12],
            _time(r.started_at),
            r.trigger or "manual",
            r.outcome + (f" ({r.failed_stage})" if r.failed_stage else ""),
            f"v{r.model_version}" if r.model_version else "-",
            _duration(sum(r.durations_s.values()) if r.durations_s else None),
            f"{r.cost:.4f} {inputs.currency}" if r.cost is not None else "n/a",
        ]
        for r in runs
    ]
    rate = delivery.change_failure_rate
    delivery_rows = [
        ["deployment frequency", f"{delivery.deployment_frequency_per_day:.2f} per day"],
        ["lead time (median, trigger or start to production)", _duration(delivery.lead_time_s_median)],
        [
            "change-failure rate",
            "n/a" if rate is None else f"{rate:.0%} ({delivery.rollbacks}/{delivery.rollouts_ended})",
        ],
        ["time to restore (median)", _duration(delivery.time_to_restore_s_median)],
        ["promotions", str(delivery.promotions)],
        ["window", f"{delivery.window_days:.2f} days"],
    ]
    total_cost = sum(r.cost for r in runs if r.cost is not None)
    gates = _latest_gates(inputs.events)
    rollouts = figures.rollout_timelines(inputs.events)[-ROLLOUTS_SHOWN:][::-1]
    histograms = _latest_histograms(inputs.drift)
    shown = [
        _figure("stage-durations", "Stage durations per run", _durations_svg(runs), "no completed runs yet"),
        _figure(
            "model-metrics",
            "Test metrics per registered version (one panel per metric)",
            _svg(figures.version_metrics_figure(inputs.versions, _quality_metrics(inputs.versions))),
            "no versions",
        ),
        _figure(
            "gate-decision",
            "Gate decision"
            + (
                f" of run {gates[0].run_id} (v{gates[0].model_version})"
                if gates and gates[0].model_version
                else f" of run {gates[0].run_id}"
                if gates
                else ""
            ),
            _svg(figures.gate_figure(gates[1])) if gates else None,
            "no gate decisions",
        ),
        *(
            _figure(
                "rollout-timeline" + (f"-{index + 1}" if index else ""),
                f"Rollout of v{timeline.model_version or '?'}: weight, error rate, p99 and divergence per step",
                _svg(figures.rollout_figure(timeline)),
                "no steps",
            )
            for index, timeline in enumerate(rollouts)
        ),
        *(() if rollouts else (_figure("rollout-timeline", "Rollouts", None, "no rollouts"),)),
        _figure(
            "serving",
            "Serving per version over time: throughput, error rate, p99 latency (rollouts, promotions and "
            "rollbacks marked)",
            _svg(figures.serving_figure(inputs.serving, inputs.events)),
            "no serving samples (run `lockgate watch` while serving)",
        ),
        _figure(
            "drift-scores",
            "Drift score (PSI) per feature over time, most drifted first",
            _svg(figures.drift_scores_figure(inputs.drift)),
            "no drift checks",
        ),
        _figure(
            "drift-histograms",
            "Reference vs current traffic for the most-drifted features"
            + (f" (window of {_time(histograms.time)} UTC, v{histograms.version})" if histograms else ""),
            _svg(figures.drift_figure(histograms.histograms)) if histograms else None,
            "no drift window with histograms",
        ),
    ]
    summary = {
        "runs": len(runs),
        "total_cost": round(total_cost, 6),
        "delivery": {k: v for k, v in delivery.to_dict().items() if not isinstance(v, list)},
    }
    title = f"Lockgate report: {inputs.pipeline} / {inputs.model_name}"
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;font-size:.9em}figure{margin:1.5em 0}"
        "figcaption{font-weight:bold;margin-bottom:.4em}figure svg{max-width:100%;height:auto}.empty{color:#777}"
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Generated {_time(generated_at)} UTC.</p>"
        "<h2>Delivery</h2>"
        + _table(["metric", "value"], delivery_rows, "delivery")
        + f"<h2>Runs</h2><p>Total estimated cost: {total_cost:.4f} {html.escape(inputs.currency)}</p>"
        + _table(
            ["run", "started (UTC)", "trigger", "outcome", "version", "duration", "cost"], run_rows, "runs"
        )
        + "<h2>Figures</h2>"
        + "".join(shown)
        + '<script type="application/json" id="summary">'
        + json.dumps(summary).replace("<", "\\u003c")
        + "</script>"
        + "</body></html>\n"
    )


def registered_versions(model_name: str) -> list[dict[str, Any]]:
    """Every version of a registered model with its run's test metrics (from the MLflow server in the env)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    rows = []
    for version in client.search_model_versions(f"name='{model_name}'"):
        metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
        rows.append(
            {
                "version": version.version,
                "created": version.creation_timestamp / 1000,
                "run_id": version.run_id,
                **{k: v for k, v in metrics.items() if k.startswith("test.")},
            }
        )
    return rows


def collect_inputs(
    pipeline: str, model_name: str, events_file: Path, history: StateStore, currency: str = "USD"
) -> ReportInputs:
    """Read the event log, the registry and the watch history into report inputs."""
    return ReportInputs(
        pipeline=pipeline,
        model_name=model_name,
        events=[e for e in read_events(events_file) if e.pipeline == pipeline],
        versions=registered_versions(model_name),
        serving=list(read_rows(history, ServingSample).rows),
        drift=list(read_rows(history, DriftRow).rows),
        currency=currency,
    )


def write_report(
    config: Any, config_dir: Path, model_name: str, state_uri: str | Path, out: Path
) -> tuple[Path, str]:
    """Collect, render and write the report; log it to MLflow as an artefact of a ``report`` run."""
    import time

    import mlflow

    inputs = collect_inputs(
        config.name,
        model_name,
        log_path(config.events, config_dir),
        history_store(state_uri, model_name),
        config.cost.currency,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(inputs, generated_at=time.time()))
    mlflow.set_experiment(config.registry.experiment or config.name)
    with mlflow.start_run(run_name=f"report-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.set_tags({"lockgate.kind": "report", "lockgate.pipeline": config.name})
        mlflow.log_artifact(str(out), artifact_path="report")
    return out, run.info.run_id
