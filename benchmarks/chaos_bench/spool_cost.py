"""What the capture spool costs a request: ``CaptureBuffer.add`` with the spool, without it, and with an fsync.

Run from the repository root (under a minute, no ports, nothing left running):

    .venv/bin/python benchmarks/chaos_bench/spool_cost.py [--requests 20000 --repeats 5]

Each variant captures the same one-row requests (the chaos run's rows) into a fresh directory; the time per
request is the median over repeats. ``memory`` is a buffer whose spool could not be made (rows kept in memory,
as before the spool existed), ``spool`` the default, ``spool+fsync`` the spool's own write followed by an
``os.fsync`` of the spool file for every request (what the spool deliberately does not do). The flush of one
50-row batch is timed for memory and spool too (the spool reads its batch back from the file). Results are
printed with their ratios and written to ``benchmarks/results/chaos-spool-cost-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from serving.capture import CaptureBuffer  # noqa: E402

ANSWER = {"probability": 0.25, "prediction": 0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per repeat (default 20000)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per variant (default 5)")
    return parser.parse_args(argv)


def buffer_for(variant: str, root: Path) -> CaptureBuffer:
    """A buffer that never flushes by itself (the batch is bigger than a repeat): only ``add`` is timed."""
    if variant == "memory":
        blocker = root / "no-spool"
        blocker.write_text("a file where the spool directory would be")
        return CaptureBuffer(str(root / "capture"), 10**9, 1e9, spool_dir=str(blocker / "spool"))
    return CaptureBuffer(str(root / "capture"), 10**9, 1e9)


def time_adds(variant: str, rows: list[dict[str, Any]], requests: int) -> float:
    """Seconds per request of ``add`` (plus, for spool+fsync, an fsync of the spool file after each)."""
    with tempfile.TemporaryDirectory(prefix="lgspool-") as scratch:
        buffer = buffer_for(variant, Path(scratch))
        fsync = variant == "spool+fsync"
        started = time.perf_counter()
        for index in range(requests):
            buffer.add(
                [rows[index % len(rows)]], [ANSWER], request_id=f"r{index}", model="m", version="1", role="x"
            )
            if fsync:
                os.fsync(buffer._handles.active_fd)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - started
        buffer.close()
    return elapsed / requests


def time_flush(variant: str, rows: list[dict[str, Any]], batch: int = 50, rounds: int = 40) -> float:
    """Seconds to write one ``batch``-row batch as Parquet (the median of ``rounds``)."""
    times = []
    with tempfile.TemporaryDirectory(prefix="lgspool-") as scratch:
        buffer = buffer_for(variant, Path(scratch))
        for round_ in range(rounds):
            for index in range(batch):
                buffer.add(
                    [rows[index % len(rows)]],
                    [ANSWER],
                    request_id=f"{round_}-{index}",
                    model="m",
                    version="1",
                    role="x",
                )
            started = time.perf_counter()
            buffer.flush()
            times.append(time.perf_counter() - started)
        buffer.close()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("ray.serve").setLevel(logging.CRITICAL)  # the memory variant's "no spool" message
    from pipeline.data import make_loans

    rows = make_loans(64, seed=9).drop(columns="default").to_dict("records")
    variants = ("memory", "spool", "spool+fsync")
    per_request: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeats):  # interleaved, so that machine noise falls on every variant alike
        for variant in variants:
            requests = args.requests if variant != "spool+fsync" else max(args.requests // 10, 200)
            per_request[variant].append(time_adds(variant, rows, requests))
    medians = {v: statistics.median(times) for v, times in per_request.items()}
    flush = {v: time_flush(v, rows) for v in ("memory", "spool")}
    results = {
        "benchmark": "chaos-spool-cost",
        "timestamp": time.strftime("%Y%m%d-%H%M%S"),
        "args": vars(args),
        "add_us_per_request_median": {v: round(m * 1e6, 2) for v, m in medians.items()},
        "add_us_per_request_all": {v: [round(t * 1e6, 2) for t in ts] for v, ts in per_request.items()},
        "ratio_spool_to_memory": round(medians["spool"] / medians["memory"], 2),
        "ratio_fsync_to_spool": round(medians["spool+fsync"] / medians["spool"], 2),
        "flush_50_rows_ms_median": {v: round(t * 1e3, 2) for v, t in flush.items()},
        "ratio_flush_spool_to_memory": round(flush["spool"] / flush["memory"], 2),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    for variant, median in medians.items():
        print(f"add, {variant:<12} {median * 1e6:8.1f} us/request (median of {args.repeats})")
    print(
        f"spool / memory: {results['ratio_spool_to_memory']}x; spool+fsync / spool: "
        f"{results['ratio_fsync_to_spool']}x"
    )
    print(f"flush of 50 rows: {results['flush_50_rows_ms_median']} ms")
    out = REPO / "benchmarks" / "results" / f"chaos-spool-cost-{results['timestamp']}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
