"""Benchmark the local platform: `lockgate up`, a full pipeline run, and the same training as a bare script.

Run from the repository root:

    .venv/bin/python benchmarks/bench_pipeline.py            # 3 repeats of everything
    .venv/bin/python benchmarks/bench_pipeline.py --quick    # 1 repeat

What is measured, in this order (the bare script runs first, while no environment is up, so it has the
machine to itself):

1. Bare baseline: the pipeline's training in one plain Python subprocess (no Ray, no MLflow): read the
   parquet, ``prepare_frame``, ``encode_training_data``, train the MLP single-process over all training
   rows with the configured epochs / batch size / learning rate / weight decay (AdamW, BCEWithLogitsLoss),
   score the test split and compute AUC. Timed from process start to process end (torch import included).
   It runs with ``OMP_NUM_THREADS=1`` by default, as Ray gives each 1-CPU Train worker: with torch's
   default of one thread per core, OpenMP oversubscription on a busy 2-core machine made this tiny MLP
   more than ten times slower. ``--bare-threads 0`` keeps torch's default instead.
2. ``LocalEnvironment.up`` on a cold, fresh state directory, then a second ``up`` that reuses the healthy
   environment, then ``down``; each repeat uses a new state directory.
3. ``submit_pipeline`` end to end on one environment, repeated; the first run registers the champion and
   the later ones are gated against it. Per-stage durations come from the run's ``duration_s.*`` metrics.

Everything listens on 127.0.0.1 on this script's own ports; every environment is stopped in a ``finally``
(Ctrl-C and SIGTERM included). Results are printed as a table and written to
``benchmarks/results/pipeline-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# This benchmark's own ports: other environments (a developer's, the test session's) use different ones.
MLFLOW_PORT, RAY_GCS_PORT, RAY_DASHBOARD_PORT = 27055, 27390, 27275
NUM_CPUS = 2
DATA_ROWS, DATA_SEED = 20_000, 0
STAGES = ("prepare", "train", "package", "evaluate", "gate", "register")
BARE_RESULT_PREFIX = "BARE_RESULT "
RESULTS_DIR = REPO / "benchmarks" / "results"


# -- small helpers -----------------------------------------------------------------------------------
def median(samples: list[float]) -> float | None:
    """Median of the samples, None when there are none."""
    return statistics.median(samples) if samples else None


def fmt(value: float | None, unit: str = "s", digits: int = 2) -> str:
    """A number for the table, or a dash."""
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def fmt_samples(samples: list[float]) -> str:
    """All samples, in order."""
    return ", ".join(f"{s:.2f}" for s in samples) or "-"


def log_env(line: str) -> None:
    """Progress of the environment lifecycle, on stderr so the table on stdout stays clean."""
    print(f"    [env] {line}", file=sys.stderr, flush=True)


def progress(line: str) -> None:
    """A benchmark progress line on stderr."""
    print(f"[bench] {line}", file=sys.stderr, flush=True)


def raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so the ``finally`` blocks stop what was started."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def make_env(state_dir: Path) -> Any:
    """A LocalEnvironment on this benchmark's ports."""
    from lockgate.localenv import LocalEnvironment, Ports

    ports = Ports.from_base(mlflow=MLFLOW_PORT, ray_gcs=RAY_GCS_PORT, ray_dashboard=RAY_DASHBOARD_PORT)
    return LocalEnvironment(state_dir, ports, num_cpus=NUM_CPUS)


def stop_env(env: Any) -> float:
    """``down`` (a no-op when nothing is recorded), then drop the Ray temp dir; returns seconds."""
    start = time.perf_counter()
    try:
        env.down(log=log_env)
    finally:
        elapsed = time.perf_counter() - start
        if env.read_state() is None:
            shutil.rmtree(env.ray_temp_dir, ignore_errors=True)
    return elapsed


# -- the pipeline file -------------------------------------------------------------------------------
def write_pipeline_files(directory: Path, model_name: str) -> Path:
    """The shipped pipeline.yaml with its own data, event log and model name, in ``directory``.

    ``directory`` becomes the Ray job's working directory, so it holds nothing but these files.
    """
    import yaml

    from pipeline.config import load_config
    from pipeline.data import make_loans, write_table

    directory.mkdir(parents=True, exist_ok=True)
    write_table(make_loans(rows=DATA_ROWS, seed=DATA_SEED), directory / "data.parquet")
    raw = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    raw["data"]["uri"] = "data.parquet"  # relative to the pipeline file, shipped with the job's working_dir
    raw["events"]["log_file"] = str(directory / "events.jsonl")
    raw["registry"]["model_name"] = model_name
    # Measured up to registration: the rollout stage waits on live traffic, which is serving's benchmark.
    raw["rollout"] = {"enabled": False}
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_config(path)  # fail here, not inside a Ray job, if the file is invalid
    return path


# -- 1. the bare baseline ----------------------------------------------------------------------------
def bare_baseline(config_file: str) -> dict[str, Any]:
    """In the child process: the pipeline's training without Ray or MLflow; returns AUC and timings."""
    started = time.perf_counter()
    import pandas as pd
    import torch

    from pipeline.config import load_config
    from pipeline.evaluate import auc
    from pipeline.model import build_mlp, predict_proba
    from pipeline.prepare import prepare_frame
    from pipeline.train import encode_training_data

    imported = time.perf_counter()
    config_path = Path(config_file).resolve()
    config = load_config(config_path)
    frame = pd.read_parquet(config_path.parent / config.data.uri)
    prepared = prepare_frame(frame, config.data_schema, config.split)
    data = encode_training_data(prepared.train, config)
    encoded = time.perf_counter()

    training = config.training
    torch.manual_seed(training.seed)
    network = build_mlp(data.encoder.width, tuple(config.model.hidden_units), config.model.dropout)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    steps = max(1, len(y) // training.batch_size)
    for epoch in range(training.epochs):
        network.train()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(training.seed * 1000 + epoch))
        for step in range(steps):
            index = order[step * training.batch_size : (step + 1) * training.batch_size]
            optimizer.zero_grad()
            loss_fn(network(x[index]).squeeze(-1), y[index]).backward()
            optimizer.step()
    trained = time.perf_counter()

    probability = predict_proba(network, data.encoder.transform(prepared.test))
    test_auc = auc(prepared.test[config.data_schema.label].to_numpy(dtype="float64"), probability)
    return {
        "auc": test_auc,
        "train_rows": int(len(y)),
        "test_rows": int(len(prepared.test)),
        "steps_per_epoch": steps,
        "torch_threads": torch.get_num_threads(),
        "import_s": imported - started,
        "prepare_encode_s": encoded - imported,
        "train_s": trained - encoded,
        "predict_s": time.perf_counter() - trained,
    }


def run_bare_once(config_path: Path, threads: int) -> dict[str, Any]:
    """Start a fresh interpreter for the baseline and time it from process start to end."""
    command = [sys.executable, str(Path(__file__).resolve()), "--bare-baseline", str(config_path)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads > 0 else None
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if finished.returncode != 0:
        raise RuntimeError(f"bare baseline exited {finished.returncode}:\n{finished.stderr[-3000:]}")
    line = next(ln for ln in reversed(finished.stdout.splitlines()) if ln.startswith(BARE_RESULT_PREFIX))
    return {"wall_s": wall, **json.loads(line.removeprefix(BARE_RESULT_PREFIX))}


def bench_bare(config_path: Path, repeats: int, threads: int) -> list[dict[str, Any]]:
    """The bare baseline, ``repeats`` times."""
    samples = []
    for i in range(repeats):
        sample = run_bare_once(config_path, threads)
        progress(f"bare baseline {i + 1}/{repeats}: {sample['wall_s']:.2f}s, auc {sample['auc']:.4f}")
        samples.append(sample)
    return samples


# -- 2. up / reuse / down ----------------------------------------------------------------------------
def bench_up(root: Path, repeats: int) -> list[dict[str, float]]:
    """Cold ``up`` on a new state directory, a reusing ``up``, then ``down``; ``repeats`` times."""
    samples = []
    for i in range(repeats):
        env = make_env(root / f"up-{i}")
        sample: dict[str, float] = {}
        try:
            start = time.perf_counter()
            _, reused = env.up(log=log_env)
            sample["cold_up_s"] = time.perf_counter() - start
            if reused:
                raise RuntimeError(f"{env.state_dir} is not fresh: the cold up reused an environment")
            start = time.perf_counter()
            _, reused = env.up(log=log_env)
            sample["reuse_up_s"] = time.perf_counter() - start
            if not reused:
                raise RuntimeError("the second up did not reuse the healthy environment")
        finally:
            sample["down_s"] = stop_env(env)
        progress(
            f"up {i + 1}/{repeats}: cold {sample['cold_up_s']:.2f}s, reuse {sample['reuse_up_s']:.2f}s, "
            f"down {sample['down_s']:.2f}s"
        )
        samples.append(sample)
    return samples


# -- 3. the pipeline through the product path ---------------------------------------------------------
def job_times(env: Any, submission_id: str) -> dict[str, float | None]:
    """The Ray job's own start-to-end time, as the Jobs API recorded it."""
    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(env.dashboard_url, headers=env.ray_auth_header()).get_job_info(submission_id)
    if info.start_time and info.end_time:
        return {"job_s": (info.end_time - info.start_time) / 1000}
    return {"job_s": None}


def run_pipeline_once(env: Any, config_path: Path) -> dict[str, Any]:
    """One ``submit_pipeline`` call, timed end to end, with the run's stage durations and test AUC."""
    from mlflow.tracking import MlflowClient

    from lockgate.jobs import submit_pipeline

    tail: collections.deque[str] = collections.deque(maxlen=60)
    start = time.perf_counter()
    outcome = submit_pipeline(env, config_path, stream=tail.append)
    wall = time.perf_counter() - start
    sample: dict[str, Any] = {
        "wall_s": wall,
        "submission_id": outcome.submission_id,
        "status": outcome.status,
        "outcome": outcome.outcome,
        "run_id": outcome.run_id,
        "exit_code": outcome.exit_code,
        "message": outcome.message,
        **job_times(env, outcome.submission_id),
    }
    metrics = MlflowClient().get_run(outcome.run_id).data.metrics if outcome.run_id else {}
    sample["stages_s"] = {s: metrics[f"duration_s.{s}"] for s in STAGES if f"duration_s.{s}" in metrics}
    sample["test_auc"] = metrics.get("test.auc")
    if outcome.outcome not in ("registered", "blocked"):
        sample["log_tail"] = list(tail)
        progress("pipeline run did not finish; last job log lines:\n      " + "\n      ".join(tail))
    return sample


def bench_pipeline(root: Path, config_path: Path, repeats: int) -> list[dict[str, Any]]:
    """``repeats`` pipeline runs on one environment, stopped afterwards whatever happens."""
    env = make_env(root / "pipeline-env")
    samples = []
    try:
        env.up(log=log_env)
        for i in range(repeats):
            sample = run_pipeline_once(env, config_path)
            progress(
                f"pipeline {i + 1}/{repeats}: {sample['wall_s']:.2f}s, {sample['outcome']} "
                f"(exit {sample['exit_code']}), test.auc {sample['test_auc']}"
            )
            samples.append(sample)
    finally:
        stop_env(env)
    return samples


# -- report ------------------------------------------------------------------------------------------
def summarise(bare: list[dict], ups: list[dict], runs: list[dict]) -> dict[str, Any]:
    """Medians, per-stage medians, the overhead ratio and the AUC check."""
    bare_wall = median([s["wall_s"] for s in bare])
    pipeline_wall = median([s["wall_s"] for s in runs])
    stage_medians = {
        stage: median([r["stages_s"][stage] for r in runs if stage in r["stages_s"]]) for stage in STAGES
    }
    return {
        "bare_wall_s": bare_wall,
        "bare_train_s": median([s["train_s"] for s in bare]),
        "bare_auc": median([s["auc"] for s in bare]),
        "cold_up_s": median([s["cold_up_s"] for s in ups if "cold_up_s" in s]),
        "reuse_up_s": median([s["reuse_up_s"] for s in ups if "reuse_up_s" in s]),
        "down_s": median([s["down_s"] for s in ups]),
        "pipeline_wall_s": pipeline_wall,
        "pipeline_job_s": median([r["job_s"] for r in runs if r.get("job_s") is not None]),
        "pipeline_test_auc": median([r["test_auc"] for r in runs if r.get("test_auc") is not None]),
        "stage_medians_s": stage_medians,
        "overhead_ratio": pipeline_wall / bare_wall if pipeline_wall and bare_wall else None,
    }


def print_table(summary: dict[str, Any], bare: list[dict], ups: list[dict], runs: list[dict]) -> None:
    """The human-readable result."""
    rows = [
        ("lockgate up, cold (fresh state dir)", summary["cold_up_s"], [s["cold_up_s"] for s in ups]),
        ("lockgate up, reusing healthy env", summary["reuse_up_s"], [s["reuse_up_s"] for s in ups]),
        ("lockgate down", summary["down_s"], [s["down_s"] for s in ups]),
        ("pipeline, submit_pipeline end to end", summary["pipeline_wall_s"], [r["wall_s"] for r in runs]),
        (
            "pipeline, Ray job start to end",
            summary["pipeline_job_s"],
            [r["job_s"] for r in runs if r.get("job_s") is not None],
        ),
        ("bare script, process start to end", summary["bare_wall_s"], [s["wall_s"] for s in bare]),
        ("bare script, training loop only", summary["bare_train_s"], [s["train_s"] for s in bare]),
    ]
    print()
    print(f"{'measurement':<40} {'median':>9}   samples (s)")
    print("-" * 80)
    for name, value, samples in rows:
        print(f"{name:<40} {fmt(value):>9}   {fmt_samples(samples)}")
    print()
    print(f"{'pipeline stage (duration_s.*)':<40} {'median':>9}   samples (s)")
    print("-" * 80)
    for stage in STAGES:
        samples = [r["stages_s"][stage] for r in runs if stage in r["stages_s"]]
        print(f"{stage:<40} {fmt(summary['stage_medians_s'][stage]):>9}   {fmt_samples(samples)}")
    stage_sum = sum(v for v in summary["stage_medians_s"].values() if v is not None)
    print(f"{'sum of stage medians':<40} {fmt(stage_sum):>9}")
    print()
    outcomes = ", ".join(f"{r['outcome']} (exit {r['exit_code']})" for r in runs)
    print(f"{'run outcomes':<40}    {outcomes}")
    print(f"{'bare script torch threads':<40} {bare[0]['torch_threads']:>9}")
    ratio = summary["overhead_ratio"]
    print(f"{'overhead ratio (pipeline / bare wall)':<40} {fmt(ratio, 'x'):>9}")
    bare_auc, pipe_auc = summary["bare_auc"], summary["pipeline_test_auc"]
    bare_aucs = [s["auc"] for s in bare]
    pipe_aucs = [r["test_auc"] for r in runs if r.get("test_auc") is not None]
    print(
        f"{'AUC, bare script (median)':<40} {fmt(bare_auc, '', 4):>9}   "
        f"{', '.join(f'{a:.4f}' for a in bare_aucs)}"
    )
    print(
        f"{'AUC, pipeline test.auc (median)':<40} {fmt(pipe_auc, '', 4):>9}   "
        f"{', '.join(f'{a:.4f}' for a in pipe_aucs)}"
    )
    if bare_auc is not None and pipe_auc is not None:
        print(f"{'AUC difference (pipeline - bare)':<40} {pipe_auc - bare_auc:>+9.4f}")
    print()


def write_results(stamp: str, args: argparse.Namespace, payload: dict[str, Any]) -> Path:
    """benchmarks/results/pipeline-<timestamp>.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"pipeline-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "timestamp": stamp,
                "repeats": args.repeats,
                "bare_threads": args.bare_threads,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "ports": {
                    "mlflow": MLFLOW_PORT,
                    "ray_gcs": RAY_GCS_PORT,
                    "ray_dashboard": RAY_DASHBOARD_PORT,
                },
                "data": {"rows": DATA_ROWS, "seed": DATA_SEED},
                **payload,
            },
            indent=2,
            default=str,
        )
    )
    return path


# -- entry point -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """--repeats N (default 3), --quick (repeats 1), --bare-threads N (default 1)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="samples per measurement (default 3)")
    parser.add_argument("--quick", action="store_true", help="one sample per measurement")
    parser.add_argument(
        "--bare-threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of the bare script (default 1, as a Ray Train worker; 0: torch's default)",
    )
    parser.add_argument("--bare-baseline", metavar="PIPELINE_YAML", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every measurement, print the table, write the JSON."""
    args = parse_args(argv)
    if args.bare_baseline:
        print(BARE_RESULT_PREFIX + json.dumps(bare_baseline(args.bare_baseline)), flush=True)
        return 0
    raise_on_sigterm()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(tempfile.mkdtemp(prefix="lockgate-bench-"))
    load_before = os.getloadavg()
    progress(f"work dir {root}; repeats {args.repeats}; load average {load_before}")
    try:
        config_path = write_pipeline_files(root / "pipeline", model_name=f"bench-{stamp}")
        bare = bench_bare(config_path, args.repeats, args.bare_threads)
        ups = bench_up(root, args.repeats)
        runs = bench_pipeline(root, config_path, args.repeats)
    except BaseException:
        progress(f"failed: state and logs kept in {root}")
        raise
    summary = summarise(bare, ups, runs)
    print_table(summary, bare, ups, runs)
    path = write_results(
        stamp,
        args,
        {
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "summary": summary,
            "bare": bare,
            "up": ups,
            "pipeline": runs,
        },
    )
    print(f"results written to {path.relative_to(REPO)}")
    shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r["outcome"] in ("registered", "blocked") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
