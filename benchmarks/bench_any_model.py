"""Benchmark serving any model: a scikit-learn gradient-boosting classifier, router vs ``mlflow models serve``.

Run from the repository root (needs ``wrk``: ``apt-get install -y --no-install-recommends wrk``):

    .venv/bin/python benchmarks/bench_any_model.py                        # 3 interleaved rounds, 15 s each
    .venv/bin/python benchmarks/bench_any_model.py --model sklearn-hgb    # HistGradientBoostingClassifier
    .venv/bin/python benchmarks/bench_any_model.py --profile-seconds 20   # py-spy on the router's processes

What one run does, all on 127.0.0.1 on this script's own ports (MLflow 26055, Ray GCS 26390 with workers on
26400-26799, dashboard 26275, Serve HTTP 26800, ``mlflow models serve`` 26901...), in a fresh state directory:

1. ``LocalEnvironment.up`` as ``lockgate up`` does by default (Serve's own proxy, logical CPUs 2x cores).
2. Two versions of one registered model, scikit-learn pipelines (ordinal-encoded categories, then
   ``GradientBoostingClassifier``, or ``HistGradientBoostingClassifier`` with ``--model sklearn-hgb``)
   fitted on the loan data with different seeds, logged with ``pipeline.register.log_trained_model`` (the
   team-trainer path: ``mlflow.sklearn``, signature, input example, ``predict_proba``, class labels) and
   registered, aliased champion and candidate. A subprocess does it, and times a bare single-row predict.
3. ``mlflow models serve -m models:/<name>/<champion> --env-manager local`` with each ``-w`` in
   ``--mlflow-workers`` (default 1, 2, 4), each on its own port, all started before the measurements.
4. The router, deployed the way ``lockgate apply`` does it (``serving.desired.apply_desired``) from the
   repository's ``serving.yaml`` as it stands (1 replica of 0.5 CPU, ``max_ongoing_requests`` 64, capture
   50%, ...), with only its model name, its HTTP port and a pinned candidate weight of 10% changed.
5. ``--repeats`` rounds; in each, every server is measured once, in an order rotated per round, with
   ``wrk -t2 -c32 -d<duration>s --latency --timeout 2s`` (closed loop, 32 connections) after a
   ``--warmup``, all POSTing the same body to ``/invocations``: one loan row in MLflow's ``dataframe_split``.
   Throughput, p50 and p99 per server are the medians over rounds; the best ``mlflow models serve`` is the
   one with the highest median throughput; ratios are router / best (and per round, paired).
6. During each measurement the CPU time of every process started here is read from /proc (the Serve
   proxy and the replica by the PIDs Serve reports), as milliseconds per answered request; foreign CPU
   (other work on the shared machine) is recorded too. With ``--profile-seconds``, a last router run is
   sampled with ``py-spy record`` on the proxy and the replica; the hottest functions are reported.

Everything started is stopped by PID in ``finally`` blocks; no listener is left behind (checked with
``ss``). Results: ``benchmarks/results/any-model-<timestamp>.json`` (load averages at start and end included).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO, BENCHMARKS = Path(__file__).resolve().parents[1], Path(__file__).resolve().parent
for _entry in (BENCHMARKS, REPO):
    if str(_entry) not in sys.path:
        sys.path.insert(0, str(_entry))

from pyspy import summarise_collapsed  # noqa: E402
from serving_bench.any_model import MODELS, register_sklearn_versions, split_body  # noqa: E402
from serving_bench.environment import env_down, env_up  # noqa: E402
from serving_bench.probes import wait_answering  # noqa: E402
from serving_bench.processes import (  # noqa: E402
    CLK_TCK,
    PROCS,
    SESSIONS,
    cpu_snapshot,
    non_loopback_listeners,
    progress,
    raise_on_sigterm,
    wait_for_quiet,
)
from serving_bench.registration import loan_row, register_in_subprocess  # noqa: E402
from serving_bench.settings import CONTENDED_CORES, METRICS_SETTLE_S  # noqa: E402
from serving_bench.wrk import run_wrk, scrape_model_time, write_lua  # noqa: E402

from lockgate.localenv import LocalEnvironment, Ports, port_is_free  # noqa: E402

RESULTS_DIR = REPO / "benchmarks" / "results"
CANDIDATE_WEIGHT = 10.0
ROUTER = "lockgate router"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", choices=MODELS, default="sklearn-gbm", help="estimator (sklearn-gbm)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measured run (default 15)")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of warm-up before each (default 3)"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--mlflow-workers", default="1,2,4", help="-w values of mlflow models serve (1,2,4)")
    parser.add_argument(
        "--quiet-wait", type=float, default=20.0, help="max seconds to wait for other work to calm down"
    )
    parser.add_argument(
        "--profile-seconds", type=float, default=0.0, help="py-spy the router's proxy and replica (0: off)"
    )
    parser.add_argument("--mlflow-port", type=int, default=26055)
    parser.add_argument("--ray-port", type=int, default=26390, help="Ray GCS; workers use +10..+409")
    parser.add_argument("--dashboard-port", type=int, default=26275)
    parser.add_argument("--serve-port", type=int, default=26800)
    parser.add_argument("--models-serve-port", type=int, default=26901, help="first mlflow models serve port")
    parser.add_argument("--keep-state", action="store_true", help="keep the state directory (logs)")
    parser.add_argument("--register", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.mlflow_workers = [int(w) for w in args.mlflow_workers.split(",") if w.strip()]
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


# -- the two servers -----------------------------------------------------------------------------------
def start_models_serve(
    env: LocalEnvironment, uri: str, workers: int, port: int, body: dict, log_dir: Path
) -> tuple[subprocess.Popen, dict[str, Any]]:
    """``mlflow models serve`` with ``-w workers``; returns the process and its first answer."""
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    log_path = log_dir / f"models-serve-w{workers}.log"
    process_env = {
        **os.environ,
        **env.client_env(),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with log_path.open("ab") as log:
        process = PROCS.spawn(
            command, "mlflow", stdout=log, stderr=subprocess.STDOUT, env=process_env, cwd=REPO
        )
    answer = wait_answering(f"http://127.0.0.1:{port}/invocations", body, process, 240, log_path)
    return process, answer


def serving_file_for(model_name: str, serve_port: int) -> Any:
    """The repository's serving.yaml as it stands, with this run's model, HTTP port and a pinned 10% weight."""
    import yaml

    from serving.desired import ServingFile

    raw = yaml.safe_load((REPO / "serving.yaml").read_text())
    raw["model_name"] = model_name
    raw.setdefault("serving", {})["http_port"] = serve_port
    raw.setdefault("traffic", {})["candidate_weight"] = CANDIDATE_WEIGHT
    return ServingFile.model_validate(raw)


def apply_router(env: LocalEnvironment, model_name: str, serve_port: int) -> dict[str, Any]:
    """Deploy the router as ``lockgate apply`` does; returns the serving settings and the time it took."""
    from contracts.settings import rollout_state_path
    from serving.desired import apply_desired

    file = serving_file_for(model_name, serve_port)
    start = time.monotonic()
    router = apply_desired(
        env.dashboard_url,
        env.ray_auth_header(),
        file,
        rollout_state_path(env.state_dir, file.model_name),
        capture_uri=str(env.capture_dir),
    )
    return {
        "apply_s": round(time.monotonic() - start, 2),
        "serving": file.serving.model_dump(mode="json"),
        "router_config": router.model_dump(mode="json"),
    }


def serve_pids(env: LocalEnvironment, app_name: str) -> dict[int, str]:
    """The Serve proxy's and the router replicas' PIDs, labelled, from Serve's own details."""
    import requests

    from serving.deploy import APPLICATIONS_PATH

    response = requests.get(
        f"{env.dashboard_url}{APPLICATIONS_PATH}", headers=env.ray_auth_header(), timeout=10
    )
    response.raise_for_status()
    details = response.json()
    found: dict[int, str] = {}
    for proxy in (details.get("proxies") or {}).values():
        if proxy.get("pid"):
            found[int(proxy["pid"])] = "serve proxy"
    controller = details.get("controller_info") or {}
    if controller.get("pid"):
        found[int(controller["pid"])] = "serve controller"
    if "serve proxy" not in found.values():
        # Serve's details may leave the proxy's PID out: find it among this run's processes by its name.
        for pid, (session, _, name) in cpu_snapshot()[3].items():
            if session in SESSIONS.all() and name == "ray::ProxyActor":
                found[pid] = "serve proxy"
    app = (details.get("applications") or {}).get(app_name, {})
    for deployment in (app.get("deployments") or {}).values():
        for index, replica in enumerate(deployment.get("replicas") or []):
            if replica.get("pid"):
                found[int(replica["pid"])] = f"router replica {index}"
    return found


# -- measurements ------------------------------------------------------------------------------------
def own_cpu(before: tuple, after: tuple, labels: dict[int, str]) -> dict[str, float]:
    """CPU seconds of every process in our sessions between two snapshots, by label (else process name)."""
    own = SESSIONS.all()
    used: collections.Counter[str] = collections.Counter()
    for pid, (session, ticks, name) in after[3].items():
        if session not in own and pid not in labels:
            continue
        previous = before[3].get(pid)
        delta = ticks - (previous[1] if previous else 0)
        if delta > 0:
            used[labels.get(pid, name)] += delta / CLK_TCK
    return dict(used)


def measure(
    label: str, url: str, lua: Path, args: argparse.Namespace, labels: dict[int, str], metrics_url: str | None
) -> dict[str, Any]:
    """Quiet wait, warm-up, one measured wrk run; CPU per process per request; the router's scoring time."""
    foreign_before = wait_for_quiet(args.quiet_wait, CONTENDED_CORES)
    run_wrk([url], lua, args.warmup, args.connections, args.threads)
    if metrics_url:
        time.sleep(METRICS_SETTLE_S)
        model_before = scrape_model_time(metrics_url)
    before = cpu_snapshot()
    result = run_wrk([url], lua, args.duration, args.connections, args.threads)
    after = cpu_snapshot()
    answered = max(result.get("requests", 0) - result.get("errors", 0), 1)
    per_process = own_cpu(before, after, labels)
    row: dict[str, Any] = {
        "server": label,
        "rps": result.get("rps"),
        "p50_ms": result.get("p50_ms"),
        "p99_ms": result.get("p99_ms"),
        "requests": result.get("requests"),
        "errors": result.get("errors"),
        "busy_cores": result.get("busy_cores"),
        "foreign_cores": result.get("foreign_cores"),
        "foreign_top": result.get("foreign_top"),
        "foreign_cores_before": foreign_before,
        "contended": (result.get("foreign_cores") or 0) > CONTENDED_CORES,
        "cpu_ms_per_request": {
            name: round(seconds * 1000 / answered, 3)
            for name, seconds in sorted(per_process.items(), key=lambda item: -item[1])
            if seconds * 1000 / answered >= 0.01
        },
        "raw": result.get("raw"),
    }
    if metrics_url:
        time.sleep(METRICS_SETTLE_S)
        model_after = scrape_model_time(metrics_url)
        count = model_after[1] - model_before[1]
        row["router_scoring_ms_mean"] = (
            round((model_after[0] - model_before[0]) / count * 1000, 3) if count > 0 else None
        )
    top = ", ".join(f"{k} {v}" for k, v in list(row["cpu_ms_per_request"].items())[:4])
    progress(
        f"  {label}: {row['rps'] or 0:.0f} req/s, p50 {row['p50_ms'] or 0:.1f} ms, p99 "
        f"{row['p99_ms'] or 0:.1f} ms, errors {row['errors']}, foreign {row['foreign_cores']} cores; "
        f"cpu ms/request: {top}"
        + (f"; router scoring {row.get('router_scoring_ms_mean')} ms" if metrics_url else "")
    )
    return row


def median(values: list[float]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(rounds: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per server over rounds, mlflow's best, and the router's ratios (of medians and paired)."""
    by_server: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for measured in rounds:
        for row in measured:
            by_server[row["server"]].append(row)
    servers = {
        name: {
            "rps_median": median([r["rps"] for r in rows]),
            "p50_ms_median": median([r["p50_ms"] for r in rows]),
            "p99_ms_median": median([r["p99_ms"] for r in rows]),
            "rps_samples": [r["rps"] for r in rows],
            "p99_ms_samples": [r["p99_ms"] for r in rows],
            "errors": sum(r["errors"] or 0 for r in rows),
            "contended_runs": sum(1 for r in rows if r["contended"]),
            "cpu_ms_per_request_median": {
                key: median([r["cpu_ms_per_request"].get(key, 0.0) for r in rows])
                for key in rows[0]["cpu_ms_per_request"]
            },
        }
        for name, rows in by_server.items()
    }
    mlflow = {name: s for name, s in servers.items() if name != ROUTER}
    best = max(mlflow, key=lambda name: mlflow[name]["rps_median"] or 0) if mlflow else None
    summary: dict[str, Any] = {"servers": servers, "mlflow_best": best}
    if best and ROUTER in servers:
        router, baseline = servers[ROUTER], servers[best]
        summary["throughput_ratio"] = router["rps_median"] / baseline["rps_median"]
        summary["p99_ratio"] = router["p99_ms_median"] / baseline["p99_ms_median"]
        paired = []
        for measured in rounds:
            found = {r["server"]: r for r in measured}
            if ROUTER in found and best in found:
                paired.append(
                    {
                        "throughput": found[ROUTER]["rps"] / found[best]["rps"],
                        "p99": found[ROUTER]["p99_ms"] / found[best]["p99_ms"],
                    }
                )
        summary["paired_ratios"] = paired
        summary["paired_throughput_ratio_median"] = median([p["throughput"] for p in paired])
        summary["paired_p99_ratio_median"] = median([p["p99"] for p in paired])
        summary["throughput_target_met"] = summary["throughput_ratio"] >= 2.0
        summary["p99_target_met"] = summary["p99_ratio"] <= 0.5
    return summary


# -- profile ---------------------------------------------------------------------------------------
# Where a request's time goes in the router: Lockgate's own steps, Serve's, and the model's (any share).
PROFILE_FOCUS = (
    "(serving/",
    "asyncio/threads.py",
    "PyFuncModel.predict",
    "_enforce_schema",
    "predict_proba",
    "DataFrame.from_records",
    "ray/util/metrics.py",
    "handle_request",
    "starlette/",
    "uvicorn/",
    "json/",
)


def profile_router(
    url: str, lua: Path, args: argparse.Namespace, labels: dict[int, str], out_dir: Path
) -> dict[str, Any]:
    """A router run under load with ``py-spy record`` on the proxy and each replica (non-blocking sampling)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return {"error": "py-spy not installed (pip install py-spy)"}
    targets = {pid: label for pid, label in labels.items() if label != "serve controller"}
    recorders = []
    seconds = int(args.profile_seconds)
    for pid, label in targets.items():
        path = out_dir / f"pyspy-{label.replace(' ', '-')}.txt"
        command = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "100"]
        command += ["--format", "raw", "--nonblocking", "--output", str(path)]
        log = (out_dir / f"pyspy-{pid}.log").open("wb")
        recorders.append((label, path, PROCS.spawn(command, "py-spy", stdout=log, stderr=subprocess.STDOUT)))
    time.sleep(1.0)
    result = run_wrk([url], lua, max(1.0, seconds - 2), args.connections, args.threads)
    found: dict[str, Any] = {
        "seconds": seconds,
        "rate_hz": 100,
        "under_load_rps": result.get("rps"),
        "under_load_p99_ms": result.get("p99_ms"),
    }
    for label, path, process in recorders:
        try:
            process.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            pass
        PROCS.stop(process, timeout_s=5)
        text = path.read_text(errors="replace") if path.exists() else ""
        found[label] = (
            summarise_collapsed(text, 100, focus=PROFILE_FOCUS)
            if text
            else {"error": f"no output; see {path.parent}"}
        )
    return found


# -- report ------------------------------------------------------------------------------------------
def print_report(summary: dict[str, Any], floor: dict[str, Any] | None) -> None:
    print()
    print(f"{'server':<28} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}   req/s per round     cpu ms/request")
    print("-" * 110)
    for name, s in summary["servers"].items():
        rounds = ", ".join(f"{v:.0f}" for v in s["rps_samples"])
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in list(s["cpu_ms_per_request_median"].items())[:4])
        print(
            f"{name:<28} {s['rps_median']:>8.0f} {s['p50_ms_median']:>8.1f} {s['p99_ms_median']:>8.1f}   "
            f"{rounds:<19} {cpu}"
        )
    if floor:
        print(f"bare single row in a plain process: {floor}")
    best = summary.get("mlflow_best")
    if best and "throughput_ratio" in summary:
        print(
            f"\nrouter vs {best} (mlflow's best): throughput {summary['throughput_ratio']:.2f}x "
            f"(target >= 2.0: {'met' if summary['throughput_target_met'] else 'NOT met'}), "
            f"p99 {summary['p99_ratio']:.2f}x (target <= 0.5: {'met' if summary['p99_target_met'] else 'NOT met'}); "
            f"paired per round: {summary['paired_throughput_ratio_median']:.2f}x / "
            f"{summary['paired_p99_ratio_median']:.2f}x"
        )


def listeners_on(ports: list[int]) -> list[str]:
    """Lines of ``ss -ltnpH`` still listening on any of ``ports``."""
    try:
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ["(ss unavailable)"]
    wanted = {str(p) for p in ports}
    return [line for line in out.splitlines() if line.split()[3].rsplit(":", 1)[-1] in wanted]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.register:
        register_sklearn_versions(args.register, args.model)
        return 0
    raise_on_sigterm()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y --no-install-recommends wrk", file=sys.stderr)
        return 2
    ports = Ports.from_base(args.mlflow_port, args.ray_port, args.dashboard_port)
    serve_ports = [args.models_serve_port + i for i in range(len(args.mlflow_workers))]
    own_ports = [
        ports.mlflow,
        ports.ray_gcs,
        ports.ray_dashboard,
        ports.ray_client,
        ports.ray_agent,
        ports.ray_metrics,
        args.serve_port,
        *serve_ports,
    ]
    taken = [p for p in own_ports if not port_is_free(p)]
    if taken:
        print(f"ports already in use on 127.0.0.1: {taken}", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    scratch = Path(tempfile.mkdtemp(prefix="lgam-"))
    log_dir = scratch / "logs"
    log_dir.mkdir(parents=True)
    env = LocalEnvironment(scratch / "state", ports)  # lockgate up's defaults: Serve's proxy, 2x cores CPUs
    row = loan_row()
    body = split_body(row)
    lua = write_lua(scratch, "split", body)
    load_start = os.getloadavg()
    started = time.monotonic()
    progress(f"state and logs in {scratch}; load average {load_start}")
    payload: dict[str, Any] = {"benchmark": "any-model", "timestamp": stamp, "model": args.model}
    rounds: list[list[dict[str, Any]]] = []
    saved_environ = dict(os.environ)
    error: str | None = None
    try:
        env_up(env)
        os.environ.update(env.client_env())  # apply_desired reads the registry and deploys from here
        registered = register_in_subprocess(
            env,
            log_dir,
            Path(__file__).resolve(),
            f"bench-any-{args.model}",
            ("--model", args.model),
            timeout_s=900,
        )
        name, (champion, candidate) = registered["name"], registered["versions"]
        payload["registered"] = registered
        progress(
            f"registered {name}: champion v{champion}, candidate v{candidate}; floor {registered['floor']}"
        )
        servers: dict[str, str] = {}
        answers: dict[str, Any] = {}
        for workers, port in zip(args.mlflow_workers, serve_ports, strict=True):
            label = f"mlflow models serve -w {workers}"
            progress(f"starting {label} on :{port}")
            _, answers[label] = start_models_serve(
                env, f"models:/{name}/{champion}", workers, port, body, log_dir
            )
            servers[label] = f"http://127.0.0.1:{port}/invocations"
        progress("deploying the router with lockgate apply's path (serving.yaml, candidate pinned at 10%)")
        payload["router"] = apply_router(env, name, args.serve_port)
        router_url = f"http://127.0.0.1:{args.serve_port}/invocations"
        wait_answering(router_url, body, None, 120)
        answers[ROUTER] = check_router(router_url, body, champion, candidate)
        servers[ROUTER] = router_url
        payload["answers_same_body"] = answers
        labels = serve_pids(env, payload["router"]["serving"]["app_name"])
        payload["serve_pids"] = {str(k): v for k, v in labels.items()}
        idle_before = cpu_snapshot()
        time.sleep(5.0)
        idle = own_cpu(idle_before, cpu_snapshot(), labels)
        payload["idle_own_cores"] = {k: round(v / 5.0, 3) for k, v in idle.items() if v > 0.005}
        progress(f"idle CPU of what this run started (cores): {payload['idle_own_cores']}")
        names = list(servers)
        for index in range(args.repeats):
            order = names[index % len(names) :] + names[: index % len(names)]
            progress(f"round {index + 1}/{args.repeats}: {order}")
            rounds.append(
                [
                    measure(
                        server,
                        servers[server],
                        lua,
                        args,
                        labels,
                        env.metrics_url if server == ROUTER else None,
                    )
                    for server in order
                ]
            )
        if args.profile_seconds > 0:
            progress(f"profiling the router for {args.profile_seconds:g} s under the same load (py-spy)")
            payload["profile"] = profile_router(router_url, lua, args, labels, log_dir)
        payload["non_loopback_listeners"] = non_loopback_listeners()
    except BaseException as exc:  # noqa: BLE001 - write what was measured, then re-raise
        error = f"{type(exc).__name__}: {exc}"
        progress(f"stopped early: {error}")
        raise
    finally:
        PROCS.stop_all()
        env_down(env, scratch)
        os.environ.clear()
        os.environ.update(saved_environ)
        shutil.rmtree(env.ray_temp_dir, ignore_errors=True)
        summary = summarise(rounds) if rounds else {}
        if summary:
            print_report(summary, payload.get("registered", {}).get("floor"))
        payload.update(
            {
                "error": error,
                "elapsed_s": round(time.monotonic() - started, 1),
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "args": {k: v for k, v in vars(args).items() if k != "register"},
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "load_average": {"start": load_start, "end": os.getloadavg()},
                "listening_after": listeners_on(own_ports),
                "row": row,
                "body": body,
                "summary": summary,
                "rounds": rounds,
            }
        )
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"any-model-{stamp}.json"
        path.write_text(json.dumps(payload, indent=2, default=str))
        print(f"\nresults: {path.relative_to(REPO)}; load average {load_start} -> {os.getloadavg()}")
        if payload["listening_after"]:
            print(f"still listening on this run's ports: {payload['listening_after']}", file=sys.stderr)
        if args.keep_state:
            print(f"state and logs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def check_router(
    url: str, body: dict, champion: str, candidate: str, requests_n: int = 200
) -> dict[str, Any]:
    """Sequential requests: status codes, the candidate's share, and each version's answer to the body."""
    import requests

    from serving.app import VERSION_HEADER

    statuses: collections.Counter[int] = collections.Counter()
    versions: collections.Counter[str] = collections.Counter()
    answers: dict[str, Any] = {}
    with requests.Session() as session:
        for _ in range(requests_n):
            response = session.post(url, json=body, timeout=5)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                version = response.headers.get(VERSION_HEADER, "?")
                versions[version] += 1
                answers.setdefault(version, response.json())
    return {
        "statuses": dict(statuses),
        "candidate_share_pct": round(100 * versions[candidate] / max(sum(versions.values()), 1), 1),
        "champion_answer": answers.get(champion),
        "candidate_answer": answers.get(candidate),
    }


if __name__ == "__main__":
    sys.exit(main())
