"""The baseline: ``mlflow models serve`` on the champion, with each ``-w`` given."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from lockgate.localenv import LocalEnvironment

from .probes import first_probability, wait_answering
from .processes import PROCS, progress
from .settings import MODELS_SERVE_PORTS, REPO
from .wrk import Measurement, measure


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
            champion_probability = first_probability(answer.get("predictions"))
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
