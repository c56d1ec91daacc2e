"""The stack's rendered objects for cluster tests: the dev stack's program run under mocks, and its RayJobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from lockgate.kuberay import load_template, training_job
from tests.infra.conftest import ROOT

TRIGGER = {"reason": "drift", "event_id": "drift-20261130T120000Z-w000042", "run_key": "drift-3f2a9c"}


def render_stack(out_dir: Path, stack_file: str = "Pulumi.dev.yaml", overrides: tuple[str, ...] = ()) -> dict:
    """Run the whole program for one stack file under mocks (tests/infra/driver.py); what it declared."""
    out = out_dir / f"{Path(stack_file).stem}.json"
    command = [sys.executable, "-m", "tests.infra.driver", str(ROOT / stack_file), "--out", str(out)]
    for override in overrides:
        command += ["--set", override]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and out.exists(), result.stderr[-3000:]
    return json.loads(out.read_text())


def stack_rayjobs(stack: dict[str, Any], tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Every training RayJob the stack makes: the one `kubectl create` gets and the one a trigger creates."""
    (config_map,) = [
        r["inputs"]
        for r in stack["resources"]
        if r["type"] == "kubernetes:core/v1:ConfigMap" and "rayjob.yaml" in r["inputs"].get("data", {})
    ]
    template_file = tmp_path / "rayjob.yaml"
    template_file.write_text(config_map["data"]["rayjob.yaml"])
    template = load_template(template_file)  # as the trigger-check pod reads it from the mounted ConfigMap
    by_hand = yaml.safe_load(stack["exports"]["trainingJobManifest"])
    by_hand["metadata"]["name"] = by_hand["metadata"].pop("generateName") + "abcde"  # the API server names it
    return {"kubectl-create": by_hand, "trigger": training_job(template, "loan-default", TRIGGER)}
