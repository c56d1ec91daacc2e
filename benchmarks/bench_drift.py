"""Benchmark Lockgate's drift check against Evidently's DataDriftPreset on the same data, in one run.

Run from the repository root:

    .venv/bin/python benchmarks/bench_drift.py                 # 1,000,000 rows x 20 features, 3 repeats
    .venv/bin/python benchmarks/bench_drift.py --rows 200000 --repeats 1

The data: a reference and a current batch of ``--rows`` rows each, 20 features (the 9 of ``make_loans``
plus 8 numeric and 3 categorical columns of other shapes). The current batch has planted drift in 6
features (mean shifts of at least 0.5 standard deviations, a variance change, changed category mixes)
and a practically irrelevant shift (0.03 standard deviations) in one more, which a large-sample
significance test would flag; the other 13 are drawn from the same distribution with another seed.
Both frames are written to Parquet once and read by both sides, so both judge the very same rows.

Lockgate: ``build_profile`` on the reference (what the pipeline does once, at training time) and
``check_drift`` on the current batch (what ``lockgate watch`` does per window), each timed separately.

Evidently does not import with pandas 3 (0.7.23 imports a pandas 2 internal), so it runs in its own
virtual environment (created on first use under ``~/.cache/lockgate/``, or give ``--evidently-python``)
with pandas 2.3.3, in a subprocess started by this script in ``--worker`` mode. It times
``Report([DataDriftPreset()]).run(current, reference)`` with the column roles declared, reading the
Parquet files before the clock starts. Evidently's defaults at this size: normed Wasserstein distance
(numeric) and Jensen-Shannon distance (categorical), each with threshold 0.1; data drift when half the
columns drift. Prediction drift is left out on both sides (Evidently's data-drift preset has none).

Printed: rows/s of each side (median of ``--repeats`` runs), the ratio, and which features each side
flagged, with the agreement.
"""

from __future__ import annotations

import argparse
import json
import os
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

EVIDENTLY_PIN = "evidently==0.7.23"
EVIDENTLY_PANDAS_PIN = "pandas==2.3.3"  # evidently 0.7.23 imports pandas internals that pandas 3 removed
DEFAULT_EVIDENTLY_VENV = Path.home() / ".cache" / "lockgate" / "evidently-0.7.23"
WORKER_RESULT_PREFIX = "EVIDENTLY_RESULT "

NUMERIC_EXTRA = [f"signal_{i}" for i in range(8)]
CATEGORICAL_EXTRA = {
    "channel": ("web", "branch", "phone", "partner", "app"),
    "segment": ("retail", "premium", "business"),
    "state": tuple(f"s{i:02d}" for i in range(20)),
}
LOAN_NUMERIC = [
    "age",
    "income",
    "loan_amount",
    "credit_score",
    "employment_years",
    "debt_to_income",
    "open_accounts",
]
LOAN_CATEGORICAL = {
    "region": ("north", "south", "east", "west"),
    "product": ("personal", "auto", "mortgage", "student"),
}
PLANTED = {"credit_score", "debt_to_income", "region", "signal_0", "signal_1", "channel"}
IRRELEVANT_SHIFT = "signal_2"


# -- data ------------------------------------------------------------------------------------------
def make_wide(rows: int, seed: int, drifted: bool) -> Any:
    """A 20-feature frame (plus the label): make_loans widened with other shapes; planted drift if asked."""
    import numpy as np

    from pipeline.data import make_loans

    frame = make_loans(rows, seed=seed)
    rng = np.random.default_rng(seed + 10_000)
    extra = {
        "signal_0": rng.normal(0.0, 1.0, rows),
        "signal_1": rng.normal(5.0, 2.0, rows),
        "signal_2": rng.normal(100.0, 15.0, rows),
        "signal_3": rng.lognormal(3.0, 0.8, rows),
        "signal_4": rng.gamma(2.0, 3.0, rows),
        "signal_5": rng.uniform(-1.0, 1.0, rows),
        "signal_6": rng.poisson(3.0, rows).astype("int64"),
        "signal_7": rng.beta(2.0, 8.0, rows),
        "channel": rng.choice(CATEGORICAL_EXTRA["channel"], rows, p=[0.4, 0.2, 0.15, 0.15, 0.1]),
        "segment": rng.choice(CATEGORICAL_EXTRA["segment"], rows, p=[0.7, 0.2, 0.1]),
        "state": rng.choice(CATEGORICAL_EXTRA["state"], rows),
    }
    if drifted:
        frame["credit_score"] = (frame["credit_score"] - 40).clip(300, 850)  # about 0.65 sd lower
        frame["debt_to_income"] = (frame["debt_to_income"] + 0.15).round(3)  # about 0.8 sd higher
        moved = rng.random(rows) < 0.3
        frame.loc[moved, "region"] = "south"  # a third of applicants now come from one region
        extra["signal_0"] = extra["signal_0"] + 0.5
        extra["signal_1"] = 5.0 + (extra["signal_1"] - 5.0) * 1.6  # same mean, wider spread
        extra["signal_2"] = extra["signal_2"] + 0.03 * 15.0  # practically irrelevant, yet "significant"
        extra["channel"] = rng.choice(CATEGORICAL_EXTRA["channel"], rows, p=[0.15, 0.2, 0.15, 0.15, 0.35])
    for name, values in extra.items():
        frame[name] = values
    return frame


def wide_schema() -> Any:
    """The declared schema of the 20-feature frame, for Lockgate's profile."""
    from pipeline.config import ColumnSpec, ColumnType, DataSchema

    columns: dict[str, ColumnSpec] = {}
    for name in LOAN_NUMERIC + NUMERIC_EXTRA:
        columns[name] = ColumnSpec(type=ColumnType.float)
    for name, categories in {**LOAN_CATEGORICAL, **CATEGORICAL_EXTRA}.items():
        columns[name] = ColumnSpec(type=ColumnType.category, categories=categories)
    columns["default"] = ColumnSpec(type=ColumnType.integer, min=0, max=1)
    return DataSchema(label="default", columns=columns)


# -- Evidently, in its own interpreter -----------------------------------------------------------------
def ensure_evidently(python: str | None) -> str:
    """The interpreter that runs Evidently: the one given, or a venv made (once) under ~/.cache/lockgate."""
    if python:
        return python
    interpreter = DEFAULT_EVIDENTLY_VENV / "bin" / "python"
    if not interpreter.exists():
        print(f"creating {DEFAULT_EVIDENTLY_VENV} with {EVIDENTLY_PIN} (once, about a minute)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(DEFAULT_EVIDENTLY_VENV)], check=True)
        pip = [str(interpreter), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        done = subprocess.run(
            [*pip, EVIDENTLY_PIN, EVIDENTLY_PANDAS_PIN, "pyarrow"], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"installing {EVIDENTLY_PIN} failed:\n{done.stderr[-3000:]}")
    return str(interpreter)


def run_worker(reference_path: str, current_path: str, repeats: int) -> None:
    """Worker mode (inside Evidently's venv): time the DataDriftPreset report, print one JSON line."""
    import evidently
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    reference = pd.read_parquet(reference_path)
    current = pd.read_parquet(current_path)
    numeric = LOAN_NUMERIC + NUMERIC_EXTRA
    categorical = list(LOAN_CATEGORICAL) + list(CATEGORICAL_EXTRA)
    features = numeric + categorical
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    reference_set = Dataset.from_pandas(reference[features], data_definition=definition)
    current_set = Dataset.from_pandas(current[features], data_definition=definition)
    seconds, snapshot = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        snapshot = Report([DataDriftPreset()]).run(current_set, reference_set)
        seconds.append(time.perf_counter() - start)
    assert snapshot is not None
    columns: dict[str, dict[str, Any]] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if not config["type"].endswith("ValueDrift"):
            continue
        method, threshold, value = config["method"], float(config["threshold"]), float(metric["value"])
        # Evidently's convention: p-value methods drift below the threshold, distances at or above it.
        drifted = value < threshold if "p_value" in method else value >= threshold
        columns[config["column"]] = {
            "method": method,
            "score": value,
            "threshold": threshold,
            "drifted": drifted,
        }
    result = {
        "version": evidently.__version__,
        "pandas": pd.__version__,
        "seconds": seconds,
        "columns": columns,
    }
    print(WORKER_RESULT_PREFIX + json.dumps(result), flush=True)


def time_evidently(python: str, reference_path: Path, current_path: Path, repeats: int) -> dict[str, Any]:
    """Run the worker in Evidently's interpreter and parse its result line."""
    command = [
        python,
        __file__,
        "--worker",
        str(reference_path),
        str(current_path),
        "--repeats",
        str(repeats),
    ]
    # Evidently's telemetry off: no network calls inside the timed region.
    env = {**os.environ, "PYTHONPATH": "", "DO_NOT_TRACK": "1", "EVIDENTLY_DISABLE_TELEMETRY": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    for line in completed.stdout.splitlines():
        if line.startswith(WORKER_RESULT_PREFIX):
            parsed: dict[str, Any] = json.loads(line.removeprefix(WORKER_RESULT_PREFIX))
            return parsed
    raise RuntimeError(f"the Evidently worker failed ({completed.returncode}):\n{completed.stderr[-3000:]}")


# -- main --------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the reference and in the batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--evidently-python", help="an interpreter with evidently installed (default: make one)"
    )
    parser.add_argument("--worker", nargs=2, metavar=("REFERENCE", "CURRENT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker[0], args.worker[1], args.repeats)
        return 0

    import pandas as pd

    from pipeline.drift import DriftConfig, build_profile, check_drift

    python = ensure_evidently(args.evidently_python)
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as scratch:
        reference_path, current_path = Path(scratch) / "reference.parquet", Path(scratch) / "current.parquet"
        make_wide(args.rows, seed=1, drifted=False).to_parquet(reference_path, index=False)
        make_wide(args.rows, seed=2, drifted=True).to_parquet(current_path, index=False)
        reference, current = pd.read_parquet(reference_path), pd.read_parquet(current_path)
        schema = wide_schema()
        features = schema.feature_columns
        print(
            f"data: reference {len(reference):,} rows, current {len(current):,} rows x {len(features)} features"
        )

        # Warm-up on a slice: the first call pays scipy's lazy imports, which no later window pays.
        check_drift(build_profile(reference.head(1_000), schema), current.head(1_000))
        profile_s, check_s = [], []
        report = None
        for _ in range(args.repeats):
            start = time.perf_counter()
            profile = build_profile(reference, schema)
            profile_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            report = check_drift(profile, current, config=DriftConfig())
            check_s.append(time.perf_counter() - start)
        assert report is not None

        evidently = time_evidently(python, reference_path, current_path, args.repeats)

    check, prof, ev = (
        statistics.median(check_s),
        statistics.median(profile_s),
        statistics.median(evidently["seconds"]),
    )
    rows = len(current)
    print(
        f"Evidently {evidently['version']} (pandas {evidently['pandas']}, own venv); lockgate pandas {pd.__version__}"
    )
    print(f"repeats: {args.repeats} each, medians shown")
    print(f"{'':38} {'seconds':>9} {'rows/s':>14}")
    print(f"{'lockgate check_drift (per window)':38} {check:9.3f} {rows / check:14,.0f}")
    print(f"{'lockgate build_profile (once, training)':38} {prof:9.3f} {rows / prof:14,.0f}")
    print(f"{'lockgate profile + check':38} {prof + check:9.3f} {rows / (prof + check):14,.0f}")
    print(f"{'Evidently DataDriftPreset report':38} {ev:9.3f} {rows / ev:14,.0f}")
    print(f"ratio (Evidently time / lockgate check):            {ev / check:6.1f}x")
    print(f"ratio (Evidently time / lockgate profile + check):  {ev / (prof + check):6.1f}x")

    print(
        f"\n{'feature':18} {'planted':>8} {'PSI':>8} {'lockgate':>9} {'evidently score':>16} {'evidently':>10} agree"
    )
    agree = 0
    for name in features:
        mine = report.features[name]
        theirs = evidently["columns"][name]
        same = mine.drifted == theirs["drifted"]
        agree += same
        planted = "yes" if name in PLANTED else ("tiny" if name == IRRELEVANT_SHIFT else "")
        print(
            f"{name:18} {planted:>8} {mine.score:8.4f} {('DRIFT' if mine.drifted else 'ok'):>9} "
            f"{theirs['score']:16.4f} {('DRIFT' if theirs['drifted'] else 'ok'):>10} {'yes' if same else 'NO'}"
        )
    lockgate_set = {n for n in features if report.features[n].drifted}
    evidently_set = {n for n in features if evidently["columns"][n]["drifted"]}
    print(f"\nagreement: {agree}/{len(features)} features")
    print(f"lockgate drifted:  {sorted(lockgate_set)}")
    print(f"evidently drifted: {sorted(evidently_set)}")
    print(f"planted:           {sorted(PLANTED)}")
    tiny = report.features[IRRELEVANT_SHIFT]
    print(
        f"{IRRELEVANT_SHIFT} (0.03 sd shift): chi-square p={tiny.p_value:.2g}, PSI {tiny.score:.4f} -> not drifted"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
