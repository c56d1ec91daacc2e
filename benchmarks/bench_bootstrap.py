"""The regression gate's paired bootstrap: the vectorised task core against the loop it replaced, same run.

    .venv/bin/python benchmarks/bench_bootstrap.py [--rows 4000 --resamples 1000 --repeats 5]

For every task and metric, both compute (candidate - champion) with its interval on the same rows and the
same seed: the baseline draws one resample at a time and recomputes that one metric (as
``pipeline/gates.py`` did at ae70981); the core (``pipeline.tasks.paired_bootstrap``) scores all resamples
from one weight matrix. Prints medians of wall time and their ratio, checks both give the same interval, and
writes ``benchmarks/results/bootstrap-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.vocabulary import Task  # noqa: E402
from pipeline.tasks import Predictions, encode_rows, metric_names, metric_spec, paired_bootstrap  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def models(task: Task, rows: int, seed: int) -> tuple[np.ndarray, Predictions, Predictions]:
    """Labels and two models of similar quality for ``task``."""
    rng = np.random.default_rng(seed)
    if task == Task.regression:
        y = rng.normal(0, 1, rows)
        return (
            y,
            Predictions(task, y + rng.normal(0, 0.5, rows)),
            Predictions(task, y + rng.normal(0, 0.5, rows)),
        )
    if task == Task.binary:
        y = (rng.random(rows) < 0.3).astype(float)

        def scores(noise_seed: int) -> Predictions:
            noise = np.random.default_rng(noise_seed).normal(0, 1, rows)
            return Predictions(task, 1 / (1 + np.exp(-(4 * (y - 0.3) + noise))))

        return y, scores(seed + 1), scores(seed + 2)
    y = rng.integers(0, 3, rows)

    def probabilities(noise_seed: int) -> Predictions:
        logits = np.random.default_rng(noise_seed).normal(0, 1, (rows, 3))
        logits[np.arange(rows), y] += 1.5
        shares = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return Predictions(task, shares, (0, 1, 2))

    return y, probabilities(seed + 1), probabilities(seed + 2)


def loop_bootstrap(
    task: Task,
    metric: str,
    y: np.ndarray,
    candidate: Predictions,
    champion: Predictions,
    samples: int,
    seed: int,
) -> tuple[float, float]:
    """The baseline: one resample at a time, only this metric recomputed from scratch (95% interval)."""
    spec = metric_spec(task, metric)
    sign = 1.0 if spec.higher_is_better else -1.0
    rng, n = np.random.default_rng(seed), len(y)
    deltas = []
    for _ in range(samples):
        index = rng.integers(0, n, n)
        ours = spec.fn(encode_rows(task, y[index], candidate.subset(index)))
        theirs = spec.fn(encode_rows(task, y[index], champion.subset(index)))
        deltas.append(sign * (ours - theirs))
    kept = np.array([d for d in deltas if not np.isnan(d)])
    return float(np.quantile(kept, 0.025)), float(np.quantile(kept, 0.975))


def timed(repeats: int, function, *args) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls of ``function(*args)``, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline-repeats", type=int, default=1, help="the loop is slow: fewer repeats")
    args = parser.parse_args(argv)
    rows = []
    for task in Task:
        y, candidate, champion = models(task, args.rows, 7)
        for metric in metric_names(task):
            common = (task, metric, y, candidate, champion, args.resamples)
            core_s, core = timed(args.repeats, paired_bootstrap, *common, 0.95, 3)
            loop_s, loop = timed(args.baseline_repeats, loop_bootstrap, *common, 3)
            same = bool(np.allclose((core.ci_low, core.ci_high), loop, rtol=1e-6, atol=1e-9))  # type: ignore[union-attr]
            rows.append(
                {
                    "task": task.value,
                    "metric": metric,
                    "core_median_s": core_s,
                    "loop_median_s": loop_s,
                    "speedup": loop_s / core_s,
                    "same_interval": same,
                }
            )
            print(
                f"{task.value:<10} {metric:<9} core {core_s * 1000:7.1f} ms   loop {loop_s * 1000:8.1f} ms   "
                f"{loop_s / core_s:6.1f}x   same interval: {same}",
                flush=True,
            )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bootstrap-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"rows": args.rows, "resamples": args.resamples, "results": rows}, indent=2))
    print(f"results: {out}")
    return 0 if all(row["same_interval"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
