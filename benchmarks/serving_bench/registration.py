"""Two registered versions of one model, logged in a subprocess (torch stays out of the benchmark process)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from lockgate.localenv import LocalEnvironment

from .processes import PROCS
from .settings import ENTRY_POINT, REGISTERED_PREFIX, REPO


def loan_row() -> dict[str, Any]:
    """One row of the model's feature columns, as tests/serving/test_router.py builds it."""
    from pipeline.data import make_loans

    return {
        k: (v.item() if hasattr(v, "item") else v)
        for k, v in make_loans(1, seed=9).drop(columns="default").iloc[0].items()
    }


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


def register_in_subprocess(
    env: LocalEnvironment,
    log_dir: Path,
    entry_point: Path = ENTRY_POINT,
    prefix: str = "bench-serving",
    extra_args: tuple[str, ...] = (),
    timeout_s: float = 600,
) -> dict[str, Any]:
    """Run ``entry_point --register NAME [extra_args]`` in a child process; the versions it printed.

    The child's imports (torch, scikit-learn, MLflow's logging) stay out of the benchmark's own process.
    """
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    log_path = log_dir / "register.log"
    with log_path.open("wb") as log:
        process = PROCS.spawn(
            [sys.executable, str(entry_point), "--register", name, *extra_args],
            "register",
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=REPO,
            env={**os.environ, **env.client_env()},
        )
        try:
            out, _ = process.communicate(timeout=timeout_s)
        finally:
            PROCS.stop(process, timeout_s=5)
    for line in out.decode().splitlines():
        if line.startswith(REGISTERED_PREFIX):
            return dict(json.loads(line.removeprefix(REGISTERED_PREFIX)))
    raise RuntimeError(f"registration failed (exit {process.returncode}); see {log_path}")
