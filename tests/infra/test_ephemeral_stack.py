"""The ephemeral-stack script: its pure parts here; the Automation API run only where a Pulumi CLI exists."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from infra.config import load_stack_config
from scripts import ephemeral_stack
from tests.infra.conftest import ROOT
from tests.infra.driver import engine_config


def test_stack_file_from_template_validates(tmp_path) -> None:
    text = ephemeral_stack.render_stack_file(ephemeral_stack.TEMPLATE.read_text(), "pr-42")
    assert "{suffix}" not in text
    path = tmp_path / "Pulumi.ephemeral-pr-42.yaml"
    path.write_text(text)
    raw, _ = engine_config(path, [])
    assert load_stack_config(raw).namespace == "lockgate-pr-42"


@pytest.mark.parametrize("suffix", ["", "-x", "UPPER", "a" * 21, "a_b"])
def test_bad_suffixes_are_refused(suffix) -> None:
    with pytest.raises(ValueError, match="suffix"):
        ephemeral_stack.stack_name(suffix)


def test_missing_outputs_are_named() -> None:
    outputs = {"namespace": "lockgate-x", "mlflowTrackingUri": "http://m", "serveUrl": "", "rayService": "r"}
    assert ephemeral_stack.missing_outputs(outputs) == ["serveUrl"]


@pytest.mark.skipif(
    shutil.which("pulumi") is not None, reason="a Pulumi CLI exists: the script would really deploy"
)
def test_script_skips_with_a_reason_without_the_pulumi_cli() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/ephemeral_stack.py", "cycle", "--suffix", "ci"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == ephemeral_stack.EXIT_SKIPPED, done.stderr
    assert "skipped: the Pulumi CLI is not installed" in done.stdout
    assert not (ROOT / "Pulumi.ephemeral-ci.yaml").exists(), "nothing written when skipping"
