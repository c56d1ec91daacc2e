"""Issue #10, the cluster path: one test per infrastructure finding, each failing on the code before the fix.

New modules are imported inside the tests, so that against the old code each test fails on its own
assertion or import rather than the whole file failing to collect. Upstream facts are cited where used.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import exports
from infra.config import StackConfigError, load_stack_config
from tests.infra.conftest import ROOT, TEST_EGRESS_CIDR, ProgramRun, aws_reachable, program
from tests.infra.driver import engine_config

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
ADDON = "aws:eks/addon:Addon"
ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
RELEASE = "kubernetes:helm.sh/v3:Release"
IMAGE = "docker-build:index:Image"


def shipped(stack: str) -> dict[str, str]:
    raw, _ = engine_config(ROOT / f"Pulumi.{stack}.yaml", [])
    return raw


def reachable_aws(**cluster: Any) -> dict[str, str]:
    """The shipped aws stack with a routable egress network, and any cluster keys changed."""
    raw = shipped("aws")
    raw.update(dict(override.split("=", 1) for override in aws_reachable()))
    if cluster:
        raw["lockgate:cluster"] = json.dumps({**json.loads(raw["lockgate:cluster"]), **cluster})
    return raw


def urn_name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def release(run: ProgramRun, chart: str) -> dict[str, Any]:
    (found,) = [r["inputs"] for r in run.of_type(RELEASE) if r["inputs"]["chart"] == chart]
    return found


def attached_policies(run: ProgramRun, role_name: str) -> set[str]:
    return {r["inputs"]["policyArn"] for r in run.of_type(ATTACHMENT) if r["inputs"]["role"] == role_name}


# Finding 1 ----------------------------------------------------------------------------------------------


def test_1_node_role_can_pull_the_add_on_images(aws) -> None:
    """EKS user guide, "Amazon EKS node IAM role": the kubelet needs AmazonEC2ContainerRegistryPullOnly because
    the built-in networking add-ons run images from Amazon ECR (AWS's registries, not ours)."""
    group = aws.one(NODE_GROUP)["inputs"]
    role = group["nodeRoleArn"].rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    policies = attached_policies(aws, role)
    assert "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryPullOnly" in policies, sorted(policies)
    assert {
        "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
        "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    } <= policies


# Finding 2 ----------------------------------------------------------------------------------------------


def test_2_kubernetes_version_is_chosen_once_and_in_standard_support(aws) -> None:
    """EKS release calendar (docs.aws.amazon.com, EKS user guide "kubernetes-versions"): 1.30 left standard
    support on 2025-07-23. The version lives in infra/config.py only; the stack file does not repeat it."""
    from infra.aws_facts import eks_version_problem

    stack = yaml.safe_load((ROOT / "Pulumi.aws.yaml").read_text())["config"]["lockgate:cluster"]
    assert "kubernetesVersion" not in stack, "the stack file leaves the version to infra/config.py"
    version = aws.one("aws:eks/cluster:Cluster")["inputs"]["version"]
    assert eks_version_problem(version, dt.date.today()) is None, version
    with pytest.raises(StackConfigError) as caught:
        load_stack_config(reachable_aws(kubernetesVersion="1.99"))
    assert any("lockgate:cluster.eks.kubernetesVersion" in p for p in caught.value.problems)


# Finding 3 ----------------------------------------------------------------------------------------------

UNREACHABLE = [
    ("the shipped file names no network", {}, "publicAccessCidrs"),
    ("a documentation range (RFC 5737)", {"publicAccessCidrs": ["203.0.113.0/24"]}, "routable"),
    ("a private range", {"publicAccessCidrs": ["10.0.0.0/8"]}, "routable"),
    (
        "private-only from outside",
        {"endpointPublicAccess": False, "publicAccessCidrs": []},
        "deployFromInsideVpc",
    ),
]


@pytest.mark.parametrize(("case", "cluster", "hint"), UNREACHABLE, ids=[c for c, _, _ in UNREACHABLE])
def test_3_an_unreachable_endpoint_is_refused_with_the_way_out(case, cluster, hint) -> None:
    raw = shipped("aws")
    raw["lockgate:cluster"] = json.dumps({**json.loads(raw["lockgate:cluster"]), **cluster})
    with pytest.raises(StackConfigError) as caught:
        load_stack_config(raw)
    assert any(p.startswith("lockgate:cluster.eks") and hint in p for p in caught.value.problems), (
        f"{case}: {caught.value.problems}"
    )


def test_3_reachable_choices_validate() -> None:
    assert load_stack_config(reachable_aws()).cluster.public_access_cidrs == (TEST_EGRESS_CIDR,)  # type: ignore[union-attr]
    inside = load_stack_config(
        reachable_aws(endpointPublicAccess=False, publicAccessCidrs=[], deployFromInsideVpc=True)
    )
    assert inside.cluster.deploy_from_inside_vpc is True  # type: ignore[union-attr]


# Finding 4 and 17 ---------------------------------------------------------------------------------------


def test_4_kubernetes_provider_waits_for_nodes_and_add_ons(aws) -> None:
    (provider,) = [r for r in aws.resources if r["type"] == "pulumi:providers:kubernetes"]
    waits_for = {urn_name(u) for u in provider["dependencies"]}
    node_group = aws.one(NODE_GROUP)["name"]
    addons = {r["name"] for r in aws.of_type(ADDON)}
    assert node_group in waits_for, f"the provider waits for the node group: {sorted(waits_for)}"
    assert addons and addons <= waits_for, "and for the add-ons (CNI, EBS CSI)"


def test_17_the_namespace_goes_before_the_operator_on_destroy(dev) -> None:
    """RayJobs carry a finalizer only the KubeRay operator removes (ray-operator, RayJob controller): their
    namespace must be deleted while the operator runs, i.e. the namespace depends on the operator."""
    (namespace,) = [r for r in dev.resources if r["type"] == "lockgate:platform:Namespace"]
    operator = [r for r in dev.resources if r["type"] == "lockgate:ray:KubeRayOperator"]
    assert operator, "the operator is its own component"
    release_name = f"{operator[0]['name']}-operator"  # the Helm release inside the component
    assert release_name in {urn_name(u) for u in namespace["dependencies"]}, namespace["dependencies"]
    service = dev.one("kubernetes:ray.io/v1:RayService")
    assert release_name in {urn_name(u) for u in service["dependencies"]}, "the RayService goes first too"


# Finding 5 ----------------------------------------------------------------------------------------------


def test_5_kubeconfig_names_the_region() -> None:
    from infra.components.cluster import kubeconfig_for

    def rendered(profile: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        import pulumi

        @pulumi.runtime.test
        def check() -> Any:
            return kubeconfig_for("c", "https://c", "Q0E=", "eu-west-1", profile).apply(
                lambda text: out.update(json.loads(text))
            )

        check()
        return out["users"][0]["user"]["exec"]

    from tests.infra import mocks

    mocks.install(stack="kubeconfig")
    plain = rendered(None)
    assert plain["args"][plain["args"].index("--region") + 1] == "eu-west-1"
    assert "env" not in plain
    assert rendered("ops")["env"] == [{"name": "AWS_PROFILE", "value": "ops"}]


def test_5_the_stack_kubeconfig_uses_the_providers_region(aws) -> None:
    config = json.loads(aws.exports[exports.KUBECONFIG])
    args = config["users"][0]["user"]["exec"]["args"]
    assert "--region" in args and args[args.index("--region") + 1] == "eu-west-1"


# Finding 7 ----------------------------------------------------------------------------------------------

# m6i.xlarge: 4 vCPU, 16 GiB (EC2 describe-instance-types), 58 pods (amazon-vpc-cni-k8s eni-max-pods.txt).
# The EKS AMIs reserve 80m CPU and 11 * 58 + 255 MiB for the kubelet plus a 100Mi eviction threshold
# (awslabs/amazon-eks-ami): whatever else runs, a pod can never ask for more than this.
M6I_XLARGE_UPPER_BOUND = (4000 - 80, 16384 - (11 * 58 + 255) - 100)


def quantity_milli(cpu: str) -> int:
    return int(cpu[:-1]) if cpu.endswith("m") else int(float(cpu) * 1000)


def quantity_mib(memory: str) -> int:
    return int(memory[:-2]) * (1024 if memory.endswith("Gi") else 1)


def test_7_ray_pods_fit_an_aws_node_and_pulumi_waits_for_them(aws) -> None:
    cluster = aws.one("kubernetes:ray.io/v1:RayService")["inputs"]
    spec = cluster["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        requests = group["template"]["spec"]["containers"][0]["resources"]["requests"]
        assert quantity_milli(requests["cpu"]) < M6I_XLARGE_UPPER_BOUND[0], requests
        assert quantity_mib(requests["memory"]) < M6I_XLARGE_UPPER_BOUND[1], requests
    annotations = cluster["metadata"].get("annotations") or {}
    # Pulumi Kubernetes provider v4.18.0+ (pulumi/pulumi-kubernetes#3134); KubeRay v1.7.0's RayService
    # condition "Ready" (ray-operator/apis/ray/v1/rayservice_types.go).
    assert annotations.get("pulumi.com/waitFor") == "condition=Ready", annotations


def test_7_config_refuses_a_worker_larger_than_the_node() -> None:
    raw = reachable_aws()
    ray = json.loads(raw["lockgate:ray"])
    ray["workers"] = {**ray["workers"], "cpu": "4", "memory": "16Gi"}
    raw["lockgate:ray"] = json.dumps(ray)
    with pytest.raises(StackConfigError) as caught:
        load_stack_config(raw)
    assert any(p.startswith("lockgate:ray.workers") and "m6i.xlarge" in p for p in caught.value.problems)


# Findings 8 and 9 ---------------------------------------------------------------------------------------


def test_8_ebs_csi_driver_on_irsa_and_a_default_gp3_class(aws) -> None:
    """EKS user guide "ebs-csi": the aws-ebs-csi-driver add-on, its controller's service account
    kube-system/ebs-csi-controller-sa on an IAM role with AmazonEBSCSIDriverPolicy."""
    addons = {r["inputs"]["addonName"]: r["inputs"] for r in aws.of_type(ADDON)}
    ebs = addons.get("aws-ebs-csi-driver")
    assert ebs and ebs.get("serviceAccountRoleArn"), sorted(addons)
    role_name = ebs["serviceAccountRoleArn"].rsplit(":", 1)[-1]
    assert "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy" in attached_policies(
        aws, role_name
    )
    (role,) = [r for r in aws.of_type("aws:iam/role:Role") if r["name"] == role_name]
    trust = json.loads(role["inputs"]["assumeRolePolicy"])["Statement"][0]["Condition"]["StringEquals"]
    assert "system:serviceaccount:kube-system:ebs-csi-controller-sa" in trust.values()
    (storage_class,) = aws.of_type("kubernetes:storage.k8s.io/v1:StorageClass")
    inputs = storage_class["inputs"]
    assert inputs["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert (inputs["provisioner"], inputs["parameters"]["type"]) == ("ebs.csi.aws.com", "gp3")


def test_9_vpc_cni_enforces_network_policies(aws) -> None:
    """EKS user guide "cni-network-policy-configure": the vpc-cni add-on's enableNetworkPolicy."""
    addons = {r["inputs"]["addonName"]: r["inputs"] for r in aws.of_type(ADDON)}
    assert "vpc-cni" in addons, sorted(addons)
    assert json.loads(addons["vpc-cni"]["configurationValues"])["enableNetworkPolicy"] == "true"
    nodes = aws.one(NODE_GROUP)
    assert any(urn_name(u).endswith("vpc-cni") for u in nodes["dependencies"]), "nodes start with the agent"


# Finding 10 ---------------------------------------------------------------------------------------------

AS_STORED = [
    ("a number (--path ... 7)", {"champion": 1, "candidate": 7}),
    ("quoted text (--path ... '\"7\"')", {"champion": '"1"', "candidate": '"7"'}),
    ("plain text", {"champion": "1", "candidate": "7"}),
]


@pytest.mark.parametrize(("case", "models"), AS_STORED, ids=[c for c, _ in AS_STORED])
def test_10_a_model_version_is_accepted_however_pulumi_stores_it(case, models) -> None:
    raw = shipped("dev")
    raw["lockgate:models"] = json.dumps(models)
    config = load_stack_config(raw)
    assert (config.models.champion, config.models.candidate) == ("1", "7"), case


def test_10_a_version_that_is_not_one_is_still_refused() -> None:
    for bad in ({"champion": 0}, {"champion": "01"}, {"champion": True}, {"champion": "7", "candidate": 7}):
        raw = shipped("dev")
        raw["lockgate:models"] = json.dumps(bad)
        with pytest.raises(StackConfigError):
            load_stack_config(raw)


# Finding 11 ---------------------------------------------------------------------------------------------


def test_11_unscrapable_control_plane_is_off_and_alertmanager_secrets_are_mounted(dev) -> None:
    """kube-prometheus-stack 88.0.0 values.yaml: kubeScheduler/kubeControllerManager/kubeEtcd/kubeProxy.enabled
    gate their targets and rules; alertmanager.alertmanagerSpec.secrets mounts each Secret at
    /etc/alertmanager/secrets/<name>/."""
    values = release(dev, "kube-prometheus-stack")["values"]
    for component in ("kubeScheduler", "kubeControllerManager", "kubeEtcd", "kubeProxy"):
        assert values.get(component, {}).get("enabled") is False, component
    config = yaml.safe_load((ROOT / "monitoring" / "alertmanager.yaml").read_text())
    files = [
        value
        for receiver in config["receivers"]
        for kind in receiver.values()
        if isinstance(kind, list)
        for entry in kind
        for value in json.dumps(entry).split('"')
        if value.startswith("/etc/alertmanager/secrets/")
    ]
    assert files, "the config reads secret files"
    mounted = values["alertmanager"]["alertmanagerSpec"].get("secrets") or []
    secrets = {
        s["inputs"]["metadata"]["name"]: s
        for s in dev.of_type("kubernetes:core/v1:Secret")
        if s["inputs"]["metadata"].get("namespace") == "monitoring"
    }
    for path in files:
        directory, key = Path(path).parent.name, Path(path).name
        assert directory in mounted, f"{path}: Secret {directory} is mounted"
        assert key in secrets[directory]["inputs"]["stringData"], f"{path}: the Secret has the key"
        assert any(p.startswith("stringData") for p in secrets[directory]["secret_paths"]), "a Pulumi secret"


# Findings 13 and 14 -------------------------------------------------------------------------------------


def dockerignore_includes(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rule for one file: the last matching pattern wins, a pattern matching a parent
    directory matches the file (moby/patternmatcher), ``!`` re-includes."""
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        if body.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(part, body[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(prefix, body) for prefix in prefixes)
        if hit:
            included = negated
    return included


def test_13_the_build_context_holds_exactly_the_image_inputs() -> None:
    """pulumi-docker-build v0.0.22 (provider/internal/context.go) prefers <Dockerfile>.dockerignore, as
    BuildKit does: that file decides the context and its hash."""
    patterns = [
        line.strip()
        for line in (ROOT / "infra" / "image" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    in_context = {path for path in tracked if dockerignore_includes(patterns, path)}
    for path in (
        "Pulumi.dev.yaml",
        "Pulumi.aws.yaml",
        "infra/__main__.py",
        "policy/rules.py",
        "tests/__init__.py",
    ):
        assert path not in in_context, (
            f"{path} would change the context (and rebuild) without changing the image"
        )
    from infra.components.image import context_files

    assert in_context == {p.as_posix() for p in context_files(ROOT)} & set(tracked), (
        "the context is exactly what the Dockerfile copies"
    )


@pytest.mark.parametrize(("before", "after"), [("canary10", "canary25"), ("dev", "candidate")])
def test_13_weight_and_model_changes_leave_the_image_alone(program_runs, before, after) -> None:
    old, new = program(program_runs, before), program(program_runs, after)
    assert old.one(IMAGE)["inputs"] == new.one(IMAGE)["inputs"], "same context, tag, platforms and args"
    assert old.exports[exports.IMAGE_REF] == new.exports[exports.IMAGE_REF]
    old_cluster = old.one("kubernetes:ray.io/v1:RayService")["inputs"]["spec"]["rayClusterConfig"]
    new_cluster = new.one("kubernetes:ray.io/v1:RayService")["inputs"]["spec"]["rayClusterConfig"]
    assert old_cluster == new_cluster, "the Ray cluster is not replaced"
    assert old.one(IMAGE)["inputs"].get("buildOnPreview") is False, "preview needs no Docker"


def test_13_a_stack_file_edit_does_not_change_the_tag(tmp_path) -> None:
    from infra.components.image import IMAGE_INPUTS, code_fingerprint

    for entry in IMAGE_INPUTS:
        source = ROOT / entry
        target = tmp_path / entry
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-r", str(source), str(target)], check=True)
    (tmp_path / "infra" / "image").mkdir(parents=True)
    (tmp_path / "infra" / "image" / "Dockerfile").write_bytes((ROOT / "infra/image/Dockerfile").read_bytes())
    first = code_fingerprint(tmp_path)
    (tmp_path / "Pulumi.dev.yaml").write_text("config: {lockgate:canaryWeight: 25}\n")
    assert code_fingerprint(tmp_path) == first, "stack config is not an image input"
    assert code_fingerprint(tmp_path, platforms=("linux/arm64",)) != first, "another platform, another tag"


def test_14_platforms_follow_the_nodes_unless_set(aws, dev) -> None:
    from infra.__main__ import host_platform

    assert aws.one(IMAGE)["inputs"]["platforms"] == ["linux/amd64"], "m6i nodes are amd64"
    assert dev.one(IMAGE)["inputs"]["platforms"] == [host_platform()], "a local cluster runs on this machine"
    graviton = load_stack_config(reachable_aws(nodeGroup={"instanceTypes": ["m7g.xlarge"]}))
    assert graviton.image_platforms("linux/amd64") == ("linux/arm64",)
    raw = shipped("dev")
    raw["lockgate:image"] = json.dumps(
        {**json.loads(raw["lockgate:image"]), "platforms": ["linux/amd64", "linux/arm64"]}
    )
    assert load_stack_config(raw).image_platforms("linux/amd64") == ("linux/amd64", "linux/arm64")


# Finding 15 ---------------------------------------------------------------------------------------------


def test_15_final_snapshot_name_is_per_stack_and_unique(aws) -> None:
    snapshot = aws.one("aws:rds/instance:Instance")["inputs"]["finalSnapshotIdentifier"]
    assert snapshot.startswith("lockgate-aws-final-") and len(snapshot) > len("lockgate-aws-final-"), snapshot
    from infra.components.registry import snapshot_prefix

    assert snapshot_prefix("lockgate", "team.prod_2") == "lockgate-team-prod-2"
    assert snapshot_prefix("lockgate", "dev") != snapshot_prefix("lockgate", "aws")


# Finding 16 ---------------------------------------------------------------------------------------------


def test_16_operator_crds_are_managed_so_a_chart_bump_updates_them(dev) -> None:
    """Helm installs a chart's crds/ once and never upgrades them (Helm docs, "Custom Resource Definitions")."""
    crds = {
        r["inputs"]["metadata"]["name"]: r["inputs"]
        for r in dev.of_type("kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition")
    }
    assert set(crds) >= {"rayclusters.ray.io", "rayjobs.ray.io", "rayservices.ray.io", "raycronjobs.ray.io"}
    vendored = yaml.safe_load((ROOT / "infra/schemas/crds/ray.io_rayjobs.yaml").read_text())
    assert crds["rayjobs.ray.io"]["spec"] == vendored["spec"], "the vendored CRD, applied as is"
    kuberay = release(dev, "kuberay-operator")
    assert kuberay.get("skipCrds") is True, "Helm no longer owns them"
    versions = yaml.safe_load((ROOT / "infra/schemas/crds/versions.yaml").read_text())
    assert kuberay["version"] == versions["kuberay"]
    upgrade = release(dev, "kube-prometheus-stack")["values"]["crds"]["upgradeJob"]
    assert upgrade["enabled"] is True, (
        "kube-prometheus-stack's documented CRD upgrade job (values.yaml crds.upgradeJob)"
    )


def test_16_a_chart_bump_without_new_crds_is_refused() -> None:
    from infra.components.kuberay import KubeRayOperator

    with pytest.raises(ValueError, match="chart_version"):
        KubeRayOperator("alpha", {"chart_version": "1.8.0", "namespace": "kuberay-system"})
