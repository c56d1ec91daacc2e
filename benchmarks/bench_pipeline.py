"""Benchmark the local platform: `lockgate up`, a full pipeline run, and the same training as a bare script.

Run from the repository root:

    .venv/bin/python benchmarks/bench_pipeline.py            # 3 repeats of everything
    .venv/bin/python benchmarks/bench_pipeline.py --quick    # 1 repeat
    .venv/bin/python benchmarks/bench_pipeline.py --example diabetes --profile   # a team trainer

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

With ``--example diabetes|wine`` a team trainer is measured instead (``--profile`` adds one sampled run):

4. Bare: the example's own ``train`` function, imported (``load_trainer``) and called in a plain Python
   subprocess on the pipeline's prepared split (``prepare_frame``), then its held-out r2 / accuracy; timed
   from process start to end. Pipeline: ``submit_pipeline`` of a copy of ``examples/<name>`` (its own model
   name and event log) on one environment. The two alternate, round by round. Besides the stages, each run
   records its timeline: ``submit_job`` (packaging and upload), the job's start and end, the driver's first
   output and log line, the MLflow run's start and end, each stage's start and end, and the outcome lookup.
   ``--profile``: one more run with ``py-spy record`` on the job driver (wall time, idle included) and on
   Ray Train's controller and worker (CPU), summarised by function.

5. The floor, after each pipeline run on the same environment: a Ray job shipped and followed as a run is
   (same runtime environment, ``lockgate.jobs.follow_job``, ending at the result line) whose driver only
   prints its result line, and one whose driver first runs a no-op Ray Train fit with the run's scaling,
   ``FailureConfig`` and trainer class. The "reachable ratio" is (that floor + the bare script's training
   loop) / the bare script's wall: what a run could reach if everything but Ray's fixed costs were free.

``--interleaved`` alternates 1. and 3. on the running environment instead (paired ratios: a shared
machine's load changes by the minute). ``--rows N`` (MLP data size) and ``--workers N`` (the MLP's Ray
Train workers) vary the main measurement; ``--port-offset N`` moves every port (another benchmark).

Everything listens on 127.0.0.1 on this script's own ports; every environment is stopped in a ``finally``
(Ctrl-C and SIGTERM included). Results are printed as a table and written to
``benchmarks/results/pipeline-<timestamp>.json`` (``pipeline-<example>-<timestamp>.json``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO, BENCHMARKS = Path(__file__).resolve().parents[1], Path(__file__).resolve().parent
for _entry in (BENCHMARKS, REPO):
    if str(_entry) not in sys.path:
        sys.path.insert(0, str(_entry))

# This benchmark's own ports: other environments (a developer's, the test session's) use different ones.
MLFLOW_PORT, RAY_GCS_PORT, RAY_DASHBOARD_PORT = 27055, 27390, 27275
PORT_OFFSET = 0
"""Added to every port above (``--port-offset``): two benchmarks on one machine do not collide."""
NUM_CPUS = 2
DATA_ROWS, DATA_SEED = 20_000, 0
STAGES = ("prepare", "train", "package", "evaluate", "gate", "register", "rollout")
EXAMPLES = ("diabetes", "wine")
# The held-out metric each example is judged on (the same number from the bare script and the run).
EXAMPLE_METRIC = {"regression": "r2", "multiclass": "accuracy", "binary": "accuracy"}
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

    ports = Ports.from_base(
        mlflow=MLFLOW_PORT + PORT_OFFSET,
        ray_gcs=RAY_GCS_PORT + PORT_OFFSET,
        ray_dashboard=RAY_DASHBOARD_PORT + PORT_OFFSET,
    )
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
def write_pipeline_files(
    directory: Path, model_name: str, rows: int = DATA_ROWS, workers: int | None = None
) -> Path:
    """The shipped pipeline.yaml with its own data (``rows`` loans), event log and model name, in ``directory``.

    ``directory`` becomes the Ray job's working directory, so it holds nothing but these files. ``workers``
    replaces ``training.scaling.num_workers`` (the bare script always trains in one process).
    """
    import yaml

    from pipeline.config import load_config
    from pipeline.data import make_loans, write_table

    directory.mkdir(parents=True, exist_ok=True)
    write_table(make_loans(rows=rows, seed=DATA_SEED), directory / "data.parquet")
    raw = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    raw["data"]["uri"] = "data.parquet"  # relative to the pipeline file, shipped with the job's working_dir
    raw["events"]["log_file"] = str(directory / "events.jsonl")
    raw["registry"]["model_name"] = model_name
    if workers is not None:
        raw["training"]["scaling"]["num_workers"] = workers
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

    from contracts.vocabulary import Task
    from pipeline.config import load_config
    from pipeline.evaluate import compute_metrics
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
    labels = prepared.test[config.data_schema.label].to_numpy(dtype="float64")
    test_auc = compute_metrics(labels, probability, Task.binary)["auc"]
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


def run_bare_once(config_path: Path, threads: int, example: bool = False) -> dict[str, Any]:
    """Start a fresh interpreter for the baseline (an example's trainer with ``example``), time it start to end."""
    flag = "--bare-example" if example else "--bare-baseline"
    command = [sys.executable, str(Path(__file__).resolve()), flag, str(config_path)]
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


# -- examples: a team trainer's pipeline and the same code as a bare script ----------------------------
def write_example_files(directory: Path, example: str, model_name: str) -> Path:
    """A copy of ``examples/<example>`` (pipeline file, data, trainers) with its own model name and event log.

    The copy is the Ray job's working directory, as a team's repository would be.
    """
    import yaml

    from pipeline.config import load_config

    shutil.copytree(REPO / "examples" / example, directory, ignore=shutil.ignore_patterns("__pycache__"))
    path = directory / "pipeline.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["events"]["log_file"] = str(directory.parent / f"events-{example}.jsonl")
    raw["registry"]["model_name"] = model_name
    raw["rollout"] = {"enabled": False}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_config(path)
    return path


def bare_example(config_file: str) -> dict[str, Any]:
    """In the child process: the example's own trainer on the pipeline's prepared split, then its test metric."""
    started = time.perf_counter()
    from sklearn.metrics import accuracy_score, r2_score

    from contracts.vocabulary import Task
    from pipeline.config import load_config
    from pipeline.prepare import load_table, prepare_frame
    from pipeline.trainer import TrainerInput, load_trainer

    config_path = Path(config_file).resolve()
    sys.path.insert(0, str(config_path.parent))  # the trainer module, as the job's working directory has it
    config = load_config(config_path)
    trainer = load_trainer(str(config.training.trainer))
    imported = time.perf_counter()
    frame, _ = load_table(config.data, config_path.parent)
    prepared = prepare_frame(frame, config.data_schema, config.split, config.task)
    features, label = list(config.features), config.data_schema.label
    data = TrainerInput(
        train=prepared.train,
        features=tuple(features),
        label=label,
        task=config.task,
        schema=config.data_schema,
        params=dict(config.training.params),
        seed=config.training.seed,
    )
    split = time.perf_counter()
    model = trainer(data)
    trained = time.perf_counter()
    predicted = model.predict(prepared.test[features])
    truth = prepared.test[label]
    metric = EXAMPLE_METRIC[config.task.value]
    value = r2_score(truth, predicted) if config.task == Task.regression else accuracy_score(truth, predicted)
    return {
        "metric": metric,
        "value": float(value),
        "train_rows": int(len(prepared.train)),
        "test_rows": int(len(prepared.test)),
        "import_s": imported - started,
        "prepare_s": split - imported,
        "train_s": trained - split,
        "predict_s": time.perf_counter() - trained,
    }


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
    """The Ray job's own start-to-end time, as the Jobs API recorded it.

    The submitter returns at the run's result line, before the job's process has exited: wait (up to 60 s,
    outside the timed part) for the job to end first.
    """
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(env.dashboard_url, headers=env.ray_auth_header())
    deadline = time.monotonic() + 60
    while not client.get_job_status(submission_id).is_terminal() and time.monotonic() < deadline:
        time.sleep(0.2)
    info = client.get_job_info(submission_id)
    if info.start_time and info.end_time:
        return {"job_s": (info.end_time - info.start_time) / 1000}
    return {"job_s": None}


@contextlib.contextmanager
def timed_submit() -> Any:
    """Time ``JobSubmissionClient.submit_job`` inside ``submit_pipeline`` (it packages and uploads the
    working directory and the code modules), by wrapping the client ``lockgate.jobs`` builds; yields a dict."""
    import lockgate.jobs as jobs

    found: dict[str, float] = {}
    original = jobs.job_client

    def client_with_timing(env: Any) -> Any:
        client = original(env)
        submit = client.submit_job

        def submit_job(**kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return submit(**kwargs)
            finally:
                found["submit_job_s"] = time.perf_counter() - start

        client.submit_job = submit_job
        return client

    original_find_run = jobs.find_run

    def find_run_with_timing(*args: Any, **kwargs: Any) -> Any:
        found["find_run_started"] = time.time()
        try:
            return original_find_run(*args, **kwargs)
        finally:
            found["find_run_s"] = time.time() - found["find_run_started"]

    jobs.job_client = client_with_timing
    jobs.find_run = find_run_with_timing
    try:
        yield found
    finally:
        jobs.job_client = original
        jobs.find_run = original_find_run


LOG_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}),(\d{3}) ")


def log_time(line: str) -> float | None:
    """The epoch time of a driver log line (``logging``'s asctime), None for lines without one."""
    match = LOG_TIME.match(line)
    if not match:
        return None
    stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))
    return stamp + int(match.group(2)) / 1000


def timeline(
    env: Any,
    submission_id: str,
    submitted_at: float,
    submit: dict[str, float],
    run: Any,
    lines: list[tuple[float, str]],
) -> dict[str, Any]:
    """Where a run's wall time went outside its stages: submit, job start, driver start, MLflow run, finish.

    Seconds from the moment ``submit_pipeline`` was called (all clocks are this machine's).
    """
    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(env.dashboard_url, headers=env.ray_auth_header()).get_job_info(submission_id)
    # The first line is submit_pipeline's own ("submitted Ray job ..."): the driver's output follows it.
    first_line = min((t for t, line in lines if not line.startswith("submitted Ray job")), default=None)
    stamped = [(log_time(line), line) for _, line in lines]
    stamped = [(t, line) for t, line in stamped if t is not None]
    marks: dict[str, float | None] = {
        "submit_job_returned": submit.get("submit_job_s"),
        "job_start": info.start_time / 1000 - submitted_at if info.start_time else None,
        "first_driver_output": first_line - submitted_at if first_line else None,
        "first_driver_log": stamped[0][0] - submitted_at if stamped else None,
        "mlflow_run_start": run.info.start_time / 1000 - submitted_at if run else None,
        "mlflow_run_end": run.info.end_time / 1000 - submitted_at if run and run.info.end_time else None,
        "job_end": info.end_time / 1000 - submitted_at if info.end_time else None,
        "last_driver_output": max((t for t, _ in lines), default=submitted_at) - submitted_at,
        # submit_pipeline then reads the outcome from MLflow (entering connected(env) checks health first).
        "find_run_start": submit["find_run_started"] - submitted_at if "find_run_started" in submit else None,
        "find_run_end": submit["find_run_started"] + submit["find_run_s"] - submitted_at
        if "find_run_s" in submit
        else None,
    }
    for stamp, line in stamped:
        match = re.search(r"stage (\w+): (started|[\d.]+s)$", line)
        if match:
            kind = "start" if match.group(2) == "started" else "end"
            marks[f"stage_{match.group(1)}_{kind}"] = stamp - submitted_at
    return {
        "marks": {k: round(v, 3) for k, v in marks.items() if v is not None},
        "driver_log": [f"{t - submitted_at:7.2f} {line[:200]}" for t, line in stamped][:200],
    }


def run_pipeline_once(env: Any, config_path: Path) -> dict[str, Any]:
    """One ``submit_pipeline`` call, timed end to end, with the run's stage durations and test AUC."""
    from mlflow.tracking import MlflowClient

    from lockgate.jobs import submit_pipeline

    tail: collections.deque[str] = collections.deque(maxlen=60)
    lines: list[tuple[float, str]] = []

    def keep(line: str) -> None:
        tail.append(line)
        lines.append((time.time(), line))

    submitted_at = time.time()
    start = time.perf_counter()
    with timed_submit() as submit_s:
        outcome = submit_pipeline(env, config_path, stream=keep)
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
    from lockgate.localenv import connected

    with connected(env):  # MLflow's client finds the environment's server only through the process env
        run = MlflowClient().get_run(outcome.run_id) if outcome.run_id else None
    metrics = run.data.metrics if run else {}
    sample["stages_s"] = {s: metrics[f"duration_s.{s}"] for s in STAGES if f"duration_s.{s}" in metrics}
    sample["test_auc"] = metrics.get("test.auc")
    sample["test_metrics"] = {k: v for k, v in metrics.items() if k.startswith("test.") and k.count(".") == 1}
    sample["timeline_s"] = timeline(env, outcome.submission_id, submitted_at, submit_s, run, lines)
    if outcome.outcome not in ("registered", "blocked"):
        sample["log_tail"] = list(tail)
        progress("pipeline run did not finish; last job log lines:\n      " + "\n      ".join(tail))
    return sample


# -- the floor: what any run costs before its own work --------------------------------------------------
FLOOR_SCRIPT = """
import json, sys, time
started = time.time()
from contracts.settings import RESULT_MARKER
timings = {}
if sys.argv[2] == "train":
    import ray.train
    from contracts.settings import Settings
    from pipeline.config import load_config
    from pipeline.trainer import ray_train_configs
    config = load_config(sys.argv[1])
    if config.training.trainer is None:
        from ray.train.torch import TorchTrainer as Trainer
    else:
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer as Trainer
    imported = time.time()
    def loop(_):
        import ray.train
        ray.train.report({"noop": 1})
    storage = Settings.from_environ().train_storage
    scaling, run = ray_train_configs(config.training, f"floor-{time.time_ns()}", storage)
    Trainer(loop, scaling_config=scaling, run_config=run).fit()
    timings = {"import_s": imported - started, "fit_s": time.time() - imported}
print(RESULT_MARKER, json.dumps({"outcome": "registered", "run_id": None, "floor": timings}), flush=True)
"""
"""A job's driver for the floor: with ``job`` it only prints the result line; with ``train`` it first runs a
no-op Ray Train fit (one ``report``) with the run's own scaling, FailureConfig and storage, the trainer class
the run would use (TorchTrainer for the built-in MLP: its workers import torch and join a process group)."""


def run_floor_once(env: Any, config_path: Path, kind: str) -> dict[str, Any]:
    """One floor job (``job`` or ``train``), shipped as a run is and followed as a run is; timed end to end."""
    import shlex

    from lockgate import jobs

    client = jobs.job_client(env)
    submission_id = f"floor-{kind}-{time.strftime('%H%M%S')}-{os.urandom(3).hex()}"
    script = f"python -c {shlex.quote(FLOOR_SCRIPT)} {shlex.quote(config_path.name)} {kind}"
    start = time.perf_counter()
    client.submit_job(
        entrypoint=script,
        submission_id=submission_id,
        runtime_env=jobs.job_runtime_env(config_path, submission_id),
    )
    submitted = time.perf_counter() - start
    tail: collections.deque[str] = collections.deque(maxlen=30)
    result, status = jobs.follow_job(client, submission_id, tail.append, timeout_s=900)
    wall = time.perf_counter() - start
    if result is None:
        raise RuntimeError(
            f"floor job {submission_id} ended {status.value} without a result:\n" + "\n".join(tail)
        )
    return {"kind": kind, "wall_s": wall, "submit_job_s": submitted, **result["floor"]}


def bench_floor(env: Any, config_path: Path, floors: list[dict[str, Any]], round_index: int) -> None:
    """Both floor jobs once, appended to ``floors``."""
    for kind in ("job", "train"):
        sample = run_floor_once(env, config_path, kind)
        progress(f"floor {kind} {round_index + 1}: {sample['wall_s']:.2f}s")
        floors.append(sample)


def summarise_floor(floors: list[dict[str, Any]], bare_wall: float | None, bare_train: float | None) -> dict:
    """Floor medians and the smallest ratio a run could reach: the floor plus the bare script's own training."""
    job = median([f["wall_s"] for f in floors if f["kind"] == "job"])
    train = median([f["wall_s"] for f in floors if f["kind"] == "train"])
    fit = median([f["fit_s"] for f in floors if f["kind"] == "train"])
    reachable = (train + bare_train) / bare_wall if train and bare_wall and bare_train is not None else None
    return {"job_s": job, "train_job_s": train, "noop_fit_s": fit, "reachable_ratio": reachable}


def print_floor(floor: dict[str, Any], floors: list[dict[str, Any]]) -> None:
    """The floor lines of a table."""
    for label, key, kind in (
        ("floor: a Ray job that only prints its result", "job_s", "job"),
        ("floor: a Ray job with a no-op Ray Train fit", "train_job_s", "train"),
    ):
        samples = [f["wall_s"] for f in floors if f["kind"] == kind]
        print(f"{label:<57} {fmt(floor[key]):>9}   {fmt_samples(samples)}")
    print(f"{'  of which the no-op fit() call':<57} {fmt(floor['noop_fit_s']):>9}")
    print(
        f"{'reachable ratio ((floor + bare training) / bare wall)':<57} {fmt(floor['reachable_ratio'], 'x'):>9}"
    )


def pipeline_round(
    env: Any, config_path: Path, i: int, repeats: int, detail: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """One timed pipeline run of round ``i``, its progress line ending with ``detail(sample)``."""
    sample = run_pipeline_once(env, config_path)
    progress(
        f"pipeline {i + 1}/{repeats}: {sample['wall_s']:.2f}s, {sample['outcome']} "
        f"(exit {sample['exit_code']}), {detail(sample)}"
    )
    return sample


def bench_pipeline(
    root: Path, config_path: Path, repeats: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``repeats`` pipeline runs, each followed by the floor jobs, on one environment, stopped afterwards."""
    env = make_env(root / "pipeline-env")
    samples: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    try:
        env.up(log=log_env)
        for i in range(repeats):
            samples.append(
                pipeline_round(env, config_path, i, repeats, lambda s: f"test.auc {s['test_auc']}")
            )
            bench_floor(env, config_path, floors, i)
    finally:
        stop_env(env)
    return samples, floors


def interleaved_rounds(
    env: Any, config_path: Path, repeats: int, threads: int, example: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``repeats`` rounds on a running environment: the bare script and a pipeline run (the order alternating
    per round, so that on a shared, busy machine the pairs see the same load), then the floor jobs."""
    bare: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    for i in range(repeats):
        for kind in ("bare", "pipeline") if i % 2 == 0 else ("pipeline", "bare"):
            if kind == "bare":
                sample = run_bare_once(config_path, threads, example=example)
                result = (
                    f"(train {sample['train_s']:.2f}s), {sample['metric']} {sample['value']:.4f}"
                    if example
                    else f"auc {sample['auc']:.4f}"
                )
                progress(f"bare {i + 1}/{repeats}: {sample['wall_s']:.2f}s, {result}")
                bare.append(sample)
            else:
                runs.append(
                    pipeline_round(
                        env, config_path, i, repeats, lambda s: f"stages {fmt_stages(s['stages_s'])}"
                    )
                )
        bench_floor(env, config_path, floors, i)
    return bare, runs, floors


def bench_interleaved(
    root: Path, config_path: Path, repeats: int, threads: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``--interleaved``: bare script and pipeline run alternate on one running environment (see
    ``interleaved_rounds``)."""
    env = make_env(root / "pipeline-env")
    try:
        env.up(log=log_env)
        return interleaved_rounds(env, config_path, repeats, threads, example=False)
    finally:
        stop_env(env)


def bench_example(
    root: Path, config_path: Path, repeats: int, threads: int, profile: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None]:
    """Bare script and pipeline run, interleaved (see ``interleaved_rounds``), on one environment.

    With ``profile``, one more pipeline run (not counted) is sampled with py-spy: the job driver (wall time,
    idle included) and Ray Train's processes (CPU).
    """
    env = make_env(root / "example-env")
    profiled = None
    try:
        env.up(log=log_env)
        bare, runs, floors = interleaved_rounds(env, config_path, repeats, threads, example=True)
        if profile:
            profiled = profile_pipeline(env, config_path, root / "profile")
    finally:
        stop_env(env)
    return bare, runs, floors, profiled


def fmt_stages(stages: dict[str, float]) -> str:
    """``prepare 0.12 train 9.80 ...``."""
    return " ".join(f"{k} {v:.2f}" for k, v in stages.items())


# The calls a pipeline run's wall time is suspected to go to (reported whatever their share).
PIPELINE_FOCUS = (
    "(pipeline/",
    "ray/_private/worker.py",
    "DataParallelTrainer",
    "fit (ray/train",
    "mlflow/tracking/fluent.py",
    "log_model",
    "infer_signature",
    "load_model",
    "_find_and_load (",
    "upload",
    "package",
)
PROFILED_NAMES = ("pipeline.run", "ray::RayTrainWorker", "ray::TrainController", "ray::_TrainSession")


def profile_pipeline(env: Any, config_path: Path, out_dir: Path) -> dict[str, Any]:
    """One pipeline run with ``py-spy record`` attached to the job driver and Ray Train's actors as they appear."""
    import threading

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return {"error": "py-spy not installed (pip install py-spy)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    state = env.read_state()
    ray_session = os.getsid(state.ray.pid) if state else None
    rate = 50
    recorders: dict[int, tuple[str, Path, subprocess.Popen]] = {}
    stop = threading.Event()

    ray_temp = str(env.ray_temp_dir)

    def name_of(pid: int) -> str | None:
        """The profiled name of a process of this environment (Ray's session, or a job driver in its temp dir)."""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            command = b" ".join(argv).decode(errors="replace")
            name = next((n for n in PROFILED_NAMES if n in command), None)
            if name is None:
                return None
            if name == "pipeline.run":
                # The job driver leads its own session; its working directory is the job's, in Ray's temp dir.
                python = "python" in argv[0].decode(errors="replace").rsplit("/", 1)[-1]
                return name if python and os.readlink(f"/proc/{pid}/cwd").startswith(ray_temp) else None
            return name if ray_session is not None and os.getsid(pid) == ray_session else None
        except OSError:
            return None

    def watch() -> None:
        while not stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) in recorders:
                    continue
                name = name_of(int(entry))
                if name is None:
                    continue
                driver = name == "pipeline.run"
                path = out_dir / f"{name.replace(':', '')}-{entry}.txt"
                command = [py_spy, "record", "--pid", entry, "--rate", str(rate), "--format", "raw"]
                command += ["--nonblocking", "--duration", "900", "--output", str(path)]
                if driver:
                    command.append("--idle")  # the driver mostly waits: wall time, not CPU
                log = (out_dir / f"py-spy-{entry}.log").open("wb")
                process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
                recorders[int(entry)] = (name, path, process)
            stop.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        sample = run_pipeline_once(env, config_path)
    finally:
        stop.set()
        watcher.join(timeout=5)
        for _, _, process in recorders.values():
            try:
                process.wait(timeout=30)  # py-spy ends when its target exits
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
    from pyspy import summarise_collapsed

    found: dict[str, Any] = {"rate_hz": rate, "run": sample}
    for pid, (name, path, _) in recorders.items():
        text = path.read_text(errors="replace") if path.exists() else ""
        if not text:
            continue
        within = "main (pipeline/run.py)" if name == "pipeline.run" else None
        found[f"{name} {pid}"] = summarise_collapsed(text, rate, within=within, focus=PIPELINE_FOCUS)
    progress(f"profiled pipeline run: {sample['wall_s']:.2f}s; processes sampled: {sorted(found)}")
    return found


# -- report ------------------------------------------------------------------------------------------
def summarise(bare: list[dict], ups: list[dict], runs: list[dict], floors: list[dict]) -> dict[str, Any]:
    """Medians, per-stage medians, the overhead ratio, the floor and the AUC check."""
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
        "paired_ratios": [r["wall_s"] / b["wall_s"] for r, b in zip(runs, bare, strict=False)],
        "floor": summarise_floor(floors, bare_wall, median([s["train_s"] for s in bare])),
    }


def print_table(
    summary: dict[str, Any], bare: list[dict], ups: list[dict], runs: list[dict], floors: list[dict]
) -> None:
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
    paired = ", ".join(f"{r:.2f}" for r in summary["paired_ratios"])
    print(
        f"{'overhead ratio (pipeline / bare wall)':<40} {fmt(ratio, 'x'):>9}   paired: {paired}  (target <= 1.5x)"
    )
    print_floor(summary["floor"], floors)
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


def write_results(
    stamp: str, args: argparse.Namespace, payload: dict[str, Any], name: str = "pipeline"
) -> Path:
    """benchmarks/results/<name>-<timestamp>.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{stamp}.json"
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
                    "mlflow": MLFLOW_PORT + PORT_OFFSET,
                    "ray_gcs": RAY_GCS_PORT + PORT_OFFSET,
                    "ray_dashboard": RAY_DASHBOARD_PORT + PORT_OFFSET,
                },
                "data": {"rows": args.rows, "seed": DATA_SEED},
                "workers": args.workers,
                "interleaved": args.interleaved,
                **payload,
            },
            indent=2,
            default=str,
        )
    )
    return path


def summarise_example(bare: list[dict], runs: list[dict], floors: list[dict]) -> dict[str, Any]:
    """Medians of both sides, the ratio (of medians, and paired per round), stages and the run's timeline."""
    bare_wall = median([s["wall_s"] for s in bare])
    pipeline_wall = median([s["wall_s"] for s in runs])
    metric = bare[0]["metric"] if bare else None
    marks = sorted(
        {k for r in runs for k in r["timeline_s"]["marks"]},
        key=lambda k: (
            median([r["timeline_s"]["marks"][k] for r in runs if k in r["timeline_s"]["marks"]]) or 0
        ),
    )
    return {
        "bare_wall_s": bare_wall,
        "bare_parts_s": {
            part: median([s[part] for s in bare])
            for part in ("import_s", "prepare_s", "train_s", "predict_s")
        },
        "bare_metric": {metric: median([s["value"] for s in bare])} if metric else {},
        "pipeline_wall_s": pipeline_wall,
        "pipeline_job_s": median([r["job_s"] for r in runs if r.get("job_s") is not None]),
        "pipeline_metric": {f"test.{metric}": median([r["test_metrics"].get(f"test.{metric}") for r in runs])}
        if metric
        else {},
        "stage_medians_s": {
            stage: median([r["stages_s"][stage] for r in runs if stage in r["stages_s"]]) for stage in STAGES
        },
        "timeline_medians_s": {
            k: median([r["timeline_s"]["marks"][k] for r in runs if k in r["timeline_s"]["marks"]])
            for k in marks
        },
        "overhead_ratio": pipeline_wall / bare_wall if pipeline_wall and bare_wall else None,
        "paired_ratios": [r["wall_s"] / b["wall_s"] for r, b in zip(runs, bare, strict=False)],
        "floor": summarise_floor(floors, bare_wall, median([s["train_s"] for s in bare])),
        "outcomes": [r["outcome"] for r in runs],
    }


def print_example(
    example: str, summary: dict[str, Any], bare: list[dict], runs: list[dict], floors: list[dict]
) -> None:
    """The example's table: both walls, the ratio, the stages and the timeline of a run."""
    print()
    print(f"example {example}: {'measurement':<46} {'median':>9}   samples (s)")
    print("-" * 90)
    print(
        f"{'bare script, process start to end':<57} {fmt(summary['bare_wall_s']):>9}   "
        f"{fmt_samples([s['wall_s'] for s in bare])}"
    )
    for part, value in summary["bare_parts_s"].items():
        print(f"{'  bare ' + part.removesuffix('_s'):<57} {fmt(value):>9}")
    print(
        f"{'pipeline, submit_pipeline end to end':<57} {fmt(summary['pipeline_wall_s']):>9}   "
        f"{fmt_samples([r['wall_s'] for r in runs])}"
    )
    for stage, value in summary["stage_medians_s"].items():
        print(
            f"{'  stage ' + stage:<57} {fmt(value):>9}   "
            f"{fmt_samples([r['stages_s'][stage] for r in runs if stage in r['stages_s']])}"
        )
    print(f"{'timeline of a run (s after submit_pipeline was called)':<57}")
    for mark, value in summary["timeline_medians_s"].items():
        print(f"{'  ' + mark:<57} {fmt(value):>9}")
    ratio = summary["overhead_ratio"]
    paired = ", ".join(f"{r:.2f}" for r in summary["paired_ratios"])
    print(
        f"{'overhead ratio (pipeline / bare wall)':<57} {fmt(ratio, 'x'):>9}   paired: {paired}  (target <= 1.5x)"
    )
    print_floor(summary["floor"], floors)
    print(
        f"{'held-out metric, bare vs pipeline':<57} {summary['bare_metric']} vs {summary['pipeline_metric']}"
    )
    print()


def main_example(args: argparse.Namespace) -> int:
    """``--example``: bare script and pipeline interleaved on one environment; table and JSON."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(tempfile.mkdtemp(prefix="lockgate-bench-"))
    load_before = os.getloadavg()
    progress(f"work dir {root}; example {args.example}; repeats {args.repeats}; load average {load_before}")
    try:
        config_path = write_example_files(root / args.example, args.example, f"bench-{args.example}-{stamp}")
        bare, runs, floors, profiled = bench_example(
            root, config_path, args.repeats, args.bare_threads, args.profile
        )
    except BaseException:
        progress(f"failed: state and logs kept in {root}")
        raise
    summary = summarise_example(bare, runs, floors)
    print_example(args.example, summary, bare, runs, floors)
    path = write_results(
        stamp,
        args,
        {
            "example": args.example,
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "summary": summary,
            "bare": bare,
            "pipeline": runs,
            "floor": floors,
            "profile": profiled,
        },
        name=f"pipeline-{args.example}",
    )
    print(f"results written to {path.relative_to(REPO)}; load average {load_before} -> {os.getloadavg()}")
    shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r["outcome"] in ("registered", "blocked") for r in runs) else 1


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
    parser.add_argument(
        "--example",
        choices=EXAMPLES,
        help="measure examples/<name> (a team trainer) against its trainer run as a bare script instead",
    )
    parser.add_argument(
        "--profile", action="store_true", help="with --example: one more run, sampled with py-spy"
    )
    parser.add_argument(
        "--interleaved",
        action="store_true",
        help="bare script and pipeline alternate on the running environment (paired under the same load)",
    )
    parser.add_argument(
        "--rows", type=int, default=DATA_ROWS, help=f"loans in the MLP's data set (default {DATA_ROWS})"
    )
    parser.add_argument(
        "--workers", type=int, help="the MLP's Ray Train workers (default: the shipped pipeline.yaml's)"
    )
    parser.add_argument(
        "--port-offset", type=int, default=0, help="added to this benchmark's ports (another one is running)"
    )
    parser.add_argument("--bare-baseline", metavar="PIPELINE_YAML", help=argparse.SUPPRESS)
    parser.add_argument("--bare-example", metavar="PIPELINE_YAML", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every measurement, print the table, write the JSON."""
    global PORT_OFFSET
    args = parse_args(argv)
    PORT_OFFSET = args.port_offset
    if args.bare_baseline:
        print(BARE_RESULT_PREFIX + json.dumps(bare_baseline(args.bare_baseline)), flush=True)
        return 0
    if args.bare_example:
        print(BARE_RESULT_PREFIX + json.dumps(bare_example(args.bare_example)), flush=True)
        return 0
    raise_on_sigterm()
    if args.example:
        return main_example(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(tempfile.mkdtemp(prefix="lockgate-bench-"))
    load_before = os.getloadavg()
    progress(f"work dir {root}; repeats {args.repeats}; load average {load_before}")
    try:
        config_path = write_pipeline_files(
            root / "pipeline", model_name=f"bench-{stamp}", rows=args.rows, workers=args.workers
        )
        if args.interleaved:
            ups = bench_up(root, args.repeats)
            bare, runs, floors = bench_interleaved(root, config_path, args.repeats, args.bare_threads)
        else:
            bare = bench_bare(config_path, args.repeats, args.bare_threads)
            ups = bench_up(root, args.repeats)
            runs, floors = bench_pipeline(root, config_path, args.repeats)
    except BaseException:
        progress(f"failed: state and logs kept in {root}")
        raise
    summary = summarise(bare, ups, runs, floors)
    print_table(summary, bare, ups, runs, floors)
    path = write_results(
        stamp,
        args,
        {
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "summary": summary,
            "bare": bare,
            "up": ups,
            "pipeline": runs,
            "floor": floors,
        },
        name="pipeline"
        + (f"-workers{args.workers}" if args.workers is not None else "")
        + (f"-rows{args.rows}" if args.rows != DATA_ROWS else ""),
    )
    print(f"results written to {path.relative_to(REPO)}; load average {load_before} -> {os.getloadavg()}")
    shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r["outcome"] in ("registered", "blocked") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
