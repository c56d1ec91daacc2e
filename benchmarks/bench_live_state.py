"""Benchmark the live rollout state: time from a store write to the new split served, and failed requests.

Run from the repository root:

    .venv/bin/python benchmarks/bench_live_state.py                        # both backends, 30 changes each
    .venv/bin/python benchmarks/bench_live_state.py --backends s3 --changes 10 --port-offset 100

What one run does, all on 127.0.0.1 and on this script's own ports (MLflow 29055, Ray GCS 29390, dashboard
29275, Serve HTTP 29800, moto's S3 server 29900; ``--port-offset`` shifts them all), in a fresh state
directory under /tmp:

1. For each backend (``local``: the state directory's ``rollout/``, as ``lockgate up`` sets it; ``s3``: a
   bucket prefix on moto's server, started here as its own process, the router reading it with the same
   AWS variables a pod gets), ``LocalEnvironment.up`` with Serve's Python proxy and that store as the router's
   ``LOCKGATE_LIVE_STATE_URI``; two seeded versions of one model are registered from a subprocess
   (``bench_serving.py --register``, torch stays out of this process).
2. The router is deployed once with the shape only (the champion version, no candidate, nothing pinned),
   exactly as ``apply_desired`` renders it; the live state then names champion and candidate at weight 0.
3. Under load (8 closed-loop ``LoadClient`` clients, 2 s timeout, one row each), ``--changes`` weight
   changes are written to the store (``store.update``, compare-and-set). For each, the time from the end of
   the write to the first answer carrying the new ``x-lockgate-split`` label (polled every 5 ms), and the
   write's own duration. The next change follows ``--hold`` seconds after the new split was seen.
4. Failed requests over the whole run (any non-200, timeout or connection error), and the answers counted.

Medians and p95 per backend are printed against the target (<= 2 s, 0 failed) and written, with every
change, to ``benchmarks/results/live-state-<timestamp>.json``. Every process is started here, stopped by PID
in ``finally`` blocks (SIGTERM included), ``env.down`` too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO, BENCHMARKS = Path(__file__).resolve().parents[1], Path(__file__).resolve().parent
for _entry in (BENCHMARKS, REPO):
    if str(_entry) not in sys.path:
        sys.path.insert(0, str(_entry))

from serving_bench.processes import PROCS, progress, raise_on_sigterm  # noqa: E402
from serving_bench.registration import loan_row, register_in_subprocess  # noqa: E402
from serving_bench.settings import ENTRY_POINT, RESULTS_DIR  # noqa: E402

from lockgate.localenv import LocalEnvironment, Ports, port_is_free  # noqa: E402

BASE_PORTS = {"mlflow": 29055, "ray_gcs": 29390, "ray_dashboard": 29275, "serve": 29800, "s3": 29900}
TARGET_S = 2.0
APP_NAME = "lockgate-live-bench"
BUCKET = "lockgate-live-bench"
WEIGHTS = (10.0, 50.0, 90.0, 30.0, 70.0, 20.0)
"""Cycled: no two consecutive changes share a weight, so each change has a split label of its own."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backends", default="local,s3", help="comma-separated: local, s3 (default both)")
    parser.add_argument("--changes", type=int, default=30, help="weight changes per backend (default 30)")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop load clients (default 8)")
    parser.add_argument(
        "--hold", type=float, default=1.0, help="seconds between a split seen and the next change"
    )
    parser.add_argument("--port-offset", type=int, default=0, help="added to every port of this script")
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - {"local", "s3"}
    if unknown:
        parser.error(f"--backends: unknown {sorted(unknown)}; choose from local, s3")
    if args.changes < 1:
        parser.error("--changes must be at least 1")
    return args


def percentile(values: list[float], percent: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(int(round(percent / 100 * len(ordered) + 0.5)) - 1, 0)] if ordered else float("nan")


def start_moto(port: int, log_dir: Path) -> Any:
    """moto's S3 server as its own process on 127.0.0.1, with the bucket made; returns the process."""
    import boto3
    import requests

    log = (log_dir / "moto.log").open("wb")
    process = PROCS.spawn(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        "moto",
        stdout=log,
        stderr=log,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}; see {log_dir / 'moto.log'}")
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except requests.RequestException:
            time.sleep(0.2)
    else:
        raise RuntimeError(f"moto_server not answering on 127.0.0.1:{port} within 30 s")
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket=BUCKET)
    return process


def deploy_shape(env: LocalEnvironment, name: str, champion: str, serve_port: int) -> str:
    """Deploy the router with the shape only (champion pinned, nothing else); returns its URL."""
    from serving.deploy import deploy_config, wait_running
    from serving.render import render_serve_config
    from serving.spec import ModelRef, RouterConfig, ServingSpec

    spec = ServingSpec(app_name=APP_NAME, http_port=serve_port, replica_num_cpus=0.5, max_ongoing_requests=64)
    config = render_serve_config(spec, RouterConfig(champion=ModelRef(name=name, version=champion)))
    headers = env.ray_auth_header()
    deploy_config(env.dashboard_url, headers, config)
    wait_running(env.dashboard_url, headers, APP_NAME)
    return f"http://127.0.0.1:{serve_port}/"


def wait_generation(url: str, generation: int, timeout_s: float = 60) -> None:
    """Until the router's health endpoint reports the live state ``generation`` applied."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            report = requests.get(url + "health", timeout=2).json().get("live_state") or {}
        except (requests.RequestException, ValueError):
            report = {}
        if (report.get("generation") or 0) >= generation:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the router did not report live state generation {generation} within {timeout_s:g} s")


def measure(store: Any, name: str, versions: list[str], url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Weight changes under load: per change, write time and write-to-observed time; failures overall."""
    from lockgate.traffic import LoadClient
    from serving.app import SPLIT_HEADER, VERSION_HEADER

    champion, candidate = versions
    first = store.update(
        name,
        lambda s: s.model_copy(
            update={"champion": champion, "candidate": candidate, "candidate_weight": 0.0}
        ),
    )
    wait_generation(url, first.generation)
    changes: list[dict[str, Any]] = []
    load = LoadClient(
        url,
        [loan_row()],
        clients=args.clients,
        timeout_s=2.0,
        version_header=VERSION_HEADER,
        split_header=SPLIT_HEADER,
    )
    with load:
        time.sleep(2.0)  # the clients are answering before the first change
        for index in range(args.changes):
            weight = WEIGHTS[index % len(WEIGHTS)]
            label = f"weighted:{weight:g}"
            seen_before = sum(load.answers_in(label).values())
            started = time.monotonic()
            store.update(name, lambda s, w=weight: s.model_copy(update={"candidate_weight": w}))
            written = time.monotonic()
            observed = None
            while time.monotonic() - written < 30:
                if sum(load.answers_in(label).values()) > seen_before:
                    observed = time.monotonic()
                    break
                time.sleep(0.005)
            changes.append(
                {
                    "weight": weight,
                    "write_s": round(written - started, 4),
                    "write_to_observed_s": round(observed - written, 4) if observed is not None else None,
                }
            )
            progress(
                f"  change {index + 1}/{args.changes}: {weight:g}% seen after {changes[-1]['write_to_observed_s']} s"
            )
            time.sleep(args.hold)
    delays = [c["write_to_observed_s"] for c in changes if c["write_to_observed_s"] is not None]
    writes = [c["write_s"] for c in changes]
    return {
        "changes": changes,
        "observed": len(delays),
        "median_s": round(statistics.median(delays), 4) if delays else None,
        "p95_s": round(percentile(delays, 95), 4) if delays else None,
        "max_s": round(max(delays), 4) if delays else None,
        "write_median_s": round(statistics.median(writes), 4),
        "failed": load.failed,
        "failures": dict(load.failures.most_common(5)),
        "responses": load.responses,
        "answers": dict(load.answers),
    }


def run_backend(
    backend: str, args: argparse.Namespace, scratch: Path, ports: dict[str, int]
) -> dict[str, Any]:
    """One backend, start to end: its environment, registration, the shape, the changes; all stopped after."""
    from serving.livestate import LocalStateStore, S3StateStore

    log_dir = scratch / backend / "logs"
    log_dir.mkdir(parents=True)
    moto = None
    saved = dict(os.environ)
    env: LocalEnvironment | None = None
    try:
        if backend == "s3":
            # What a pod of the stack gets: the standard AWS chain's variables and the endpoint override.
            os.environ.update(
                {
                    "AWS_ACCESS_KEY_ID": "lockgate-bench",
                    "AWS_SECRET_ACCESS_KEY": "lockgate-bench-secret",
                    "AWS_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{ports['s3']}",
                    "AWS_EC2_METADATA_DISABLED": "true",
                }
            )
            moto = start_moto(ports["s3"], log_dir)
            uri = f"s3://{BUCKET}/{scratch.name}/rollout"
        state_dir = scratch / backend / "state"
        env = LocalEnvironment(
            state_dir,
            Ports.from_base(
                mlflow=ports["mlflow"], ray_gcs=ports["ray_gcs"], ray_dashboard=ports["ray_dashboard"]
            ),
            num_cpus=2,
            serve_ingress="proxy",
            live_state_uri=uri if backend == "s3" else None,
        )
        # Replicas import this checkout's serving/ (the head passes its environment on to them).
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), saved.get("PYTHONPATH")]))
        env.up(log=lambda line: progress(f"  [env] {line}"))
        os.environ.update(env.client_env())
        registered = register_in_subprocess(env, log_dir, entry_point=ENTRY_POINT, prefix="bench-live")
        name, versions = registered["name"], registered["versions"]
        url = deploy_shape(env, name, versions[0], ports["serve"])
        store = S3StateStore(env.live_state_uri) if backend == "s3" else LocalStateStore(env.live_state_uri)
        progress(f"{backend}: router at {url}, live state at {store.location(name)}")
        return {
            "backend": backend,
            "store": store.location(name),
            **measure(store, name, versions, url, args),
        }
    finally:
        if env is not None:
            env.down(log=lambda line: progress(f"  [env] {line}"))
        if moto is not None:
            PROCS.stop(moto, timeout_s=5)
        os.environ.clear()
        os.environ.update(saved)


def main(argv: list[str] | None = None) -> int:
    """Run each backend, print the table, write the results file."""
    args = parse_args(argv)
    raise_on_sigterm()
    ports = {key: value + args.port_offset for key, value in BASE_PORTS.items()}
    taken = [port for port in ports.values() if not port_is_free(port)]
    if taken:
        print(f"ports already in use on 127.0.0.1: {taken} (try --port-offset)", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    scratch = Path(tempfile.mkdtemp(prefix="lglive-"))
    progress(f"state and logs in {scratch}; load average {os.getloadavg()}")
    results: list[dict[str, Any]] = []
    try:
        for backend in args.backends:
            try:
                results.append(run_backend(backend, args, scratch, ports))
            except Exception as error:  # one backend failing still reports the others; the run is NOT met
                progress(f"{backend}: failed: {type(error).__name__}: {error}")
                results.append(
                    {"backend": backend, "error": f"{type(error).__name__}: {error}", "observed": 0}
                )
    finally:
        PROCS.stop_all()
    header = ("backend", "changes", "median s", "p95 s", "max s", "write s", "failed", "answers")
    print(f"{header[0]:8} " + " ".join(f"{title:>9}" for title in header[1:]))
    for row in results:
        if "error" in row:
            print(f"{row['backend']:8} failed: {row['error']}")
            continue
        cells = (
            row["observed"],
            row["median_s"],
            row["p95_s"],
            row["max_s"],
            row["write_median_s"],
            row["failed"],
        )
        print(
            f"{row['backend']:8} "
            + " ".join(f"{cell!s:>9}" for cell in (*cells, sum(row["answers"].values())))
        )
    met = all(
        "error" not in row
        and row["observed"] == args.changes
        and row["p95_s"] <= TARGET_S
        and row["failed"] == 0
        for row in results
    )
    print(f"target: every change observed, p95 <= {TARGET_S:g} s, 0 failed: {'met' if met else 'NOT met'}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"live-state-{stamp}.json"
    record = {"stamp": stamp, "args": {k: v for k, v in vars(args).items()}, "target_s": TARGET_S, "met": met}
    path.write_text(json.dumps({**record, "results": results}, indent=2, default=str) + "\n")
    print(f"results: {path}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
