"""What `lockgate watch` shows: one line per check and a status line on a terminal, JSON lines elsewhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import lockgate.cli.observe as observe_cli
from lockgate.cli import app
from lockgate.watch import Watcher, check_verdict, describe_check, describe_watch
from pipeline.data import make_loans
from tests.conftest import ROOT, deep_merge, shipped_config
from tests.lockgate.test_watch import MODEL, WINDOW, capture, make_setup

runner = CliRunner()
AT = datetime(2026, 11, 30, 10, 31, 2, tzinfo=UTC)
QUIET = {
    "champion": "3",
    "window_rows": 1000,
    "drifted": False,
    "drift": "no feature drifted",
    "quality": {"auc": 0.8123},
    "fire": False,
    "reason": None,
    "explanation": "no trigger breached",
    "submission_id": None,
    "notes": [],
}


def test_a_check_reads_as_one_line_when_what_and_why() -> None:
    line = describe_check(QUIET, AT)
    assert line == (
        "10:31:02 UTC | champion v3 | 1000 new rows | no drift, no run | quality auc 0.812 | no trigger breached"
    ), line
    fired = QUIET | {"drifted": True, "fire": True, "reason": "drift", "submission_id": "lockgate-drift-1"}
    assert check_verdict(fired) == "DRIFT, RUN STARTED (drift, lockgate-drift-1)", check_verdict(fired)
    unjudged = QUIET | {"champion": None, "drifted": None, "quality": None, "notes": ["no champion yet"]}
    assert describe_check(unjudged, AT) == (
        "10:31:02 UTC | no champion | 1000 new rows | drift not judged, no run | no trigger breached | "
        "no champion yet"
    ), describe_check(unjudged, AT)


def test_the_status_line_says_what_is_watched_the_last_verdict_and_the_next_check() -> None:
    assert describe_watch("loans", 30, None, None) == "watching loans every 30s | checking now"
    line = describe_watch("loans", 30, (AT, QUIET), 11.2)
    assert (
        line == "watching loans every 30s | last check 10:31:02 UTC: no drift, no run | next check in 12s"
    ), line


@pytest.fixture
def watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pipeline file whose watch runs a real Watcher on a temporary capture store with a fake registry."""
    setup = make_setup(tmp_path / "watch")
    capture(setup.capture_uri, setup.config, make_loans(WINDOW, seed=1), "1", setup.clock())
    serving = yaml.safe_load((ROOT / "serving.yaml").read_text()) | {"model_name": MODEL}
    (tmp_path / "serving.yaml").write_text(yaml.safe_dump(serving))
    pipeline = deep_merge(
        shipped_config(),
        {"registry": {"model_name": MODEL}, "events": {"log_file": str(tmp_path / "events.jsonl")}},
    )
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))

    @contextmanager
    def watching(
        config: Path, state_dir: Path | None, data: str | None, exporter: object
    ) -> Iterator[Watcher]:
        yield setup.watcher

    monkeypatch.setattr(observe_cli, "watching", watching)
    return tmp_path / "pipeline.yaml"


def watch(config: Path, *extra: str) -> list[str]:
    done = runner.invoke(
        app,
        [
            "watch",
            "--config",
            str(config),
            "--max-checks",
            "2",
            "--interval",
            "1",
            "--metrics-port",
            "0",
            *extra,
        ],
    )
    assert done.exit_code == 0, done.output
    return [done.stdout, done.stderr]


def test_off_a_terminal_each_check_is_one_json_line(watched: Path) -> None:
    stdout, _ = watch(watched)
    lines = stdout.splitlines()
    assert lines[0].startswith("watching "), lines
    summaries = [json.loads(line) for line in lines[1:]]
    assert len(summaries) == 2 and summaries[0]["champion"] == "1", summaries
    assert summaries[0]["window_rows"] == WINDOW and summaries[1]["window_rows"] == 0, summaries
    assert "\x1b[" not in stdout, "no terminal escape codes in a pipe"


def test_with_json_stdout_holds_only_the_check_summaries(watched: Path) -> None:
    stdout, stderr = watch(watched, "--json")
    summaries = [json.loads(line) for line in stdout.splitlines()]
    assert [s["champion"] for s in summaries] == ["1", "1"], summaries
    assert stderr.startswith("watching "), f"the opening line goes to stderr: {stderr!r}"


def test_on_a_terminal_a_status_line_counts_down_and_checks_read_as_lines(
    watched: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a terminal (Rich told the captured stdout is one, as a real terminal would be detected),
    monkeypatch.setattr(observe_cli, "stdout_is_tty", lambda: True)
    # Rich 15's Console.is_terminal (rich/console.py) takes TTY_COMPATIBLE=1 as "this file is a terminal".
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    stdout, _ = watch(watched)
    # then each check is a line a person reads, not JSON, and the status shows the verdict and the countdown.
    assert not any(line.lstrip().startswith("{") for line in stdout.splitlines()), stdout
    assert f"champion v1 | {WINDOW} new rows | no drift, no run" in stdout, stdout
    # (the status line wraps at the test terminal's 80 columns: judged without its line breaks)
    status = stdout.replace("\n", "")
    assert "| last check " in status and "no drift, no run | next check in 1s" in status, stdout
