"""Issue #11, the cluster side under mocks: what the rollout step (the training RayJob's deploy stage) and the
router get to run a rollout in the cluster, one test per grant, present where needed and absent elsewhere.

The rollout controller runs as a step of the training RayJob: it writes the live rollout state under
``rollout/`` of the artefact store, asks the in-cluster Prometheus, and moves aliases as the training
workload's MLflow user. The router only reads the live state.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts.settings import EnvVar
from infra import exports, workloads
from infra.components.artifact_store import ROLLOUT_PREFIX
from infra.components.monitoring import PROMETHEUS_PORT, PROMETHEUS_SERVICE
from infra.components.ray_platform import RayPlatform
from infra.config import StackConfigError, load_stack_config
from tests.infra import mocks as mocks_module
from tests.infra.conftest import ROOT, ProgramRun, program
from tests.infra.driver import engine_config
from tests.infra.mocks import LockgateMocks
from tests.infra.test_components import declare, of_type, ray_args
from tests.infra.test_least_privilege import MLFLOW_SERVER_SECRET, pod_templates, secret_data

NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
# The chart version the Prometheus Service name and port were read from (infra/components/monitoring.py).
CHECKED_CHART = "88.0.0"
DEV_PROMETHEUS = f"http://{PROMETHEUS_SERVICE}.monitoring.svc:{PROMETHEUS_PORT}"
POD_KEYS = (
    "serving",
    "training",
    "training-submitter",
    "lockgate-triggers",
    "lockgate-exporter",
    "lockgate-mlflow",
)


def env_of(template: dict[str, Any]) -> dict[str, str | None]:
    """Name → literal value of every container's environment in a pod template."""
    return {e["name"]: e.get("value") for c in template["spec"]["containers"] for e in c.get("env", [])}


def bucket(run: ProgramRun) -> str:
    """The artefact store's bucket, from the MLflow artefacts URI the stack exports (s3://<bucket>/mlflow)."""
    return str(run.exports[exports.ARTIFACTS_URI]).removeprefix("s3://").split("/", 1)[0]


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_live_state_uri_reaches_the_rollout_step_the_router_and_the_checks_only(program_runs, stack) -> None:
    # The trigger checks reclaim a rollout whose controller died (lockgate/watch.py), so they name the store too.
    run = program(program_runs, stack)
    pods = pod_templates(run)
    expected = f"s3://{bucket(run)}/{ROLLOUT_PREFIX}"
    having = {key for key in POD_KEYS for t in pods[key] if EnvVar.live_state_uri.value in env_of(t)}
    assert having == {"serving", "training", "lockgate-triggers"}, (
        f"expected the router, the RayJob's Ray pods and the trigger checks only, got {having}"
    )
    for key in ("serving", "training", "lockgate-triggers"):
        for template in pods[key]:
            got = env_of(template)[EnvVar.live_state_uri.value]
            assert got == expected, f"{key}: expected {EnvVar.live_state_uri.value}={expected}, got {got}"


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_prometheus_url_reaches_the_rollout_step_only(program_runs, stack) -> None:
    run = program(program_runs, stack)
    pods = pod_templates(run)
    having = {key for key in POD_KEYS for t in pods[key] if EnvVar.prometheus_url.value in env_of(t)}
    assert having == {"training"}, f"expected only the RayJob's Ray pods to ask Prometheus, got {having}"
    namespace = run.exports[exports.NAMESPACE]
    for template in pods["training"]:
        got = env_of(template)[EnvVar.prometheus_url.value]
        assert got == DEV_PROMETHEUS, f"expected the chart's Prometheus Service {DEV_PROMETHEUS}, got {got}"
        selector = json.loads(str(env_of(template)[EnvVar.prometheus_selector.value]))
        assert selector == {"namespace": namespace, "application": "lockgate"}, (
            f"expected the stack's namespace and Serve application as the selector, got {selector}"
        )
    # The namespace label the selector uses is one the workers' PodMonitor sets itself.
    (monitor,) = [
        r["inputs"]
        for r in run.of_type("kubernetes:monitoring.coreos.com/v1:PodMonitor")
        if r["inputs"]["metadata"]["name"] == "lockgate-ray-workers"
    ]
    relabelings = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": "namespace"} in relabelings, (
        f"expected the PodMonitor to label series with their namespace, got {relabelings}"
    )


def test_prometheus_url_is_the_pinned_charts_service(dev) -> None:
    # The Service name and port were read from this chart version, released under this name: a change to
    # either must re-check them (prometheus-community/helm-charts, templates/prometheus/service.yaml).
    (release,) = [
        r["inputs"]
        for r in dev.of_type("kubernetes:helm.sh/v3:Release")
        if r["inputs"]["chart"] == "kube-prometheus-stack"
    ]
    assert (release["name"], release["version"]) == ("kube-prometheus-stack", CHECKED_CHART), (
        f"expected release kube-prometheus-stack at {CHECKED_CHART}, got {release['name']} {release['version']}"
    )
    service = release["values"]["prometheus"]["service"]
    assert (
        service.get("port", PROMETHEUS_PORT) == PROMETHEUS_PORT
        and "fullnameOverride" not in release["values"]
    ), f"expected the chart's default Service name and port, got {service}"


def test_a_configured_prometheus_url_is_validated() -> None:
    # A stack whose Prometheus is not the chart's default Service names it; anything but an http(s) base fails.
    raw, _ = engine_config(ROOT / "Pulumi.dev.yaml", [])
    raw["lockgate:monitoring"] = json.dumps({"prometheusUrl": "http://prom.monitoring.svc:9091"})
    assert load_stack_config(raw).monitoring.prometheus_url == "http://prom.monitoring.svc:9091"
    raw["lockgate:monitoring"] = json.dumps({"prometheusUrl": "prom.monitoring.svc:9091/api"})
    with pytest.raises(StackConfigError, match="prometheusUrl|prometheus_url"):
        load_stack_config(raw)


@pytest.fixture(scope="module")
def component_mocks() -> LockgateMocks:
    return mocks_module.install(stack="components")


def test_the_prometheus_url_given_opens_its_own_port(component_mocks) -> None:
    url = "http://prom.monitoring.svc:9091"
    recorded = declare(component_mocks, lambda: RayPlatform("alpha", ray_args(prometheus_url=url)))
    (egress,) = [r.inputs["spec"] for r in of_type(recorded, "NetworkPolicy") if "egress" in r.inputs["spec"]]
    ports = {
        p["port"]
        for rule in egress["egress"]
        if any("namespaceSelector" in peer for peer in rule.get("to", []))
        for p in rule["ports"]
    }
    assert ports == {9091}, f"expected egress to the monitoring namespace on 9091 only, got {ports}"
    with pytest.raises(ValueError, match="prometheus_url"):
        declare(component_mocks, lambda: RayPlatform("beta", ray_args(prometheus_url="ftp://prom:21")))


def training_egress(run: ProgramRun) -> dict[str, Any]:
    """The spec of the one egress NetworkPolicy (the training pods')."""
    egress = [
        p["inputs"]["spec"]
        for p in run.of_type(NETWORK_POLICY)
        if "Egress" in p["inputs"]["spec"]["policyTypes"]
    ]
    assert len(egress) == 1, f"expected exactly one egress policy, got {egress}"
    return egress[0]


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_training_pods_may_reach_prometheus_api_and_nothing_else_in_monitoring(program_runs, stack) -> None:
    run = program(program_runs, stack)
    spec = training_egress(run)
    selected = spec["podSelector"]["matchLabels"]
    pods = pod_templates(run)
    for key in POD_KEYS:
        for template in pods[key]:
            labels = template["metadata"]["labels"]
            matches = all(labels.get(k) == v for k, v in selected.items())
            assert matches == (key == "training"), f"{key}: selected by the training egress policy: {matches}"
    monitoring = [
        rule
        for rule in spec["egress"]
        for peer in rule.get("to", [])
        if peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
        == "monitoring"
    ]
    assert [r["ports"] for r in monitoring] == [[{"protocol": "TCP", "port": PROMETHEUS_PORT}]], (
        f"expected the monitoring namespace on Prometheus' port {PROMETHEUS_PORT} only, got {monitoring}"
    )
    open_ports = {p["port"] for rule in spec["egress"] if "to" not in rule for p in rule["ports"]}
    assert open_ports == {53}, f"expected only DNS to any destination, got {open_ports}"


def store_statements(run: ProgramRun, stack: str, workload: str) -> list[dict[str, Any]]:
    """A workload's object-store statements: its IRSA role's policy (aws) or its MinIO policy (dev)."""
    if stack == "aws":
        (policy,) = [
            p["inputs"]["policy"]
            for p in run.of_type("aws:iam/rolePolicy:RolePolicy")
            if p["name"] == f"lockgate-{workload}-irsa-policy"
        ]
        return list(yaml.safe_load(policy)["Statement"])
    (config_map,) = [
        c for c in run.of_type("kubernetes:core/v1:ConfigMap") if c["name"] == "lockgate-artifacts-policies"
    ]
    return list(json.loads(config_map["inputs"]["data"][f"{workload}.json"])["Statement"])


def actions_on(statements: list[dict[str, Any]], prefix: str) -> set[str]:
    """Every object action the statements grant on ``<bucket>/<prefix>/*``."""
    found: set[str] = set()
    for statement in statements:
        resources = (
            statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        )
        if any(str(r).endswith(f"/{prefix}/*") for r in resources):
            found |= set(
                [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
            )
    return found


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_only_the_rollout_step_and_the_reclaiming_checks_write_the_live_state(program_runs, stack) -> None:
    run = program(program_runs, stack)
    for workload in workloads.WORKLOADS:
        actions = actions_on(store_statements(run, stack, workload.name), ROLLOUT_PREFIX)
        if workload.name in (workloads.TRAINING, workloads.TRIGGERS):
            assert actions == {"s3:GetObject", "s3:PutObject"}, (
                f"{workload.name}: expected Get and Put only (no Delete), got {actions}"
            )
        elif workload.name == workloads.SERVING:
            assert actions == {"s3:GetObject"}, f"serving: expected read-only, got {actions}"
        else:
            assert actions == set(), f"{workload.name}: expected nothing on {ROLLOUT_PREFIX}/, got {actions}"


def _mlflow_validator(operation: str) -> str:
    """The basic-auth validator MLflow's server runs before an operation, read from the installed source.

    Read as text: importing mlflow.server.auth builds MLflow's whole server app (half a minute here).
    """
    spec = importlib.util.find_spec("mlflow")
    assert spec is not None and spec.origin, "expected mlflow to be installed"
    source = (Path(spec.origin).parent / "server" / "auth" / "__init__.py").read_text()
    for line in source.splitlines():
        if line.strip().startswith(f"{operation}:"):
            return line.split(":", 1)[1].strip().rstrip(",")
    raise AssertionError(f"mlflow/server/auth/__init__.py: expected a validator for {operation}")


def test_rollout_step_may_move_aliases_and_the_router_may_not(dev) -> None:
    # Upstream (MLflow's basic-auth, installed version): which capability each registry call the rollout
    # makes is checked against.
    from mlflow.server.auth.permissions import get_permission

    checks = {
        operation: _mlflow_validator(operation)
        for operation in ("SetRegisteredModelAlias", "DeleteRegisteredModelAlias", "SetModelVersionTag")
    }
    assert checks == {
        "SetRegisteredModelAlias": "validate_can_set_model_or_prompt_version_alias",
        "DeleteRegisteredModelAlias": "validate_can_delete_model_or_prompt_version_alias",
        "SetModelVersionTag": "validate_can_update_model_or_prompt_version",
    }, f"MLflow's validators changed: re-check infra/workloads.py ROLLOUT_MLFLOW_PERMISSION; got {checks}"
    needed = get_permission(workloads.ROLLOUT_MLFLOW_PERMISSION)
    assert needed.can_update and needed.can_delete, "moving and deleting aliases needs update and delete"
    # Given the users the stack creates
    users = {u["username"]: u for u in json.loads(secret_data(dev, MLFLOW_SERVER_SECRET)["users.json"])}
    training, serving = users["lockgate-training"], users["lockgate-serving"]
    # Then the rollout step's user (the training workload's) is no admin and holds MANAGE on the served model
    (model,) = training["registered_models"]
    manage = get_permission(training["registered_models"][model])
    assert training["is_admin"] is False and manage.can_update and manage.can_delete, (
        f"expected the rollout step's MLflow user to move aliases on {model} and be no admin, got {training}"
    )
    # And the router's user reads only: READ can neither set nor delete an alias
    (permission,) = set(serving["registered_models"].values())
    read = get_permission(permission)
    assert serving["is_admin"] is False and not read.can_update and not read.can_delete, (
        f"expected the router's MLflow user to stay read-only, got {serving}"
    )
