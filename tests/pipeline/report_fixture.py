"""A realistic afternoon of one pipeline, as files: event log, watch history, registered versions.

Four runs of ``loans`` on ``loan-default``: v1 becomes champion directly; v2 rolls out 10 → 50 → 100% and
is promoted; v3 passes its gates but its predictions diverge at 50% and it is rolled back; a fourth run is
blocked by the regression gate. The watcher sampled serving every 30 s and judged drift every 5 minutes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.events import Event, EventType
from pipeline.history import DriftRow, ServingSample, append_row, history_store

T0 = 1_800_000_000.0
PIPELINE, MODEL = "loans", "loan-default"


def _event(kind: EventType, at: float, run: str, version: str | None = None, **fields: Any) -> Event:
    stamp = datetime.fromtimestamp(T0 + at, UTC).isoformat()
    return Event(
        type=kind,
        time=stamp,
        pipeline=PIPELINE,
        run_id=run,
        model_name=MODEL,
        model_version=version,
        **fields,
    )


def _regression_gate(
    delta: float, low: float, high: float, slices: dict[str, tuple[float, float, float]]
) -> dict:
    tolerance = 0.01
    checks = [
        {
            "scope": "overall",
            "metric": "auc",
            "value": delta,
            "bound": "CI low >= -0.01",
            "passed": low >= -tolerance,
        }
    ]
    checks += [
        {"scope": s, "metric": "auc", "value": d, "bound": "CI low >= -0.01", "passed": lo >= -tolerance}
        for s, (d, lo, _) in slices.items()
    ]
    passed = all(c["passed"] for c in checks)
    return {
        "gate": "regression",
        "mode": "enforced",
        "passed": passed,
        "status": "passed" if passed else "blocked",
        "reason": "",
        "checks": checks,
        "details": {
            "candidate": 0.80 + delta,
            "champion": 0.80,
            "delta": delta,
            "ci_low": low,
            "ci_high": high,
            "resamples": 1000.0,
            "metric": "auc",
            "champion_version": "2",
            "tolerance": tolerance,
            "confidence": 0.95,
            "slices": {
                s: {
                    "candidate": 0.8 + d,
                    "champion": 0.8,
                    "delta": d,
                    "ci_low": lo,
                    "ci_high": hi,
                    "resamples": 1000.0,
                }
                for s, (d, lo, hi) in slices.items()
            },
        },
    }


def _threshold_gate(auc: float) -> dict:
    checks = [
        {"scope": "overall", "metric": "auc", "value": auc, "bound": ">= 0.7", "passed": auc >= 0.7},
        {"scope": "overall", "metric": "brier", "value": 0.16, "bound": "<= 0.2", "passed": True},
    ]
    return {
        "gate": "thresholds",
        "mode": "enforced",
        "passed": True,
        "status": "passed",
        "reason": "",
        "checks": checks,
        "details": {},
    }


def _step(weight: float, candidate_error: float, divergence: float, spread: float) -> dict:
    return {
        "weight": weight,
        "status": "pass",
        "reasons": [],
        "candidate_requests": 400 * weight / 10,
        "champion_requests": 4000 - 400 * weight / 10,
        "candidate_error_rate": candidate_error,
        "champion_error_rate": 0.002,
        "candidate_p99_s": 0.041 + weight / 5000,
        "champion_p99_s": 0.038,
        "prediction_divergence": divergence,
        "prediction_divergence_low": max(divergence - spread, 0.0),
        "prediction_divergence_high": divergence + spread,
        "prediction_divergence_bound": 0.05,
    }


def events() -> list[Event]:
    """The event log of the four runs."""
    durations = {"prepare": 2.1, "train": 39.8, "package": 4.2, "evaluate": 1.3, "gate": 0.9, "register": 0.7}
    promoted_steps = [
        _step(10, 0.003, 0.004, 0.006),
        _step(50, 0.002, 0.006, 0.004),
        _step(100, 0.002, 0.005, 0.003),
    ]
    breach = {**_step(50, 0.004, 0.081, 0.012), "status": "breach"}
    rolled_back_steps = [_step(10, 0.003, 0.07, 0.03), breach]
    return [
        _event(EventType.pipeline_started, 0, "run-a"),
        _event(EventType.gate_passed, 50, "run-a", details={"gates": [_threshold_gate(0.79)]}),
        _event(EventType.model_registered, 52, "run-a", "1"),
        _event(
            EventType.pipeline_succeeded,
            60,
            "run-a",
            "1",
            details={"durations_s": {**durations, "rollout": 8.0}, "cost_estimate": 0.0031},
        ),
        _event(
            EventType.pipeline_started,
            900,
            "run-b",
            details={"trigger": "schedule", "trigger_fired_at": T0 + 899},
        ),
        _event(
            EventType.gate_passed,
            950,
            "run-b",
            details={
                "gates": [
                    _threshold_gate(0.81),
                    _regression_gate(0.008, -0.002, 0.018, {"region=north": (0.01, -0.004, 0.024)}),
                ]
            },
        ),
        _event(EventType.model_registered, 952, "run-b", "2"),
        _event(EventType.rollout_step, 960, "run-b", "2", details={"weight": 10}),
        _event(EventType.rollout_step, 1260, "run-b", "2", details={"weight": 50}),
        _event(EventType.rollout_step, 1560, "run-b", "2", details={"weight": 100}),
        _event(
            EventType.promotion,
            1860,
            "run-b",
            "2",
            message="candidate v2 promoted to champion",
            details={"steps": promoted_steps},
        ),
        _event(
            EventType.pipeline_succeeded,
            1861,
            "run-b",
            "2",
            details={"durations_s": {**durations, "rollout": 900.0}, "cost_estimate": 0.0102},
        ),
        _event(EventType.drift_detected, 2650, "watch", "2", details={}),
        _event(
            EventType.pipeline_started,
            2700,
            "run-c",
            details={"trigger": "drift", "trigger_fired_at": T0 + 2690},
        ),
        _event(
            EventType.gate_passed,
            2750,
            "run-c",
            details={
                "gates": [
                    _threshold_gate(0.8),
                    _regression_gate(0.002, -0.007, 0.011, {"region=north": (0.0, -0.009, 0.01)}),
                ]
            },
        ),
        _event(EventType.model_registered, 2752, "run-c", "3"),
        _event(EventType.rollout_step, 2760, "run-c", "3", details={"weight": 10}),
        _event(EventType.rollout_step, 3060, "run-c", "3", details={"weight": 50}),
        _event(
            EventType.rollback,
            3300,
            "run-c",
            "3",
            message="candidate v3 rolled back at 50%: mean prediction differs from the champion's by 0.081",
            details={"weight": 50, "verdict": breach, "outcome": "rolled_back", "steps": rolled_back_steps},
        ),
        _event(
            EventType.pipeline_succeeded,
            3301,
            "run-c",
            "3",
            details={"durations_s": {**durations, "rollout": 550.0}, "cost_estimate": 0.0078},
        ),
        _event(EventType.pipeline_started, 3600, "run-d"),
        _event(
            EventType.gate_blocked,
            3650,
            "run-d",
            message="regression: auc exceeds tolerance",
            details={
                "gates": [
                    _threshold_gate(0.78),
                    _regression_gate(
                        -0.02,
                        -0.031,
                        -0.009,
                        {"region=north": (-0.004, -0.009, 0.004), "region=south": (-0.03, -0.05, -0.012)},
                    ),
                ],
                "durations_s": {k: v for k, v in durations.items() if k != "register"},
                "cost_estimate": 0.0029,
            },
        ),
    ]


def versions() -> list[dict[str, Any]]:
    """What ``registered_versions`` reads from MLflow: each version's test metrics (rows and all)."""
    rows = []
    for index, (auc, accuracy, f1, log_loss, brier) in enumerate(
        [(0.79, 0.74, 0.61, 0.52, 0.175), (0.81, 0.76, 0.64, 0.49, 0.166), (0.80, 0.75, 0.62, 0.51, 0.171)]
    ):
        rows.append(
            {
                "version": str(index + 1),
                "created": T0 + 52 + 900 * index,
                "run_id": f"run-{'abc'[index]}",
                "test.auc": auc,
                "test.accuracy": accuracy,
                "test.f1": f1,
                "test.log_loss": log_loss,
                "test.brier": brier,
                "test.rows": 4000.0,
                "test.positive_rate": 0.31,
            }
        )
    return rows


def serving_samples() -> list[ServingSample]:
    """Every 30 s from the first deploy: v1 alone, v2 rolled out and promoted, v3 canaried and rolled back."""
    samples = []
    weights = [(960, 10), (1260, 50), (1560, 100), (1860, None), (2760, 10), (3060, 50), (3300, 0)]
    for at in range(90, 3900, 30):
        passed = [w for start, w in weights if start <= at]
        champion = "1" if at < 1860 else "2"
        candidate = "2" if 960 <= at < 1860 else "3" if 2760 <= at < 3300 else None
        share = (passed[-1] or 0) / 100 if candidate else 0.0
        total = 40.0 + 10 * ((at // 300) % 3)
        shares = {champion: ("champion", total * (1 - share))}
        if candidate and share:
            shares[candidate] = ("candidate", total * share)
        for version, (role, rate) in shares.items():
            if rate <= 0:
                continue
            slow = 0.012 if version == "3" else 0.0
            samples.append(
                ServingSample(
                    time=T0 + at,
                    version=version,
                    role=role,
                    requests_per_s=rate,
                    error_rate=0.01 if version == "3" else 0.002,
                    p50_s=0.011 + slow / 2,
                    p99_s=0.038 + slow + 0.002 * (at % 90) / 30,
                )
            )
    return samples


def _histogram(column: str, score: float, shift: float) -> dict[str, Any]:
    labels = ["<25", "25–32", "32–40", "40–48", "48–57", "≥57", "missing"]
    reference = [0.14, 0.17, 0.18, 0.18, 0.17, 0.16, 0.0]
    current = [max(r + shift * (3 - i) / 3, 0.0) for i, r in enumerate(reference[:-1])] + [0.0]
    total = sum(current)
    return {
        "column": column,
        "score": score,
        "threshold": 0.2,
        "labels": labels[:-1],
        "reference": reference[:-1],
        "current": [c / total for c in current[:-1]],
    }


def drift_rows() -> list[DriftRow]:
    """Drift windows every 5 minutes against the champion; income and credit score drift from 2,400 s."""
    rows = []
    for at in range(300, 3900, 300):
        drifting = at >= 2400
        scores = {
            "income": 0.05 + (0.3 if drifting else 0.0) + at / 100_000,
            "credit_score": 0.03 + (0.22 if drifting else 0.0),
            "age": 0.02,
            "region": 0.01 + at / 500_000,
            "__prediction__": 0.04 + (0.18 if drifting else 0.0),
        }
        histograms = (
            [
                _histogram("income", scores["income"], 0.08),
                _histogram("credit_score", scores["credit_score"], 0.06),
            ]
            if drifting
            else []
        )
        version = "1" if at < 1860 else "2"
        rows.append(
            DriftRow(time=T0 + at, version=version, drifted=drifting, scores=scores, histograms=histograms)
        )
    return rows


def write_files(root: Path) -> tuple[Path, Path]:
    """The event log and the watch history under ``root``; returns (events file, state directory)."""
    events_file = root / "events.jsonl"
    events_file.write_text("".join(event.model_dump_json() + "\n" for event in events()))
    state = root / "state"
    store = history_store(state, MODEL)
    for row in [*serving_samples(), *drift_rows()]:
        append_row(store, row)
    return events_file, state
