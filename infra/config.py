"""Typed stack config: every ``lockgate:*`` key of a Pulumi stack, validated once in the composition root.

Keys are camelCase as Pulumi users write them (``pulumi config set lockgate:canaryWeight 25``). The
``serve`` key is serving's own ``ServingFile`` (the local serving.yaml format, snake_case), so the cluster
and the local environment are configured by one model. Defaults live here and nowhere else.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from contracts.strict import Problems, StrictModel, format_problems
from infra import aws_facts
from serving.desired import ServingFile
from serving.spec import MODEL_VERSION_PATTERN

NAMESPACE = "lockgate"
# A DNS-1123 label: Kubernetes namespaces and the names derived from them must be one.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Serve's HTTP proxy must listen on the pod's address for the Serve Service to reach it.
CLUSTER_HTTP_HOST = "0.0.0.0"  # inside a pod, behind a ClusterIP Service and a NetworkPolicy
# Config keys whose values are credentials: they must be set with `pulumi config set --secret`.
SECRET_KEYS: tuple[str, ...] = ("mlflowAdminPassword", "alertmanagerSecrets")


class InfraModel(StrictModel):
    """Base of every stack config model: immutable, unknown keys refused, camelCase keys."""

    # Merged with StrictModel's (frozen, extra forbidden): camelCase keys, as Pulumi config writes them.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class ExistingClusterConfig(InfraModel):
    """Any existing cluster (kind, k3d, minikube, a company cluster) reached through a kubeconfig."""

    kind: Literal["existing"]
    # A kubeconfig file path; unset means the default loading rules ($KUBECONFIG, ~/.kube/config).
    kubeconfig: str | None = None
    context: str | None = None


class NodeGroupConfig(InfraModel):
    """One EKS managed node group."""

    instance_types: tuple[str, ...] = ("m6i.xlarge",)
    min_size: int = Field(default=2, ge=1)
    desired_size: int = Field(default=2, ge=1)
    max_size: int = Field(default=4, ge=1)
    disk_size_gib: int = Field(default=50, ge=20)

    @model_validator(mode="after")
    def _sizes_ordered(self) -> NodeGroupConfig:
        if not self.min_size <= self.desired_size <= self.max_size:
            raise ValueError(
                f"need minSize <= desiredSize <= maxSize, got {self.min_size}, {self.desired_size}, {self.max_size}"
            )
        return self


class EksClusterConfig(InfraModel):
    """A new EKS cluster in a new VPC, with managed nodes, secrets encryption and IRSA."""

    kind: Literal["eks"]
    # The one place the version is chosen (the stack file leaves it unset); checked against the EKS release
    # calendar in infra/aws_facts.py, where the policy pack also refuses one past standard support.
    kubernetes_version: str = Field(default="1.35", pattern=r"^1\.[0-9]+$")
    vpc_cidr: str = "10.40.0.0/16"
    availability_zones: int = Field(default=2, ge=2, le=4)
    node_group: NodeGroupConfig = NodeGroupConfig()
    # How `pulumi up` reaches the API server it just created, an explicit choice: a public endpoint open only
    # to the named (routable) networks it runs from, or the private endpoint when it runs inside the VPC (a
    # runner in the VPC, a peered network or a VPN). Neither is unreachable, so neither is the default.
    endpoint_public_access: bool = False
    public_access_cidrs: tuple[str, ...] = ()
    deploy_from_inside_vpc: bool = False

    @field_validator("kubernetes_version")
    @classmethod
    def _version_known(cls, value: str) -> str:
        if value not in aws_facts.EKS_SUPPORT_CALENDAR:
            known = ", ".join(aws_facts.EKS_SUPPORT_CALENDAR)
            raise ValueError(f"{value} is not in the EKS release calendar (infra/aws_facts.py: {known})")
        return value

    @field_validator("vpc_cidr")
    @classmethod
    def _cidr_valid(cls, value: str) -> str:
        network = ipaddress.ip_network(value)
        if network.prefixlen > 20:
            raise ValueError(f"vpcCidr must be /20 or larger to hold the subnets, got {value}")
        return value

    @field_validator("public_access_cidrs")
    @classmethod
    def _cidrs_valid(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            if ipaddress.ip_network(cidr).prefixlen == 0:
                raise ValueError(f"{cidr} opens the API endpoint to the whole internet; name your networks")
            if not aws_facts.is_routable_public_network(cidr):
                raise ValueError(
                    f"{cidr} is not a routable public network (private, documentation or reserved range): "
                    "the EKS public endpoint sees your public egress address"
                )
        return value

    @model_validator(mode="after")
    def _endpoint_reachable(self) -> EksClusterConfig:
        if self.endpoint_public_access and not self.public_access_cidrs:
            raise ValueError(
                "endpointPublicAccess needs publicAccessCidrs (your public egress networks, e.g. "
                "`pulumi config set --path 'lockgate:cluster.publicAccessCidrs[0]' <your-ip>/32`)"
            )
        if not self.endpoint_public_access and self.public_access_cidrs:
            raise ValueError("publicAccessCidrs is only used with endpointPublicAccess: true")
        if not self.endpoint_public_access and not self.deploy_from_inside_vpc:
            raise ValueError(
                "the private-only API endpoint is unreachable from outside the new VPC, so `pulumi up` could "
                "not install anything in the cluster: set endpointPublicAccess: true with publicAccessCidrs "
                "(your networks), or deployFromInsideVpc: true when Pulumi runs inside the VPC"
            )
        return self


ClusterConfig = Annotated[ExistingClusterConfig | EksClusterConfig, Field(discriminator="kind")]


class OperatorsConfig(InfraModel):
    """The cluster-wide operators; an ephemeral stack on a shared cluster reuses the ones installed there."""

    install: bool = True
    kuberay_chart_version: str = "1.7.0"
    kube_prometheus_stack_chart_version: str = "88.0.0"
    kuberay_namespace: str = Field(default="kuberay-system", pattern=DNS_LABEL_PATTERN)
    monitoring_namespace: str = Field(default="monitoring", pattern=DNS_LABEL_PATTERN)


class ImageConfig(InfraModel):
    """How the code reaches the cluster: an image built and pushed by `pulumi up`, or a prebuilt one."""

    build: bool = True
    # Where the built image is pushed on an existing cluster (on aws: the stack's ECR repository).
    repository: str | None = None
    # A prebuilt image reference (with digest), used when build is false.
    ref: str | None = None
    # Docker platforms to build; unset: what the nodes run (aws: the node group's instance architecture;
    # an existing cluster: this machine's architecture, as kind/k3d/minikube run on it).
    platforms: tuple[Literal["linux/amd64", "linux/arm64"], ...] | None = Field(default=None, min_length=1)
    ray_version: str = "2.60.0"

    @model_validator(mode="after")
    def _one_source(self) -> ImageConfig:
        if not self.build and not self.ref:
            raise ValueError("ref is required when build is false (the image to run)")
        if self.build and self.ref:
            raise ValueError("ref is only used when build is false")
        return self


class ArtifactStoreConfig(InfraModel):
    """The artefact store: S3 on aws, MinIO in the cluster otherwise."""

    noncurrent_version_expiration_days: int = Field(default=90, ge=1)
    minio_storage_gib: int = Field(default=20, ge=1)
    minio_image: str = "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"
    minio_client_image: str = "quay.io/minio/mc:RELEASE.2025-08-13T08-35-41Z"
    # Deleting a stack never deletes artefacts unless this says so (ephemeral stacks set it).
    force_destroy: bool = False


class DatabaseConfig(InfraModel):
    """The MLflow backend store: RDS Postgres on aws, Postgres in the cluster otherwise."""

    storage_gib: int = Field(default=20, ge=10)
    instance_class: str = "db.t4g.small"
    engine_version: str = Field(default="17", pattern=r"^[0-9]+(\.[0-9]+)?$")
    # The in-cluster Postgres image (outside aws).
    image: str = "postgres:17.6"
    backup_retention_days: int = Field(default=7, ge=1, le=35)
    multi_az: bool = False
    deletion_protection: bool = True


class MlflowConfig(InfraModel):
    """The MLflow tracking server and model registry."""

    replicas: int = Field(default=1, ge=1)
    admin_username: str = Field(default="lockgate-admin", pattern=r"^[a-z][a-z0-9\-]*$")
    database: DatabaseConfig = DatabaseConfig()


class MonitoringConfig(InfraModel):
    """kube-prometheus-stack plus the repository's rules and dashboards."""

    retention: str = Field(default="15d", pattern=r"^[0-9]+[dhw]$")
    storage_gib: int = Field(default=20, ge=1)
    # Where the team reads monitoring/README.md (its repository's copy): each alert's runbook_url is this
    # base + its `runbook` anchor. Unset: the rule files' own runbook_url is kept.
    runbook_base_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+/$")
    # The Prometheus HTTP API the rollout analysis queries. Unset: the kube-prometheus-stack Service this
    # stack installs (or a shared cluster's stack installed the same way) in `operators.monitoringNamespace`.
    prometheus_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(:[0-9]+)?/?$")


class WorkerGroupConfig(InfraModel):
    """The Ray worker group: where Serve replicas and Train workers run."""

    replicas: int = Field(default=2, ge=0)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    cpu: str = "2"
    memory: str = "8Gi"

    @model_validator(mode="after")
    def _replicas_ordered(self) -> WorkerGroupConfig:
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(
                f"need minReplicas <= replicas <= maxReplicas, got {self.min_replicas}, {self.replicas}, "
                f"{self.max_replicas}"
            )
        return self


class TriggerChecksConfig(InfraModel):
    """The CronJob that runs the trigger checks: drift, degradation and the pipeline file's own schedule.

    Each check is one short pod (``lockgate triggers check``); a run starts only when a trigger fires.
    """

    # How often to check (cron, in the cluster's time zone); suspended: no checks, no triggered runs.
    schedule: str = Field(default="*/15 * * * *", pattern=r"^(\S+\s+){4}\S+$")
    suspended: bool = False
    cpu: str = "250m"
    memory: str = "1Gi"


class RayConfig(InfraModel):
    """The Ray clusters: the RayService for serving, and the clusters training jobs bring up."""

    head_cpu: str = "1"
    head_memory: str = "4Gi"
    workers: WorkerGroupConfig = WorkerGroupConfig()
    pipeline_file: str = "pipeline.yaml"
    trigger_checks: TriggerChecksConfig = TriggerChecksConfig()
    # The serving cluster's ingress: Serve's proxy, or HAProxy + throughput-optimised replicas (see README).
    serve_ingress: Literal["proxy", "haproxy"] = "proxy"


class ModelVersionsConfig(InfraModel):
    """Which registered versions the router serves: the cluster's stand-in for the registry's aliases.

    A version arrives however Pulumi stored it: ``pulumi config set --path 'lockgate:models.candidate' 7``
    stores the number 7, the README's older ``'"7"'`` the text ``"7"`` with its quotes; both mean "7".
    """

    # None (a fresh stack: nothing is registered yet): the router follows the registry's champion alias.
    champion: str | None = Field(default=None, pattern=MODEL_VERSION_PATTERN)
    candidate: str | None = Field(default=None, pattern=MODEL_VERSION_PATTERN)

    @field_validator("champion", "candidate", mode="before")
    @classmethod
    def _normalise_version(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return value  # refused by the field: true is not a version
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        if isinstance(value, str):
            return value.strip().strip("'\"").strip()
        return value


class StackConfig(InfraModel):
    """Every ``lockgate:*`` key of a stack."""

    cluster: ClusterConfig
    namespace: str = Field(default="lockgate", pattern=DNS_LABEL_PATTERN, max_length=40)
    operators: OperatorsConfig = OperatorsConfig()
    image: ImageConfig = ImageConfig()
    artifact_store: ArtifactStoreConfig = ArtifactStoreConfig()
    mlflow: MlflowConfig = MlflowConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    ray: RayConfig = RayConfig()
    serve: ServingFile
    models: ModelVersionsConfig = ModelVersionsConfig()
    # The canary's share in percent: a pin that wins over serve.traffic.candidate_weight.
    canary_weight: float | None = Field(default=None, ge=0.0, le=100.0)
    # A public LoadBalancer in front of Serve; off unless the stack asks for it.
    public_serve: bool = False
    # Set with --secret; unset means a generated password (stack output mlflowAdminPassword).
    mlflow_admin_password: SecretStr | None = None
    # The files monitoring/alertmanager.yaml reads (pager-token, team-chat-url, ...), set with --secret as one
    # object; a key left out makes its receiver fail loudly instead of sending anywhere.
    alertmanager_secrets: dict[str, SecretStr] | None = None

    @property
    def on_aws(self) -> bool:
        """Whether this stack creates its own EKS cluster and uses AWS managed services."""
        return isinstance(self.cluster, EksClusterConfig)

    def image_platforms(self, host_platform: str) -> tuple[str, ...]:
        """The Docker platforms to build: as configured, else what the nodes run.

        ``host_platform``: this machine's (``linux/amd64`` or ``linux/arm64``), what a local cluster runs.
        """
        if self.image.platforms is not None:
            return tuple(self.image.platforms)
        if isinstance(self.cluster, EksClusterConfig):
            return tuple(
                sorted({aws_facts.architecture(kind) for kind in self.cluster.node_group.instance_types})
            )
        return (host_platform,)

    def _pods_fit_the_nodes(self) -> list[str]:
        """On aws: a Ray head or worker pod larger than a node's allocatable resources is never scheduled."""
        if not isinstance(self.cluster, EksClusterConfig):
            return []
        problems = []
        pods = {
            "ray.workers": (self.ray.workers.cpu, self.ray.workers.memory),
            "ray.head": (self.ray.head_cpu, self.ray.head_memory),
        }
        for instance_type in self.cluster.node_group.instance_types:
            room = aws_facts.allocatable(instance_type)
            if room is None:
                continue
            for key, (cpu, memory) in pods.items():
                if aws_facts.cpu_milli(cpu) > room[0] or aws_facts.memory_mib(memory) > room[1]:
                    problems.append(
                        f"{key}: {cpu} CPU / {memory} does not fit a {instance_type} node, which has about "
                        f"{room[0]}m CPU / {room[1]}Mi left for pods (capacity minus kube-reserved, eviction "
                        "threshold and daemon sets; infra/aws_facts.py)"
                    )
        return problems

    @model_validator(mode="after")
    def _cross_checks(self) -> StackConfig:
        problems = []
        if self.serve.serving.http_host != CLUSTER_HTTP_HOST:
            problems.append(
                f"serve.serving.http_host must be {CLUSTER_HTTP_HOST} in a cluster (the Serve Service reaches "
                f"the proxy on the pod's address), got {self.serve.serving.http_host}"
            )
        if self.models.candidate is not None and self.models.champion is None:
            problems.append(
                "models.candidate: a candidate needs models.champion pinned beside it (or neither: the router "
                "then follows the registry's champion alias)"
            )
        if self.models.candidate is not None and self.models.candidate == self.models.champion:
            problems.append(
                f"models.candidate must differ from models.champion, both are {self.models.champion}"
            )
        if self.image.build and not self.on_aws and not self.image.repository:
            problems.append(
                "image.repository is required to push a built image outside aws (or set image.ref)"
            )
        problems.extend(self._pods_fit_the_nodes())
        if problems:
            raise Problems(problems)
        return self


class StackConfigError(ValueError):
    """Stack config that does not validate; every problem starts with its ``lockgate:`` key path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid stack config:\n" + "\n".join(f"  - {p}" for p in problems))


def parse_config_value(value: str) -> Any:
    """A raw config value as the engine passes it: objects and lists arrive as JSON text."""
    stripped = value.strip()
    if stripped[:1] in ("{", "["):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value
    return value


def load_stack_config(raw: Mapping[str, str], secret_keys: frozenset[str] = frozenset()) -> StackConfig:
    """Validate the stack's ``lockgate:*`` keys (other namespaces are ignored).

    ``raw`` maps full keys (``lockgate:canaryWeight``) to the engine's string values; ``secret_keys`` names
    the keys set with ``--secret``. Raises StackConfigError naming every offending key path.
    """
    prefix = f"{NAMESPACE}:"
    values = {key[len(prefix) :]: parse_config_value(v) for key, v in raw.items() if key.startswith(prefix)}
    problems = [
        f"{prefix}{key}: a credential must be set with `pulumi config set --secret {prefix}{key}`"
        for key in SECRET_KEYS
        if key in values and f"{prefix}{key}" not in secret_keys
    ]
    try:
        config = StackConfig.model_validate(values)
    except ValidationError as error:
        problems.extend(format_problems(error, prefix))
        config = None
    if problems or config is None:
        raise StackConfigError(problems)
    return config


def read_engine_config() -> tuple[dict[str, str], frozenset[str]]:
    """Every config key the engine passed to this program, and which of them are secrets."""
    from pulumi.runtime import config as runtime_config

    raw: dict[str, str] = {}
    raw.update(runtime_config.get_config_env())
    raw.update(runtime_config.CONFIG.get())
    secret = {key for key in raw if runtime_config.is_config_secret(key)}
    secret.update(runtime_config.get_config_secret_keys_env())
    return {key: str(value) for key, value in raw.items()}, frozenset(secret)


def json_schema() -> dict[str, Any]:
    """The JSON schema of the stack config (the ``lockgate:`` keys)."""
    return StackConfig.model_json_schema(by_alias=True)
