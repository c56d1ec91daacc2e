"""The loop closes on the local environment: drifted live traffic starts a retraining run by itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from html.parser import HTMLParser

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from lockgate.jobs import job_client, submit_pipeline, wait_pipeline
from lockgate.runtime import local_watcher
from lockgate.traffic import TrafficSimulator
from pipeline.config import load_config
from pipeline.data import make_loans, write_table
from pipeline.events import read_events
from pipeline.report import write_report
from pipeline.run import EXIT_OK, with_data
from serving.capture import read_captured
from tests.conftest import FAST_ROLLOUT, write_pipeline
from tests.serving.conftest import SERVE_PORT

pytestmark = pytest.mark.e2e
WINDOW = 400


def wait_for_rows(store: str, model: str, since: float, rows: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        captured = read_captured(store, since=since)
        if (captured["model"] == model).sum() >= rows:
            return
        time.sleep(1)
    raise AssertionError(f"fewer than {rows} captured rows of {model} after {timeout_s}s")


class Figures(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.with_svg: set[str] = set()
        self._figure: str | None = None

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "figure":
            self._figure = dict(attrs).get("id")
        elif tag == "svg" and self._figure:
            self.with_svg.add(self._figure)


def test_drifted_traffic_triggers_one_retraining_run(local_env, tmp_path) -> None:
    name = f"loop-{uuid.uuid4().hex[:6]}"
    (tmp_path / "serving.yaml").write_text(
        yaml.safe_dump(
            {
                "model_name": name,
                "serving": {
                    "app_name": "loop-test",
                    "route_prefix": "/loop",
                    "http_port": SERVE_PORT,
                    "replica_num_cpus": 0.25,
                },
                "capture": {"sample_percent": 100, "batch_rows": 100, "flush_interval_s": 1},
            }
        )
    )
    config = write_pipeline(
        tmp_path,
        {
            "registry": {"model_name": name},
            "rollout": FAST_ROLLOUT,
            "triggers": {
                "drift": {"window_rows": WINDOW, "confirm": {"breaches": 1, "windows": 1}},
                "guardrails": {"cooldown_s": 3600, "max_concurrent_runs": 1},
            },
        },
    )
    first = submit_pipeline(local_env, config, stream=lambda _: None)
    assert (first.exit_code, first.outcome) == (EXIT_OK, "registered"), first.message
    store = str(local_env.capture_dir)
    # A strong population shift: most features and the prediction drift in every window, not just on average.
    shifted = write_table(make_loans(8_000, seed=5, shift=1.0), tmp_path / "shifted.parquet")
    watcher = local_watcher(config, local_env.state_dir, str(shifted))
    url = f"http://127.0.0.1:{SERVE_PORT}/loop"
    features = list(load_config(config).features)

    started = time.time()
    users = TrafficSimulator(url, tmp_path / "data.parquet", features).start()
    try:
        wait_for_rows(store, name, started, WINDOW)
    finally:
        users.stop()
    stable = watcher.check()
    assert stable.drift is not None and stable.drift.sufficient, stable.summary()
    assert not stable.drift.drifted and stable.submission_id is None, stable.summary()

    started = time.time()
    users = TrafficSimulator(url, shifted, features, seed=1).start()
    try:
        wait_for_rows(store, name, started, WINDOW)
        drifted = watcher.check()
        assert drifted.drift is not None and drifted.drift.drifted, drifted.summary()
        assert drifted.submission_id is not None and drifted.decision.reason == "drift", drifted.summary()
        wait_for_rows(store, name, time.time(), WINDOW)
        # Labels arrive for answers already given: attached by request id, they give live quality.
        answered = read_captured(store)
        answered = answered[answered["model"] == name].head(250)
        labels = tmp_path / "labels.csv"
        pd.DataFrame(
            {
                "request_id": answered["request_id"],
                "label": (answered["probability"] > answered["probability"].median()).astype(int),
            }
        ).to_csv(labels, index=False)
        attach = subprocess.run(
            [sys.executable, "-m", "lockgate", "labels", str(labels), "-c", str(config)]
            + ["--state-dir", str(local_env.state_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert attach.returncode == 0 and "recorded 250 labels" in attach.stdout, attach.stderr[-2000:]
        again = watcher.check()
        assert again.quality is not None and again.quality["rows"] == 250, again.summary()
        assert again.quality["auc"] > 0.99, "labels that agree with the answers give a perfect live AUC"
        assert again.drift is not None and again.drift.drifted, "still drifting..."
        assert again.submission_id is None, f"...but one event starts one run: {again.summary()}"
        assert again.decision.suppressed_by in ("dedup", "cooldown", "cap"), again.summary()
        # Users keep coming while the triggered run trains and rolls out: its rollout judges their traffic.
        parsed = with_data(load_config(config), str(shifted))
        triggered = wait_pipeline(
            job_client(local_env), drifted.submission_id, parsed, stream=lambda _: None, env=local_env
        )
    finally:
        users.stop()
    assert triggered.outcome in ("promoted", "rolled_back", "registered", "blocked"), triggered.message
    tags = MlflowClient().get_run(triggered.run_id).data.tags
    assert tags["lockgate.trigger.reason"] == "drift" and tags["lockgate.trigger.event_id"], tags
    events = read_events(tmp_path / "events.jsonl")
    kinds = [e.type for e in events if e.model_name == name]
    assert kinds.count("drift_detected") == 1 and kinds.count("trigger_fired") == 1, kinds
    start = next(e for e in events if e.run_id == triggered.run_id and e.type == "pipeline_started")
    assert start.details["trigger"] == "drift", start.details

    report, _ = write_report(parsed, tmp_path, name, local_env.state_dir, tmp_path / "report.html")
    figures = Figures()
    page = report.read_text()
    figures.feed(page)
    assert {"stage-durations", "model-metrics", "drift-scores"} <= figures.with_svg, figures.with_svg
    summary = json.loads(page.split('id="summary">')[1].split("</script>")[0])
    assert summary["runs"] == 2, summary
