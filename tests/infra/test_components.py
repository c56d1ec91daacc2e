"""Each component on its own under mocks: its invariants, its validation, and two instances side by side."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from infra.components.artifact_store import MinioArtifactStore, S3ArtifactStore
from infra.components.cluster import EksCluster
from infra.components.iam import WorkloadRole
from infra.components.image import code_fingerprint
from infra.components.monitoring import Monitoring, load_rule_groups
from infra.components.namespace import Namespace
from infra.components.ray_platform import RayPlatform, ray_pod_labels
from infra.components.registry import Database, ImageRepository, InClusterPostgres, ModelRegistry
from policy.rules import StackResource, check_stack
from tests.infra import mocks as mocks_module
from tests.infra.conftest import ROOT, crd_errors
from tests.infra.mocks import LockgateMocks, Recorded

SERVE_CONFIG = "applications: []\n"


@pytest.fixture(scope="module")
def mocks() -> LockgateMocks:
    return mocks_module.install(stack="components")


def declare(mocks: LockgateMocks, build: Callable[[], Any]) -> list[Recorded]:
    """Run ``build`` under the mock engine until every registration finished; what it declared."""
    mocks.reset()

    @pulumi.runtime.test
    def run() -> Any:
        build()
        return pulumi.Output.from_input(True)

    run()
    return list(mocks.recorded)


def of_type(recorded: list[Recorded], suffix: str) -> list[Recorded]:
    return [r for r in recorded if r.type.endswith(suffix)]


def assert_two_instances_never_collide(recorded: list[Recorded], names: tuple[str, str]) -> None:
    keys = [(r.type, r.name) for r in recorded]
    assert len(keys) == len(set(keys)), "logical names are unique across instances"
    for r in recorded:
        assert r.name.startswith(names) or r.name in names, f"{r.name} is named from its instance"
    k8s_names = [
        (r.inputs["kind"], r.inputs["metadata"].get("namespace"), r.inputs["metadata"]["name"])
        for r in recorded
        if r.type.startswith("kubernetes:") and "name" in r.inputs.get("metadata", {})
    ]
    assert len(k8s_names) == len(set(k8s_names)), "Kubernetes object names are unique across instances"


def test_s3_store_is_private_encrypted_versioned_and_expiring(mocks) -> None:
    args: Any = {"noncurrent_version_expiration_days": 30, "force_destroy": False}
    recorded = declare(mocks, lambda: [S3ArtifactStore(n, args) for n in ("alpha", "beta")])
    assert_two_instances_never_collide(recorded, ("alpha", "beta"))
    resources = [StackResource(r.type, r.name, {**r.inputs, "id": f"{r.name}-id"}) for r in recorded]
    assert check_stack(resources) == {}, "both buckets pass every policy"
    encryption = of_type(recorded, "BucketServerSideEncryptionConfiguration")[0].inputs["rules"][0]
    assert encryption["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    versioning = of_type(recorded, "BucketVersioning")[0].inputs
    assert versioning["versioningConfiguration"]["status"] == "Enabled"
    lifecycle = of_type(recorded, "BucketLifecycleConfiguration")[0].inputs["rules"]
    assert lifecycle[0]["noncurrentVersionExpiration"]["noncurrentDays"] == 30
    policy = json.loads(of_type(recorded, "BucketPolicy")[0].inputs["policy"])
    assert policy["Statement"][0]["Effect"] == "Deny", "plain HTTP is refused"
    with pytest.raises(ValueError, match="noncurrent_version_expiration_days"):
        S3ArtifactStore("bad", {"noncurrent_version_expiration_days": 0, "force_destroy": False})


def minio_args(**overrides: Any) -> Any:
    return {
        "namespace": "ns",
        "storage_gib": 1,
        "image": "minio:x",
        "client_image": "mc:x",
        "workloads": [
            {"workload": "serving", "read_write": ["capture"], "read_only": []},
            {"workload": "exporter", "read_write": [], "read_only": ["events"]},
        ],
        **overrides,
    }


REGISTRY_USERS: Any = [
    {"workload": "training", "username": "lockgate-training", "access": "trainer"},
    {"workload": "serving", "username": "lockgate-serving", "access": "reader"},
]


def test_minio_and_postgres_are_reachable_only_from_their_clients(mocks) -> None:
    def build() -> None:
        for name in ("alpha", "beta"):
            MinioArtifactStore(name, minio_args())
            InClusterPostgres(
                f"{name}-db",
                {
                    "namespace": "ns",
                    "storage_gib": 1,
                    "image": "postgres:x",
                    "client_selector": {"app": name},
                },
            )

    recorded = declare(mocks, build)
    assert_two_instances_never_collide(recorded, ("alpha", "beta"))
    assert check_stack([StackResource(r.type, r.name, r.inputs) for r in recorded]) == {}
    for policy in of_type(recorded, "NetworkPolicy"):
        for rule in policy.inputs["spec"]["ingress"]:
            assert all(peer["podSelector"]["matchLabels"] for peer in rule["from"]), "named client pods only"
    postgres = [p for p in of_type(recorded, "NetworkPolicy") if p.name == "alpha-db-ingress"][0]
    assert postgres.inputs["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {"app": "alpha"}


def test_monitoring_turns_every_rule_file_and_dashboard_into_objects(mocks, tmp_path: Path) -> None:
    rules_dir, dashboards_dir = tmp_path / "rules", tmp_path / "dashboards"
    rules_dir.mkdir()
    dashboards_dir.mkdir()
    groups = [
        {
            "name": "g",
            "rules": [{"alert": "A", "expr": "up == 0", "for": "5m", "labels": {"severity": "page"}}],
        }
    ]
    for stem in ("serving", "Pipeline_V2"):
        (rules_dir / f"{stem}.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (dashboards_dir / "overview.json").write_text(json.dumps({"title": "Overview", "panels": []}))

    def args(install: bool) -> Any:
        return {
            "install_stack": install,
            "chart_version": "88.0.0",
            "monitoring_namespace": "monitoring",
            "namespace": "ns",
            "rules_dir": rules_dir,
            "dashboards_dir": dashboards_dir,
            "alertmanager_file": tmp_path / "absent.yaml",
            "retention": "15d",
            "storage_gib": 1,
            "ray_pod_labels": ray_pod_labels("alpha"),
        }

    recorded = declare(mocks, lambda: Monitoring("alpha", args(install=False)))
    rules = of_type(recorded, "PrometheusRule")
    assert sorted(r.inputs["metadata"]["name"] for r in rules) == ["alpha-pipeline-v2", "alpha-serving"]
    assert all(r.inputs["spec"]["groups"] == groups and crd_errors(r.inputs) == [] for r in rules)
    dashboards = of_type(recorded, "ConfigMap")
    assert len(dashboards) == 1 and dashboards[0].inputs["metadata"]["labels"]["grafana_dashboard"] == "1"
    monitors = of_type(recorded, "ServiceMonitor") + of_type(recorded, "PodMonitor")
    assert len(monitors) == 2 and all(crd_errors(m.inputs) == [] for m in monitors)
    assert not of_type(recorded, "Release"), "a shared cluster's stack installs no second monitoring stack"
    installed = declare(mocks, lambda: Monitoring("beta", args(install=True)))
    values = of_type(installed, "Release")[0].inputs["values"]
    assert values["grafana"]["sidecar"]["dashboards"]["label"] == "grafana_dashboard"
    assert all(
        values[part]["service"]["type"] == "ClusterIP" for part in ("prometheus", "alertmanager", "grafana")
    )
    (rules_dir / "broken.yaml").write_text("not_groups: []\n")
    with pytest.raises(ValueError, match="broken.yaml"):
        load_rule_groups(rules_dir / "broken.yaml")


def ray_args(**overrides: Any) -> Any:
    args = {
        "namespace": "ns",
        "operator_ready": [],
        "operator_namespace": "kuberay-system",
        "monitoring_namespace": "monitoring",
        "ray_version": "2.60.0",
        "image": "lockgate:abc",
        "serve_config": SERVE_CONFIG,
        "head_cpu": "1",
        "head_memory": "2Gi",
        "workers": {"replicas": 1, "min_replicas": 1, "max_replicas": 2, "cpu": "2", "memory": "4Gi"},
        "mlflow_tracking_uri": "http://mlflow:5000",
        "train_storage_uri": "s3://bucket/ray-train",
        **{
            workload: {
                "mlflow_secret": f"mlflow-{workload}",
                "store_env": [],
                "service_account_annotations": {},
            }
            for workload in ("serving", "training", "triggers")
        },
        "pipeline_file": "pipeline.yaml",
        "trigger_checks": {"schedule": "*/15 * * * *", "suspended": False, "cpu": "250m", "memory": "1Gi"},
        "capture_uri": "s3://bucket/capture",
        "state_uri": "s3://bucket/lockgate-state",
        "events_uri": "s3://bucket/events",
        "live_state_uri": "s3://bucket/rollout",
        "prometheus_url": "http://kube-prometheus-stack-prometheus.monitoring.svc:9090",
        "prometheus_selector": '{"application": "lockgate", "namespace": "ns"}',
        "serving_file_yaml": "model_name: m\n",
        "serve_ingress": "proxy",
        "public_serve": False,
    }
    args.update(overrides)
    return args


def test_ray_platform_serves_the_given_config_with_credentials_from_a_secret(mocks) -> None:
    recorded = declare(mocks, lambda: [RayPlatform(n, ray_args()) for n in ("alpha", "beta")])
    assert_two_instances_never_collide(recorded, ("alpha", "beta"))
    assert check_stack([StackResource(r.type, r.name, r.inputs) for r in recorded]) == {}
    service = [r for r in of_type(recorded, "RayService") if r.name.startswith("alpha")][0].inputs
    assert service["spec"]["serveConfigV2"] == SERVE_CONFIG, "the renderer's output, untouched"
    assert crd_errors(service) == []
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["envFrom"] == [{"secretRef": {"name": "mlflow-serving"}}], (
        "serving's MLflow user, from a Secret"
    )
    assert not any("PASSWORD" in e["name"] for e in head["env"]), "no credential inline"
    assert service["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}


def test_public_serve_only_when_asked(mocks) -> None:
    recorded = declare(mocks, lambda: RayPlatform("alpha", ray_args(public_serve=True)))
    serve = of_type(recorded, "RayService")[0].inputs["spec"]["serveService"]
    assert serve["spec"]["type"] == "LoadBalancer"
    assert check_stack([StackResource(r.type, r.name, r.inputs) for r in recorded]) == {}, (
        "marked as asked for"
    )
    serve["metadata"].pop("annotations")
    unmarked = [StackResource(r.type, r.name, r.inputs) for r in of_type(recorded, "RayService")]
    assert "no-public-load-balancer" in check_stack(unmarked), "an unmarked public LoadBalancer is refused"


def test_registry_runs_mlflow_with_auth_and_secret_credentials(mocks) -> None:
    def build() -> None:
        database = Database("db.ns", 5432, pulumi.Output.from_input("s3cr3t-db-value"))
        ModelRegistry(
            "alpha",
            {
                "namespace": "ns",
                "image": "lockgate:abc",
                "replicas": 2,
                "database": database,
                "artifacts_destination": "s3://bucket/mlflow",
                "store_env": [],
                "service_account_annotations": {},
                "admin_username": "admin",
                "admin_password": pulumi.Output.secret("s3cr3t-admin-value"),
                "registered_model": "lockgate",
                "users": REGISTRY_USERS,
            },
        )
        ImageRepository("alpha-images", {"keep_images": 5, "force_delete": False})

    recorded = declare(mocks, build)
    assert check_stack([StackResource(r.type, r.name, r.inputs) for r in recorded]) == {}
    container = of_type(recorded, "Deployment")[0].inputs["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["--app-name", "basic-auth"], "authentication is on"
    plain_values = json.dumps(container)
    assert "s3cr3t" not in plain_values, "no credential in the pod spec"
    server = [s for s in of_type(recorded, "Secret") if s.name == "alpha-mlflow-server"][0]
    assert "s3cr3t-db-value" in server.inputs["stringData"]["backend-store-uri"] and server.secret_paths


def test_eks_validates_before_declaring_and_is_private_by_default(mocks) -> None:
    args: Any = {
        "cluster_name": "alpha",
        "kubernetes_version": "1.35",
        "vpc_id": "vpc-1",
        "private_subnet_ids": ["a", "b"],
        "endpoint_public_access": True,
        "public_access_cidrs": [],
        "instance_types": ["m6i.large"],
        "min_size": 1,
        "desired_size": 1,
        "max_size": 2,
        "disk_size_gib": 50,
        "deploy_from_inside_vpc": False,
        "region": "eu-west-1",
        "aws_profile": None,
    }
    with pytest.raises(ValueError, match="public_access_cidrs"):
        EksCluster("bad", args)
    private: Any = {**args, "endpoint_public_access": False, "deploy_from_inside_vpc": True}
    recorded = declare(mocks, lambda: EksCluster("alpha", private))
    cluster = of_type(recorded, "eks/cluster:Cluster")[0].inputs
    assert (
        cluster["vpcConfig"]["endpointPublicAccess"] is False
        and cluster["vpcConfig"]["endpointPrivateAccess"]
    )
    assert check_stack([StackResource(r.type, r.name, r.inputs) for r in recorded]) == {}
    assert any(r.type == "aws:iam/openIdConnectProvider:OpenIdConnectProvider" for r in recorded), "IRSA"


def test_workload_role_trusts_exactly_one_service_account(mocks) -> None:
    recorded = declare(
        mocks,
        lambda: WorkloadRole(
            "alpha",
            {
                "oidc_provider_arn": "arn:oidc",
                "oidc_issuer": "oidc.example/id/X",
                "namespace": "ns",
                "service_account": "sa",
                "statements": [
                    {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/p/*"}
                ],
            },
        ),
    )
    trust = json.loads(of_type(recorded, "iam/role:Role")[0].inputs["assumeRolePolicy"])
    condition = trust["Statement"][0]["Condition"]["StringEquals"]
    assert condition == {
        "oidc.example/id/X:sub": "system:serviceaccount:ns:sa",
        "oidc.example/id/X:aud": "sts.amazonaws.com",
    }


def test_namespace_is_restricted_and_denies_ingress_by_default(mocks) -> None:
    recorded = declare(mocks, lambda: Namespace("alpha", {"namespace": "lockgate-alpha"}))
    labels = of_type(recorded, "core/v1:Namespace")[0].inputs["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    deny = of_type(recorded, "NetworkPolicy")[0].inputs["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_code_fingerprint_follows_content(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "req.txt").write_text("ray==2.60.0\n")
    inputs = ("pkg", "req.txt")
    first = code_fingerprint(tmp_path, inputs)
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert code_fingerprint(tmp_path, inputs) == first, "bytecode caches do not change the image"
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert code_fingerprint(tmp_path, inputs) != first, "a code change is a new tag"
    assert len(code_fingerprint(ROOT)) == 16, "the repository's own image inputs all exist"


def test_haproxy_ingress_is_set_on_the_serving_cluster_only(mocks) -> None:
    recorded = declare(mocks, lambda: RayPlatform("alpha", ray_args(serve_ingress="haproxy")))
    cluster = of_type(recorded, "RayService")[0].inputs["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    (config_map,) = [r for r in of_type(recorded, "ConfigMap") if r.name == "alpha-training-job"]
    template = yaml.safe_load(config_map.inputs["data"]["rayjob.yaml"])
    head = template["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert not any(e["name"].startswith("RAY_SERVE_") for e in head["env"]), "training clusters serve nothing"
    default = declare(mocks, lambda: RayPlatform("beta", ray_args()))
    service = of_type(default, "RayService")[0].inputs["spec"]["rayClusterConfig"]
    env = service["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert not any(e["name"] == "RAY_SERVE_ENABLE_HA_PROXY" for e in env), "Serve's proxy unless asked"


def test_runbook_links_follow_the_stacks_own_copy_of_the_runbooks() -> None:
    from infra.components.monitoring import load_rule_groups
    from tests.conftest import ROOT

    # Given the shipped rule files and a team's own repository address,
    base = "https://git.example.com/team/platform/-/blob/main/"
    for path in sorted((ROOT / "monitoring" / "rules").glob("*.yaml")):
        # when a stack loads them with that base,
        alerts = [r for g in load_rule_groups(path, base) for r in g["rules"] if "alert" in r]
        # then every alert links its runbook section under that base; without one the file's link stays.
        assert alerts, path
        for rule in alerts:
            annotations = rule["annotations"]
            assert annotations["runbook_url"] == base + annotations["runbook"], rule["alert"]
        kept = [r for g in load_rule_groups(path) for r in g["rules"] if "alert" in r]
        assert all(r["annotations"]["runbook_url"].startswith("https://github.com/") for r in kept), path
