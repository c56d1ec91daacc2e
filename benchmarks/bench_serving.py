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

This file is the entry point (flags, the run's order); the parts live in ``benchmarks/serving_bench/``:
``settings`` (ports, phases), ``processes`` (PIDs, sessions, CPU use), ``environment`` (each phase's Ray
head), ``registration``, ``snapshot``, ``wrk`` (measurements), ``mlflow_serve``, ``router``, ``probes``,
``phases`` (the router's variants and the weight changes, loaded by ``lockgate.traffic.LoadClient``) and
``report``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script from the repository root: the repository (lockgate, serving, pipeline) and this directory
# (the serving_bench package) both go on the path.
REPO, BENCHMARKS = Path(__file__).resolve().parents[1], Path(__file__).resolve().parent
for _entry in (BENCHMARKS, REPO):
    if str(_entry) not in sys.path:
        sys.path.insert(0, str(_entry))

from serving_bench.environment import (  # noqa: E402
    Environ,
    env_down,
    env_up,
    for_phase,
    make_env,
    phase_environ,
)
from serving_bench.mlflow_serve import bench_mlflow  # noqa: E402
from serving_bench.phases import bench_phase  # noqa: E402
from serving_bench.processes import PROCS, progress, raise_on_sigterm  # noqa: E402
from serving_bench.registration import loan_row, register_in_subprocess, register_versions  # noqa: E402
from serving_bench.report import print_report, summarise, write_results  # noqa: E402
from serving_bench.router import RouterUnderTest  # noqa: E402
from serving_bench.settings import OWN_PORTS, PHASE_INGRESS, PHASES  # noqa: E402
from serving_bench.snapshot import git_state, snapshot_serving  # noqa: E402
from serving_bench.wrk import write_lua  # noqa: E402

from lockgate.localenv import port_is_free, stop_pid  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
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
    row = loan_row()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    scratch = Path(tempfile.mkdtemp(prefix="lgbs-"))
    env = make_env(scratch / "state")
    log_dir = scratch / "logs"
    log_dir.mkdir(parents=True)
    lua_lockgate = write_lua(scratch, "lockgate", {"rows": [row]})
    lua_mlflow = write_lua(scratch, "mlflow", {"dataframe_records": [row]})
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
            env_up(for_phase(env, "base"))
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
                    stop_pid(state.ray.pid, env.bin_dir / "ray")
                measured, extra["mlflow_champion_probability"] = bench_mlflow(
                    env, champion.uri, row, lua_mlflow, args, log_dir
                )
                rows += [m.row() for m in measured]
            env_down(env, scratch)
        for phase in args.phases:
            with Environ(phase_environ(phase, scratch)):
                progress(
                    f"phase {phase}: environment up, ingress {PHASE_INGRESS[phase]}, "
                    f"levers {PHASES[phase] or 'none'}"
                )
                env_up(for_phase(env, phase))
                try:
                    router = RouterUnderTest(env, champion, candidate, row)
                    measured, phase_changes, info = bench_phase(phase, env, router, lua_lockgate, args)
                    rows += [m.row() for m in measured]
                    changes += phase_changes
                    phase_info[phase] = info
                finally:
                    env_down(env, scratch)
    except BaseException as exc:  # noqa: BLE001 - report what was measured, then re-raise below
        error = f"{type(exc).__name__}: {exc}"
        progress(f"stopped early: {error}")
        raise
    finally:
        PROCS.stop_all()
        env_down(env, scratch)
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
        path = write_results(
            stamp=stamp,
            error=error,
            elapsed_s=time.monotonic() - started,
            args=args,
            row=row,
            summary=summary,
            rows=rows,
            changes=changes,
            phase_info=phase_info,
            extra=extra,
        )
        print(f"\nresults: {path.relative_to(REPO)}")
        if args.keep_state:
            print(f"state and logs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
