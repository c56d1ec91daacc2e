"""`lockgate rollout run` off a terminal: live numbers as plain lines while a step holds, the result at the end.

The controller runs for real on scripted metrics (tests/serving/test_rollout_analysis.TimedWorld, fake time),
so what is tested is the command's wiring and output; the rollout on a real router is tests/serving.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

import lockgate.cli.serving as serving_cli
import serving.live
from lockgate.cli import app
from pipeline.config import parse_config
from pipeline.events import read_events
from serving.rollout import RolloutController
from serving.spec import RolloutPolicy
from tests.conftest import deep_merge, shipped_config
from tests.serving.test_rollout_analysis import OUTAGE_POLICY, TimedWorld

runner = CliRunner()


@pytest.fixture
def scripted_rollout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TimedWorld:
    """`rollout run` against a scripted world: a champion v1, a candidate v2, metrics down 4 s to 19 s."""
    world = TimedWorld(down_from=4, down_for=15)
    config = parse_config(
        deep_merge(shipped_config(), {"events": {"log_file": str(tmp_path / "events.jsonl")}}), "test"
    )
    context = SimpleNamespace(
        config=config,
        serving=SimpleNamespace(model_name="loan-default"),
        env=SimpleNamespace(serving_target=lambda: None),
        serving_file=tmp_path / "serving.yaml",
        remote=False,
    )

    @contextmanager
    def rollout_context(config_path: Path, state_dir: Path | None) -> Iterator[SimpleNamespace]:
        yield context

    def rollout_controller(
        policy: RolloutPolicy, target: Any, serving_file: Path, versions: tuple[str, str], emit: Any
    ) -> RolloutController:
        effects = world.effects()
        effects.emit = emit  # the command's own event sender: printed and logged as it would be
        return RolloutController(OUTAGE_POLICY, versions[0], versions[1], effects)

    monkeypatch.setattr(serving_cli, "rollout_context", rollout_context)
    monkeypatch.setattr(serving_cli, "registry_aliases", lambda name: {"champion": "1", "candidate": "2"})
    monkeypatch.setattr(serving_cli, "connect_ray", lambda env: None)
    monkeypatch.setattr(serving.live, "rollout_controller", rollout_controller)
    return world


def test_off_a_terminal_each_holding_step_prints_its_live_numbers(
    scripted_rollout: TimedWorld, tmp_path: Path
) -> None:
    # Given a rollout whose metrics go away for 15 s in the first step, when it runs off a terminal,
    done = runner.invoke(app, ["rollout", "run", "--config", str(tmp_path / "pipeline.yaml")])
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    progress = [line for line in lines if line.startswith("[progress] ")]
    # then every step prints plain lines with its clock, requests, error rates, p99s and divergence,
    for step, weight in ((1, 10), (2, 50), (3, 100)):
        mine = [line for line in progress if f"step {step}/3 at {weight}%: " in line]
        assert mine, f"no progress line for step {step} in {lines}"
        assert any("requests v2 " in line and "errors " in line and "p99 " in line for line in mine), mine
        if weight < 100:  # at 100% the champion answers nothing: there is no divergence to show
            assert any("divergence " in line and " bound " in line for line in mine), mine
    assert any("HOLDING: metrics unreadable" in line for line in progress), f"the outage is shown: {progress}"
    assert "\x1b[" not in done.stdout, "no terminal escape codes in a pipe"
    # throttled, not one line per 1 s poll, and the events and the result as before.
    assert len(progress) < 20, f"{len(progress)} progress lines for a ~50 s rollout"
    assert sum(line.startswith("[rollout_step] ") for line in lines) == 3, lines
    result = json.loads(lines[-1].removeprefix("ROLLOUT_RESULT "))
    assert result["outcome"] == "promoted" and len(result["steps"]) == 3, result
    assert [e.type for e in read_events(tmp_path / "events.jsonl")] == [
        "rollout_step",
        "rollout_step",
        "rollout_step",
        "promotion",
    ], "progress is not an event: the event log holds steps and the ending only"


def test_with_json_stdout_is_the_result_alone_and_progress_goes_to_stderr(
    scripted_rollout: TimedWorld, tmp_path: Path
) -> None:
    done = runner.invoke(app, ["rollout", "run", "--config", str(tmp_path / "pipeline.yaml"), "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["outcome"] == "promoted" and [s["weight"] for s in result["steps"]] == [10, 50, 100], result
    assert "[progress] step 1/3 at 10%: " in done.stderr, f"progress on stderr under --json: {done.stderr!r}"


def test_on_a_terminal_the_numbers_update_one_status_line_instead_of_printing_lines(
    scripted_rollout: TimedWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a terminal (Rich told the captured stdout is one, as a real terminal would be detected),
    monkeypatch.setattr(serving_cli, "stdout_is_tty", lambda: True)
    # Rich 15's Console.is_terminal (rich/console.py) takes TTY_COMPATIBLE=1 as "this file is a terminal".
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    # when the rollout runs,
    done = runner.invoke(app, ["rollout", "run", "--config", str(tmp_path / "pipeline.yaml")])
    assert done.exit_code == 0, done.output
    # then the live numbers are drawn in the status line (the last step's final numbers at least), not
    # printed as "[progress]" lines, while the events are still printed as lines above it.
    assert "[progress]" not in done.stdout, done.stdout
    assert "step 3/3 at 100%: 10s of 10s hold" in done.stdout, done.stdout
    assert "[rollout_step] candidate v2 at 50%" in done.stdout, done.stdout
    assert "\x1b[" in done.stdout, "a terminal gets the status line's cursor control"
