"""Infra fixtures: whole-program runs under mocks (one process per stack config, run in parallel) and schemas."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "infra" / "schemas" / "crds"
CRD_FILES = {
    ("ray.io/v1", "RayService"): "ray.io_rayservices.yaml",
    ("ray.io/v1", "RayJob"): "ray.io_rayjobs.yaml",
    ("ray.io/v1", "RayCronJob"): "ray.io_raycronjobs.yaml",
    ("ray.io/v1", "RayCluster"): "ray.io_rayclusters.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}
# A routable public network standing in for the operator's egress: the shipped aws stack names none, and
# refuses to run until its user does (lockgate:cluster.publicAccessCidrs).
TEST_EGRESS_CIDR = "81.2.69.0/24"


def aws_reachable() -> list[str]:
    """The shipped aws stack's cluster, with the public endpoint opened to the test's egress network."""
    cluster = yaml.safe_load((ROOT / "Pulumi.aws.yaml").read_text())["config"]["lockgate:cluster"]
    return [f"lockgate:cluster={json.dumps({**cluster, 'publicAccessCidrs': [TEST_EGRESS_CIDR]})}"]


# Each entry is one program run in its own process: stack file + config overrides.
CANARY = ['lockgate:models={"champion": "1", "candidate": "2"}']
RUNS: dict[str, tuple[str, list[str]]] = {
    "dev": ("Pulumi.dev.yaml", []),
    "aws": ("Pulumi.aws.yaml", aws_reachable()),
    "candidate": ("Pulumi.dev.yaml", CANARY),
    "canary10": ("Pulumi.dev.yaml", [*CANARY, "lockgate:canaryWeight=10"]),
    "canary25": ("Pulumi.dev.yaml", [*CANARY, "lockgate:canaryWeight=25"]),
    "broken": ("Pulumi.dev.yaml", ["lockgate:canaryWeight=140"]),
    "admin-password": ("Pulumi.dev.yaml", ["secret:lockgate:mlflowAdminPassword=rotated-admin-password"]),
}


class ProgramRun:
    """What one run of the program declared."""

    def __init__(self, result: dict[str, Any]):
        self.resources: list[dict[str, Any]] = result["resources"]
        self.exports: dict[str, Any] = result["exports"]
        self.secret_exports: list[str] = result.get("secret_exports", [])

    def of_type(self, resource_type: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["type"] == resource_type]

    def one(self, resource_type: str) -> dict[str, Any]:
        found = self.of_type(resource_type)
        assert len(found) == 1, f"expected one {resource_type}, found {len(found)}"
        return found[0]


@pytest.fixture(scope="session")
def program_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every configured run, started together (each is mostly waiting on imports and the mock engine)."""
    directory = tmp_path_factory.mktemp("programs")
    processes = {}
    for key, (stack_file, overrides) in RUNS.items():
        out = directory / f"{key}.json"
        command = [sys.executable, "-m", "tests.infra.driver", str(ROOT / stack_file), "--out", str(out)]
        for override in overrides:
            command += ["--set", override]
        processes[key] = (subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True), out)
    results = {}
    for key, (process, out) in processes.items():
        _, stderr = process.communicate(timeout=300)
        assert out.exists(), f"run {key} wrote nothing (exit {process.returncode}): {stderr[-2000:]}"
        results[key] = {"returncode": process.returncode, **json.loads(out.read_text())}
    return results


def program(program_runs: dict[str, dict[str, Any]], key: str) -> ProgramRun:
    result = program_runs[key]
    assert result["returncode"] == 0, f"run {key} failed: {result.get('error')}"
    return ProgramRun(result)


@pytest.fixture(scope="session")
def dev(program_runs: dict[str, dict[str, Any]]) -> ProgramRun:
    return program(program_runs, "dev")


@pytest.fixture(scope="session")
def aws(program_runs: dict[str, dict[str, Any]]) -> ProgramRun:
    return program(program_runs, "aws")


def strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields (as `kubectl apply --validate=strict` does)."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The vendored upstream CRD's schema for this version, made strict."""
    # libyaml's loader: the Ray CRDs are megabytes, which the pure-Python parser takes seconds over.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document = yaml.load((CRD_DIR / CRD_FILES[(api_version, kind)]).read_text(), Loader=loader)
    version = api_version.split("/")[1]
    for entry in document["spec"]["versions"]:
        if entry["name"] == version:
            return strict(copy.deepcopy(entry["schema"]["openAPIV3Schema"]))
    raise KeyError(f"{kind} {api_version} is not in the vendored CRD")


def crd_errors(manifest: dict[str, Any]) -> list[str]:
    """Every schema violation of a custom resource, with its path."""
    schema = crd_schema(manifest["apiVersion"], manifest["kind"])
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(manifest)
    ]
