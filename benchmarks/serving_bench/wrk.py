"""Throughput and latency measurements with wrk: scripts, runs, parsing, retries when the machine is busy."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .processes import PROCS, SESSIONS, cpu_delta, cpu_snapshot, progress, wait_for_quiet
from .settings import CONTENDED_CORES, METRICS_SETTLE_S

LATENCY_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms), request count, non-2xx and socket errors from wrk --latency."""
    result: dict[str, Any] = {"rps": None, "p50_ms": None, "p99_ms": None, "requests": 0, "non2xx": 0}
    match = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if match:
        result["rps"] = float(match.group(1))
    for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE):
        result[f"p{pct}_ms"] = float(value) * LATENCY_UNITS[unit]
    match = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if match:
        result["requests"] = int(match.group(1))
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if match:
        result["non2xx"] = int(match.group(1))
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    sockets = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, match.groups()), strict=True))
        if match
        else {}
    )
    result["socket_errors"] = sockets
    result["errors"] = result["non2xx"] + sum(sockets.values())
    return result


def write_lua(directory: Path, name: str, body: dict[str, Any]) -> Path:
    """A wrk script that POSTs one JSON body."""
    text = json.dumps(body, separators=(",", ":"))
    path = directory / f"{name}.lua"
    path.write_text(
        f'wrk.method = "POST"\nwrk.body = [==[{text}]==]\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    return path


def run_wrk(urls: list[str], lua: Path, duration_s: float, connections: int, threads: int) -> dict[str, Any]:
    """One wrk per URL (connections and threads split between them), run together; results merged."""
    share_c, share_t = max(1, connections // len(urls)), max(1, threads // len(urls))
    runs = []
    before = cpu_snapshot()
    for url in urls:
        command = [
            "wrk",
            f"-t{share_t}",
            f"-c{max(share_c, share_t)}",
            f"-d{duration_s:g}s",
            "--latency",
            "--timeout",
            "2s",
            "-s",
            str(lua),
            url,
        ]
        runs.append((command, PROCS.spawn(command, "wrk", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    outputs = []
    try:
        for _, process in runs:
            out, _ = process.communicate(timeout=duration_s + 60)
            outputs.append(out.decode(errors="replace"))
    finally:
        for _, process in runs:
            PROCS.stop(process, timeout_s=5)
    cpu = cpu_delta(before, cpu_snapshot(), SESSIONS.all())
    parsed = [parse_wrk(text) for text in outputs]
    merged: dict[str, Any] = {
        "command": " ".join(runs[0][0]) if len(runs) == 1 else [" ".join(c) for c, _ in runs],
        "raw": outputs,
        **cpu,
    }
    if len(parsed) == 1:
        merged.update(parsed[0])
        return merged
    total = sum(p["requests"] for p in parsed) or 1
    merged.update(
        {
            "rps": sum(p["rps"] or 0 for p in parsed),
            "p50_ms": sum((p["p50_ms"] or 0) * p["requests"] for p in parsed) / total,
            "p99_ms": max(p["p99_ms"] or 0 for p in parsed),
            "requests": sum(p["requests"] for p in parsed),
            "non2xx": sum(p["non2xx"] for p in parsed),
            "errors": sum(p["errors"] for p in parsed),
            "socket_errors": [p["socket_errors"] for p in parsed],
            "merged_from": len(parsed),
        }
    )
    return merged


@dataclass
class Measurement:
    """One row of the table."""

    system: str  # "mlflow" or "lockgate"
    phase: str
    config: str
    path: str
    settings: dict[str, Any]
    wrk: dict[str, Any]
    foreign_before: float
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "phase": self.phase,
            "config": self.config,
            "path": self.path,
            "settings": self.settings,
            "rps": self.wrk.get("rps"),
            "p50_ms": self.wrk.get("p50_ms"),
            "p99_ms": self.wrk.get("p99_ms"),
            "requests": self.wrk.get("requests"),
            "errors": self.wrk.get("errors"),
            "non2xx": self.wrk.get("non2xx"),
            "socket_errors": self.wrk.get("socket_errors"),
            "busy_cores": self.wrk.get("busy_cores"),
            "foreign_cores": self.wrk.get("foreign_cores"),
            "foreign_cores_before": self.foreign_before,
            "notes": self.notes,
            "wrk": self.wrk,
        }


def scrape_model_time(metrics_url: str) -> tuple[float, float]:
    """Sum and count of the router's own model-scoring latency histogram (all versions, all replicas)."""
    try:
        text = requests.get(metrics_url, timeout=10).text
    except requests.RequestException:
        return float("nan"), float("nan")
    totals = {"sum": 0.0, "count": 0.0}
    for kind, value in re.findall(
        r"^ray_lockgate_request_latency_seconds_(sum|count)\{[^}]*\}\s+(\S+)$", text, re.MULTILINE
    ):
        totals[kind] += float(value)
    return totals["sum"], totals["count"]


def measure(
    urls: list[str], lua: Path, args: argparse.Namespace, metrics_url: str | None = None
) -> tuple[dict[str, Any], float]:
    """Wait for a quiet machine, warm up, measure; a run that other work contended is retried (bounded)."""
    attempts: list[tuple[dict[str, Any], float]] = []
    for attempt in range(args.retries + 1):
        foreign_before = wait_for_quiet(args.quiet_wait, CONTENDED_CORES)
        result = _measure_once(urls, lua, args, metrics_url, warmup=args.warmup if attempt == 0 else 2.0)
        attempts.append((result, foreign_before))
        if result["foreign_cores"] <= CONTENDED_CORES:
            break
        progress(
            f"  contended by other work ({result['foreign_cores']} cores: {result['foreign_top']}), again"
        )
    result, foreign_before = min(attempts, key=lambda a: a[0]["foreign_cores"])
    result["attempts"] = [
        {k: a[0].get(k) for k in ("rps", "p50_ms", "p99_ms", "errors", "foreign_cores")} for a in attempts
    ]
    result["contended"] = result["foreign_cores"] > CONTENDED_CORES
    return result, foreign_before


def _measure_once(
    urls: list[str], lua: Path, args: argparse.Namespace, metrics_url: str | None, warmup: float
) -> dict[str, Any]:
    run_wrk(urls, lua, warmup, args.connections, args.threads)
    if metrics_url:
        time.sleep(METRICS_SETTLE_S)
        before = scrape_model_time(metrics_url)
    result = run_wrk(urls, lua, args.duration, args.connections, args.threads)
    if result.get("rps"):
        result["cpu_ms_per_request"] = round(result["busy_cores"] * 1000 / result["rps"], 2)
    if metrics_url:
        time.sleep(METRICS_SETTLE_S)
        after = scrape_model_time(metrics_url)
        count = after[1] - before[1]
        result["router_scoring_ms_mean"] = (
            round((after[0] - before[0]) / count * 1000, 3) if count > 0 else None
        )
        result["router_scored_requests"] = count
    progress(
        f"  {result['rps'] or 0:.0f} req/s, p50 {result['p50_ms'] or 0:.1f} ms, "
        f"p99 {result['p99_ms'] or 0:.1f} ms, errors {result['errors']}, "
        f"cpu busy {result['busy_cores']} cores (foreign {result['foreign_cores']}), "
        f"cpu/request {result.get('cpu_ms_per_request')} ms, model scoring {result.get('router_scoring_ms_mean')} ms"
    )
    return result
