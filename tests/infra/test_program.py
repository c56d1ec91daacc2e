"""The whole program per stack, under mocks: schemas, invariants, the serve config and the canary key."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from infra import exports
from infra.config import EksClusterConfig
from lockgate.kuberay import training_job
from policy.rules import StackResource, check_stack
from serving.desired import (
    RolloutState,
    ServingFile,
    following_router_config,
    load_serving_file,
    resolve_router_config,
)
from serving.render import render_serve_config
from tests.infra.conftest import CRD_FILES, ROOT, TEST_EGRESS_CIDR, ProgramRun, crd_errors, program

# The Kubernetes version the aws stack runs (infra/config.py's default, in EKS standard support).
KUBERNETES_VERSION = EksClusterConfig.model_fields["kubernetes_version"].default
CUSTOM_KINDS = {kind for _, kind in CRD_FILES}
NOT_MANIFESTS = {"kubernetes:helm.sh/v3:Release", "pulumi:providers:kubernetes"}
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|URI|KEY|password|secret|uri|\.ini$", re.IGNORECASE)


def manifests(run: ProgramRun) -> list[dict[str, Any]]:
    """Every Kubernetes object the program declares, as a manifest."""
    return [
        r["inputs"]
        for r in run.resources
        if r["type"].startswith("kubernetes:") and r["type"] not in NOT_MANIFESTS
    ]


def leaves(value: Any, path: str = "") -> dict[str, Any]:
    """Flatten nested data to dotted path → leaf value."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(leaves(item, f"{path}.{key}" if path else str(key)))
        return flat
    if isinstance(value, list):
        flat = {}
        for index, item in enumerate(value):
            flat.update(leaves(item, f"{path}.{index}"))
        return flat
    return {path: value}


def serve_config(run: ProgramRun) -> dict[str, Any]:
    service = run.one("kubernetes:ray.io/v1:RayService")
    return yaml.safe_load(service["inputs"]["spec"]["serveConfigV2"])


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_program_exports_every_key(program_runs, stack) -> None:
    run = program(program_runs, stack)
    expected = set(exports.ALL) | (set(exports.AWS_ONLY) if stack == "aws" else set())
    assert set(run.exports) == expected, "exports are exactly the documented keys"
    assert all(value not in (None, "", []) for key, value in run.exports.items() if key != exports.DASHBOARDS)


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_children_named_from_their_instance_and_unique(program_runs, stack) -> None:
    run = program(program_runs, stack)
    keys = [(r["type"], r["name"]) for r in run.resources]
    assert len(keys) == len(set(keys)), (
        f"duplicate logical names: {sorted(k for k in keys if keys.count(k) > 1)}"
    )
    for resource in run.resources:
        parent = resource["parent"].rsplit("::", 1)[-1]
        if resource["parent"].endswith("pulumi:pulumi:Stack::" + parent) or not resource["parent"]:
            continue
        assert resource["name"].startswith(f"{parent}-") or resource["name"] == parent, (
            f"{resource['type']} {resource['name']} is not named from its parent instance {parent}"
        )


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_builtin_kinds_validate_strictly(program_runs, stack) -> None:
    run = program(program_runs, stack)
    checked = 0
    for manifest in manifests(run):
        if manifest["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"no schema for {manifest['kind']} {manifest['apiVersion']}: {error.message}")
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(
                f"{manifest['kind']} {manifest.get('metadata', {}).get('name')}: {path}: {error.message}"
            )
        checked += 1
    assert checked >= 15, f"expected the program's built-in objects to be checked, checked {checked}"


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_custom_resources_validate_against_upstream_crds(program_runs, stack) -> None:
    run = program(program_runs, stack)
    custom = [m for m in manifests(run) if m["kind"] in CUSTOM_KINDS]
    kinds = {m["kind"] for m in custom}
    assert {"RayService", "ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds
    for manifest in custom:
        assert crd_errors(manifest) == [], f"{manifest['kind']} {manifest['metadata']['name']}"
    job = yaml.safe_load(run.exports[exports.TRAINING_JOB_MANIFEST])
    assert job["kind"] == "RayJob" and crd_errors(job) == [], "the RayJob template is a valid RayJob"
    assert "python -m pipeline.run" in job["spec"]["entrypoint"], "the template runs the pipeline entrypoint"
    # What the trigger checks create from it when a trigger fires is a valid RayJob too.
    trigger = {"reason": "drift", "event_id": "drift-1", "fired_at": 1.0}
    created = training_job(job, "loan-default", trigger)
    assert crd_errors(created) == [], "a triggered run's RayJob is valid"
    assert "generateName" not in created["metadata"] and created["metadata"]["name"].startswith(
        "lockgate-train-"
    )


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_trigger_checks_run_on_a_schedule_and_start_runs_from_the_template(program_runs, stack) -> None:
    run = program(program_runs, stack)
    cron = run.one("kubernetes:batch/v1:CronJob")["inputs"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid", "one writer of the checks' memory at a time"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][:3] == ["lockgate", "triggers", "check"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LOCKGATE_STATE_URI"].startswith("s3://") and env["LOCKGATE_STATE_URI"].endswith(
        "/lockgate-state"
    )
    assert env["LOCKGATE_CAPTURE_URI"].startswith("s3://") and env["LOCKGATE_CAPTURE_URI"].endswith(
        "/capture"
    )
    router = serve_config(run)["applications"][0]["deployments"][0]["user_config"]
    assert router["capture"]["uri"] == env["LOCKGATE_CAPTURE_URI"], "the checks read where the router writes"
    # The template the pod mounts is the stack's exported training job.
    maps = {m["inputs"]["metadata"]["name"]: m["inputs"] for m in run.of_type("kubernetes:core/v1:ConfigMap")}
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    template = maps[volume["configMap"]["name"]]["data"]["rayjob.yaml"]
    assert template == run.exports[exports.TRAINING_JOB_MANIFEST]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert env["LOCKGATE_JOB_TEMPLATE"] == f"{mount['mountPath']}/rayjob.yaml"
    # Its account may create, get and list RayJobs in the namespace: nothing else.
    roles = {
        r["inputs"]["metadata"]["name"]: r["inputs"]
        for r in run.of_type("kubernetes:rbac.authorization.k8s.io/v1:Role")
    }
    bindings = run.of_type("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding")
    granted = [
        roles[b["inputs"]["roleRef"]["name"]]["rules"]
        for b in bindings
        if any(s["name"] == pod["serviceAccountName"] for s in b["inputs"]["subjects"])
    ]
    assert granted == [
        [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list"]}]
    ]
    # The checks judge the model the stack serves, from the stack's own serving file.
    served = ServingFile.model_validate(
        yaml.safe_load(maps[volume["configMap"]["name"]]["data"]["serving.yaml"])
    )
    assert env["LOCKGATE_SERVING_FILE"] == f"{mount['mountPath']}/serving.yaml"
    router_config = serve_config(run)["applications"][0]["deployments"][0]["user_config"]
    assert served.model_name == router_config["champion"]["name"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_the_exporter_serves_lockgate_metrics_from_the_event_store(program_runs, stack) -> None:
    run = program(program_runs, stack)
    deployments = {
        d["inputs"]["metadata"]["name"]: d["inputs"] for d in run.of_type("kubernetes:apps/v1:Deployment")
    }
    exporter = deployments["lockgate-exporter"]["spec"]["template"]
    container = exporter["spec"]["containers"][0]
    assert container["command"][:2] == ["lockgate", "export"]
    env = env_of(container)
    cron = run.one("kubernetes:batch/v1:CronJob")["inputs"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    service = run.one("kubernetes:ray.io/v1:RayService")["inputs"]["spec"]["rayClusterConfig"]
    head = service["headGroupSpec"]["template"]["spec"]["containers"][0]
    checks_env, ray_env = env_of(cron["containers"][0]), env_of(head)
    assert env["LOCKGATE_EVENTS_URI"].endswith("/events")
    assert (
        env["LOCKGATE_EVENTS_URI"] == checks_env["LOCKGATE_EVENTS_URI"] == ray_env["LOCKGATE_EVENTS_URI"]
    ), "runs, checks and the exporter share one event store"
    assert env["LOCKGATE_STATE_URI"] == checks_env["LOCKGATE_STATE_URI"], "drift and quality from the checks"
    monitors = {
        m["inputs"]["metadata"]["name"]: m["inputs"]["spec"]
        for m in run.of_type("kubernetes:monitoring.coreos.com/v1:PodMonitor")
    }
    selected = monitors["lockgate-exporter"]["selector"]["matchLabels"]
    assert selected.items() <= exporter["metadata"]["labels"].items(), "Prometheus scrapes it"
    policies = {
        p["inputs"]["metadata"]["name"]: p["inputs"]["spec"]
        for p in run.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    }
    (rule,) = policies["lockgate-exporter"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9464}] and "namespaceSelector" in rule["from"][0], (
        "only Prometheus' namespace reaches it"
    )


def test_prometheus_rules_and_dashboards_come_from_the_repository_files(dev) -> None:
    rule_files = sorted((ROOT / "monitoring" / "rules").glob("*.yaml"))
    dashboards = sorted((ROOT / "monitoring" / "dashboards").glob("*.json"))
    rules = dev.of_type("kubernetes:monitoring.coreos.com/v1:PrometheusRule")
    assert len(rules) == len(rule_files), "one PrometheusRule per rule file"
    for rule, path in zip(sorted(rules, key=lambda r: r["name"]), rule_files, strict=True):
        assert rule["inputs"]["spec"]["groups"] == yaml.safe_load(path.read_text())["groups"]
    maps = [
        m
        for m in dev.of_type("kubernetes:core/v1:ConfigMap")
        if "grafana_dashboard" in m["inputs"]["metadata"]["labels"]
    ]
    assert len(maps) == len(dashboards), "one dashboard ConfigMap per dashboard file"
    assert all(m["inputs"]["metadata"]["labels"]["grafana_dashboard"] == "1" for m in maps)


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_policy_pack_passes_every_shipped_resource(program_runs, stack) -> None:
    run = program(program_runs, stack)
    resources = [
        StackResource(r["type"], r["name"], {**r["inputs"], "id": f"{r['name']}-id"}, r["parent"])
        for r in run.resources
    ]
    assert check_stack(resources) == {}, "the shipped stack breaks no policy"


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_secrets_stay_secret(program_runs, stack) -> None:
    run = program(program_runs, stack)
    for secret in run.of_type("kubernetes:core/v1:Secret"):
        for key in secret["inputs"]["stringData"]:
            if (
                SECRETISH.search(key)
                and "USERNAME" not in key
                and key not in ("MINIO_ROOT_USER", "AWS_ACCESS_KEY_ID")
            ):
                path = f"stringData.{key}"
                assert any(path == p or path.startswith(f"{p}.") for p in secret["secret_paths"]), (
                    f"{secret['name']}.{key} is a Pulumi secret"
                )
    for manifest in manifests(run):
        for path, value in leaves(manifest).items():
            # A *_FILE variable names a file (mounted from a Secret), not a credential.
            if (
                re.search(r"\.env\.\d+\.name$", path)
                and re.search("PASSWORD|SECRET|TOKEN", str(value))
                and not str(value).endswith("_FILE")
            ):
                assert path.replace(".name", ".valueFrom.secretKeyRef.name") in leaves(manifest), (
                    f"{manifest['kind']} sets {value} from a Secret, never inline"
                )


@pytest.mark.parametrize("stack", ["dev", "aws"])
def test_ray_and_mlflow_ports_stay_inside_the_namespace(program_runs, stack) -> None:
    run = program(program_runs, stack)
    policies = {
        p["inputs"]["metadata"]["name"]: p["inputs"]["spec"]
        for p in run.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
    }
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    mlflow = policies["lockgate-mlflow"]
    assert all(
        "namespaceSelector" not in peer and "ipBlock" not in peer
        for rule in mlflow["ingress"]
        for peer in rule["from"]
    )
    for rule in policies["lockgate-ray"]["ingress"]:
        outside = [peer for peer in rule["from"] if "podSelector" not in peer]
        if outside:
            ports = {port["port"] for port in rule["ports"]}
            assert ports <= {8265, 52365, 8080, 44227}, (
                "only operator and metrics ports open to other namespaces"
            )
            assert all("ipBlock" not in peer for peer in outside), "no Ray port open to the outside world"
    services = run.of_type("kubernetes:core/v1:Service")
    assert all(s["inputs"]["spec"]["type"] == "ClusterIP" for s in services), "no LoadBalancer unless asked"
    serve = run.one("kubernetes:ray.io/v1:RayService")["inputs"]["spec"]["serveService"]
    assert serve["spec"]["type"] == "ClusterIP"


def test_aws_resources_are_private_encrypted_and_least_privilege(aws) -> None:
    eks = aws.one("aws:eks/cluster:Cluster")["inputs"]
    assert eks["vpcConfig"]["endpointPrivateAccess"] is True
    assert eks["vpcConfig"]["publicAccessCidrs"] == [TEST_EGRESS_CIDR], "public only to the named network"
    rds = aws.one("aws:rds/instance:Instance")["inputs"]
    assert (rds["publiclyAccessible"], rds["storageEncrypted"], rds["backupRetentionPeriod"]) == (
        False,
        True,
        14,
    )
    repo = aws.one("aws:ecr/repository:Repository")["inputs"]
    assert (
        repo["imageTagMutability"] == "IMMUTABLE" and repo["imageScanningConfiguration"]["scanOnPush"] is True
    )
    policies = [yaml.safe_load(p["inputs"]["policy"]) for p in aws.of_type("aws:iam/rolePolicy:RolePolicy")]
    actions = {
        a
        for doc in policies
        for s in doc["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert not any(a.endswith("*") for a in actions), f"no wildcard actions: {sorted(actions)}"
    resources = [
        s["Resource"]
        for doc in policies
        for s in doc["Statement"]
        if s["Action"] != "ecr:GetAuthorizationToken"
    ]
    assert "*" not in resources, "every grant except the ECR token names its resource"
    # Object access per workload: each reads and writes only its own prefixes.
    by_role = {
        p["name"]: yaml.safe_load(p["inputs"]["policy"]) for p in aws.of_type("aws:iam/rolePolicy:RolePolicy")
    }

    def objects(role: str, action: str) -> set[str]:
        return {
            resource.split("/", 1)[1]
            for s in by_role[f"lockgate-{role}-irsa-policy"]["Statement"]
            if action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
            for resource in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])
        }

    assert objects("triggers", "s3:PutObject") == {"lockgate-state/*", "events/*", "rollout/*"}, (
        "their state and events, and the live state of a rollout they reclaim"
    )
    assert objects("triggers", "s3:GetObject") == {"lockgate-state/*", "events/*", "capture/*", "rollout/*"}
    assert objects("serving", "s3:PutObject") == {"capture/*"}, "the router writes captured traffic only"
    assert objects("training", "s3:PutObject") == {"ray-train/*", "events/*", "rollout/*"}
    assert objects("serving", "s3:GetObject") == {"capture/*", "rollout/*"}, "it follows the live state"
    assert objects("mlflow", "s3:PutObject") == {"mlflow/*"}
    assert objects("exporter", "s3:PutObject") == set(), "the exporter only reads"
    assert objects("exporter", "s3:GetObject") == {"events/*", "lockgate-state/*"}
    accounts = {
        a["inputs"]["metadata"]["name"]: a["inputs"]["metadata"]["annotations"]
        for a in aws.of_type("kubernetes:core/v1:ServiceAccount")
    }
    assert all("eks.amazonaws.com/role-arn" in annotations for annotations in accounts.values()), (
        "IRSA on both"
    )


def test_serve_config_v2_is_what_local_mode_deploys(program_runs, tmp_path) -> None:
    for key, weight in (("dev", None), ("canary25", 25)):
        run = program(program_runs, key)
        stack = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
        # Local mode: the same serving settings as a serving.yaml, the weight pinned in it, the registry's aliases.
        local = dict(stack["lockgate:serve"])
        if weight is not None:
            local["traffic"] = {**local["traffic"], "candidate_weight": weight}
        path = tmp_path / f"{key}.yaml"
        path.write_text(yaml.safe_dump(local))
        file = load_serving_file(path)
        # The environment's default capture location: the artefact store's in a cluster (MinIO's bucket on dev).
        if weight is None:  # the dev stack pins no version: the router follows the champion alias
            router = following_router_config(file, "s3://lockgate/capture")
        else:
            aliases = {"champion": "1", "candidate": "2"}
            router = resolve_router_config(file, RolloutState(), aliases, "s3://lockgate/capture")
        expected = render_serve_config(file.serving, router)
        assert expected["applications"][0]["deployments"][0]["user_config"]["capture"]["sample_percent"] > 0
        assert serve_config(run) == expected, f"{key}: serveConfigV2 equals the local deployment"
        assert yaml.safe_load(run.exports[exports.SERVE_CONFIG]) == expected


def test_canary_weight_changes_only_the_router_user_config(program_runs) -> None:
    before, after = program(program_runs, "canary10"), program(program_runs, "canary25")
    # Registration order is asynchronous: match resources by (type, name).
    old_by_key = {(r["type"], r["name"]): r for r in before.resources}
    new_by_key = {(r["type"], r["name"]): r for r in after.resources}
    assert old_by_key.keys() == new_by_key.keys(), "the same resources are declared"
    changed = []
    for key, old in old_by_key.items():
        old_leaves, new_leaves = leaves(old["inputs"]), leaves(new_by_key[key]["inputs"])
        changed += [
            f"{key[1]}:{p}"
            for p in old_leaves.keys() | new_leaves.keys()
            if old_leaves.get(p) != new_leaves.get(p)
        ]
    assert changed == ["lockgate-ray-service:spec.serveConfigV2"], f"only the serve config changes: {changed}"
    old_serve, new_serve = leaves(serve_config(before)), leaves(serve_config(after))
    differing = {
        p: (old_serve.get(p), new_serve.get(p))
        for p in old_serve.keys() | new_serve.keys()
        if old_serve.get(p) != new_serve.get(p)
    }
    assert differing == {"applications.0.deployments.0.user_config.traffic.candidate_weight": (10.0, 25.0)}
    export_changes = {k for k in before.exports if before.exports[k] != after.exports[k]}
    assert export_changes == {exports.SERVE_CONFIG}, "no other output moves"


def test_broken_stack_config_fails_the_program_naming_the_key(program_runs) -> None:
    result = program_runs["broken"]
    assert result["returncode"] == 1, "a broken stack config stops the program"
    assert "lockgate:canaryWeight" in result["error"] and "100" in result["error"], result["error"]
