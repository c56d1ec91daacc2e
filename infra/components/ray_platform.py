"""RayPlatform: the serving RayService, the training RayJob template, the trigger checks (operator: kuberay.py).

The RayService's ``serveConfigV2`` is serving's rendered config, untouched: a stack config change that moves
only the canary weight changes only the router's ``user_config`` there, which KubeRay applies in place
(Serve calls ``reconfigure()``), with no new cluster and no replica restart.
"""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath
from typing import Any, Literal, TypedDict
from urllib.parse import urlsplit

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
import yaml

from contracts.settings import EnvVar
from infra import kube, workloads
from infra.components.registry import workload_labels
from serving.spec import SERVE_INGRESS_ENV

RAY_USER_ID = 1000
WORKDIR = "/home/ray/lockgate"
SERVE_PORT = 8000
DASHBOARD_PORT = 8265
DASHBOARD_AGENT_PORT = 52365
CLIENT_PORT = 10001
GCS_PORT = 6379
METRICS_PORT = 8080
DASHBOARD_METRICS_PORT = 44227
TRAIN_STORAGE_ENV = EnvVar.train_storage.value  # read by pipeline/train.py
# Where the trigger-check pod finds the training RayJob template (lockgate/kuberay.py reads it).
TEMPLATE_DIR, TEMPLATE_FILE, SERVING_FILE = "/etc/lockgate", "rayjob.yaml", "serving.yaml"
# Label on every training RayJob: the trigger checks count runs in flight by it (lockgate/kuberay.py).
ROLE_LABEL, TRAINING_ROLE = "lockgate.dev/role", "training"
# Pulumi's Kubernetes provider does not await custom resources unless told what "ready" means: the
# `pulumi.com/waitFor` annotation (provider v4.18.0 and later; pulumi/pulumi-kubernetes#3134), in kubectl
# wait's syntax. KubeRay v1.7.0 sets the RayService condition `Ready` once Serve answers
# (ray-operator/apis/ray/v1/rayservice_types.go, RayServiceReady). Ray images are large: allow 20 minutes.
WAIT_FOR_ANNOTATION, TIMEOUT_ANNOTATION = "pulumi.com/waitFor", "pulumi.com/timeoutSeconds"
RAY_SERVICE_READY = "condition=Ready"
AWAIT_TIMEOUT_SECONDS = 1200
# Where the serving cluster's pods find the /labels bearer token (the router reads the file the env names).
LABELS_TOKEN_DIR, LABELS_TOKEN_FILE = "/etc/lockgate-labels", "token"
HTTPS_PORT, DNS_PORT = 443, 53


def url_port(url: str) -> int:
    """The TCP port an http(s) URL reaches (its explicit port, else the scheme's)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"prometheus_url: {url!r} is not an http(s) URL")
    return parts.port or (HTTPS_PORT if parts.scheme == "https" else 80)


def serving_service_account(name: str) -> str:
    """The service account the serving RayService's pods run as (an IRSA role trusts it by name)."""
    return workloads.service_account(name, workloads.SERVING)


def training_service_account(name: str) -> str:
    """The service account every training RayJob's pods run as (an IRSA role trusts it by name)."""
    return workloads.service_account(name, workloads.TRAINING)


def triggers_service_account(name: str) -> str:
    """The service account the trigger checks run as: it may create and read RayJobs, nothing else."""
    return workloads.service_account(name, workloads.TRIGGERS)


def awaited(condition: str) -> dict[str, str]:
    """Annotations that make `pulumi up` wait until a custom resource reports ``condition`` (or time out)."""
    return {WAIT_FOR_ANNOTATION: condition, TIMEOUT_ANNOTATION: str(AWAIT_TIMEOUT_SECONDS)}


def ray_pod_labels(name: str) -> dict[str, str]:
    """Labels on every Ray pod a RayPlatform creates: monitors and network policies select by them."""
    return {"app.kubernetes.io/part-of": kube.PART_OF, "lockgate.dev/ray-platform": name}


class WorkerGroupArgs(TypedDict):
    """One Ray worker group's size and per-pod resources."""

    replicas: int
    min_replicas: int
    max_replicas: int
    cpu: str
    memory: str


class TriggerChecksArgs(TypedDict):
    """How often the trigger checks run, whether they are suspended, and their pod's size."""

    schedule: str
    suspended: bool
    cpu: str
    memory: str


class WorkloadIdentityArgs(TypedDict):
    """Who one workload's pods are: their MLflow user's Secret, their store credentials, their IRSA role."""

    # Name of the Secret with MLFLOW_TRACKING_USERNAME / _PASSWORD for this workload's own MLflow user.
    mlflow_secret: pulumi.Input[str]
    # Environment its S3 client needs (its own MinIO access key on dev; nothing with IRSA).
    store_env: list[dict[str, Any]]
    # Annotations of its service account (the IRSA role on aws).
    service_account_annotations: pulumi.Input[dict[str, str]]


class RayPlatformArgs(TypedDict):
    """The operator, the image, the serve config and each workload's identity (serving, training, triggers)."""

    namespace: pulumi.Input[str]
    # What the custom resources wait for: the KubeRay operator and its CRDs when this stack installs them.
    operator_ready: list[pulumi.Resource]
    operator_namespace: str
    monitoring_namespace: str
    ray_version: str
    image: pulumi.Input[str]
    serve_config: pulumi.Input[str]
    head_cpu: str
    head_memory: str
    workers: WorkerGroupArgs
    mlflow_tracking_uri: pulumi.Input[str]
    train_storage_uri: pulumi.Input[str]
    serving: WorkloadIdentityArgs
    training: WorkloadIdentityArgs
    triggers: WorkloadIdentityArgs
    pipeline_file: str
    trigger_checks: TriggerChecksArgs
    capture_uri: pulumi.Input[str]
    state_uri: pulumi.Input[str]
    events_uri: pulumi.Input[str]
    # The live rollout state (s3://<bucket>/rollout): the routers follow it, the rollout controller writes it.
    live_state_uri: pulumi.Input[str]
    # The Prometheus HTTP API the rollout controller (the training RayJob's deploy stage) analyses with.
    # Its port is the only one the training pods may reach in the monitoring namespace.
    prometheus_url: str
    # Which router series there are this stack's (JSON label → value: its namespace and Serve application).
    prometheus_selector: pulumi.Input[str]
    serving_file_yaml: str
    serve_ingress: Literal["proxy", "haproxy"]
    public_serve: bool


class RayNodeArgs(TypedDict):
    """What differs between the serving and the training clusters' nodes."""

    workload: str
    identity: WorkloadIdentityArgs
    account: pulumi.Input[str]
    autoscale: bool
    # Set on every node (the serving cluster's ingress choice, the labels token's file, the live state).
    extra_env: dict[str, pulumi.Input[str]]
    # Secret volumes every node mounts read-only: volume name → (Secret name, mount path).
    secret_mounts: dict[str, tuple[pulumi.Input[str], str]]


def ray_container(
    name: str,
    args: RayPlatformArgs,
    node: RayNodeArgs,
    cpu: str,
    memory: str,
    ports: list[dict[str, Any]],
) -> dict[str, Any]:
    """A Ray node container: the code image, its workload's MLflow user from a Secret, bounded and non-root."""
    identity = node["identity"]
    mounts: list[dict[str, Any]] = [{"name": "ray-logs", "mountPath": "/tmp/ray"}]
    mounts += [
        {"name": volume, "mountPath": path, "readOnly": True}
        for volume, (_, path) in sorted(node["secret_mounts"].items())
    ]
    return {
        "name": name,
        "image": args["image"],
        "ports": ports,
        "env": [
            {"name": EnvVar.mlflow_tracking_uri.value, "value": args["mlflow_tracking_uri"]},
            {"name": TRAIN_STORAGE_ENV, "value": args["train_storage_uri"]},
            {"name": EnvVar.events_uri.value, "value": args["events_uri"]},
            {"name": "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "value": "5"},
            {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
            *identity["store_env"],
            *({"name": key, "value": value} for key, value in sorted(node["extra_env"].items())),
        ],
        # MLFLOW_TRACKING_USERNAME / _PASSWORD: never in the serve config, only in the workload's Secret.
        "envFrom": [{"secretRef": {"name": identity["mlflow_secret"]}}],
        "resources": kube.resources(cpu, memory),
        "securityContext": kube.container_security(RAY_USER_ID),
        "volumeMounts": mounts,
    }


def pod_spec(node: RayNodeArgs, container: dict[str, Any]) -> dict[str, Any]:
    """A Ray pod: one container, its workload's service account, non-root, a scratch dir, its Secret volumes."""
    volumes: list[dict[str, Any]] = [{"name": "ray-logs", "emptyDir": {}}]
    volumes += [
        # 0440: the Ray user's group (fsGroup) reads it, nobody else.
        {"name": volume, "secret": {"secretName": secret, "defaultMode": 0o440}}
        for volume, (secret, _) in sorted(node["secret_mounts"].items())
    ]
    return {
        "serviceAccountName": node["account"],
        "securityContext": kube.pod_security(RAY_USER_ID),
        "containers": [container],
        "volumes": volumes,
    }


def ray_cluster_spec(name: str, args: RayPlatformArgs, node: RayNodeArgs) -> dict[str, Any]:
    """A RayCluster spec: a head that schedules no work, one autoscaled worker group, token auth on."""
    workers = args["workers"]
    pod_labels = {**ray_pod_labels(name), **workload_labels(node["workload"])}
    head_ports = [
        {"name": "gcs-server", "containerPort": GCS_PORT},
        {"name": "dashboard", "containerPort": DASHBOARD_PORT},
        {"name": "client", "containerPort": CLIENT_PORT},
        {"name": "serve", "containerPort": SERVE_PORT},
        {"name": "metrics", "containerPort": METRICS_PORT},
        {"name": "dash-metrics", "containerPort": DASHBOARD_METRICS_PORT},
    ]
    worker_ports = [
        {"name": "serve", "containerPort": SERVE_PORT},
        {"name": "metrics", "containerPort": METRICS_PORT},
    ]
    spec: dict[str, Any] = {
        "rayVersion": args["ray_version"],
        "authOptions": {"mode": "token"},
        "headGroupSpec": {
            # num-cpus 0: Serve replicas and Train workers run on workers; the head only coordinates.
            "rayStartParams": {
                "dashboard-host": "0.0.0.0",
                "num-cpus": "0",
                "metrics-export-port": str(METRICS_PORT),
            },
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": pod_spec(
                    node,
                    ray_container("ray-head", args, node, args["head_cpu"], args["head_memory"], head_ports),
                ),
            },
        },
        "workerGroupSpecs": [
            {
                "groupName": "workers",
                "replicas": workers["replicas"],
                "minReplicas": workers["min_replicas"],
                "maxReplicas": workers["max_replicas"],
                "rayStartParams": {"metrics-export-port": str(METRICS_PORT)},
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": pod_spec(
                        node,
                        ray_container(
                            "ray-worker", args, node, workers["cpu"], workers["memory"], worker_ports
                        ),
                    ),
                },
            }
        ],
    }
    if node["autoscale"]:
        spec["enableInTreeAutoscaling"] = True
        # KubeRay injects the autoscaler as a sidecar of the head: bound and harden it too.
        spec["autoscalerOptions"] = {
            "resources": kube.resources("200m", "512Mi", limit_cpu="500m", limit_memory="512Mi"),
            "securityContext": kube.container_security(RAY_USER_ID),
            "idleTimeoutSeconds": 300,
        }
    return spec


def training_entrypoint(pipeline_file: str) -> str:
    """The training RayJob's entrypoint: one command with no shell operators and an absolute config path.

    KubeRay v1.7.0 pastes ``spec.entrypoint`` unquoted after ``ray job submit ... --`` into the submitter's
    ``bash -ce`` script (ray-operator/controllers/ray/common/job.go, BuildJobSubmitCommand), so anything after
    ``&&`` or ``;`` would run in the small submitter pod instead of as the Ray job. The pipeline resolves every
    relative path in its file against the file's directory, and the image installs the packages, so the
    job's working directory does not matter: no ``cd``, no ``runtimeEnvYAML`` ``working_dir`` (the submitter
    would upload that directory from its own pod).
    """
    config = PurePosixPath(WORKDIR, pipeline_file)  # an absolute pipeline_file stays as it is
    return shlex.join(["python", "-m", "pipeline.run", "--config", str(config)])


def training_job_spec(name: str, args: RayPlatformArgs, account: pulumi.Input[str]) -> dict[str, Any]:
    """A RayJob spec that runs the pipeline entrypoint on its own cluster, torn down when the run ends."""
    node: RayNodeArgs = {
        "workload": workloads.TRAINING,
        "identity": args["training"],
        "account": account,
        "autoscale": False,
        # The pipeline's deploy stage runs the rollout here: it writes the live state and asks Prometheus.
        "extra_env": {
            EnvVar.live_state_uri.value: args["live_state_uri"],
            EnvVar.prometheus_url.value: args["prometheus_url"],
            EnvVar.prometheus_selector.value: args["prometheus_selector"],
        },
        "secret_mounts": {},
    }
    return {
        "entrypoint": training_entrypoint(args["pipeline_file"]),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": 600,
        "activeDeadlineSeconds": 4 * 3600,
        "backoffLimit": 0,
        "submissionMode": "K8sJobMode",
        "rayClusterSpec": ray_cluster_spec(name, args, node),
        "submitterPodTemplate": {
            "metadata": {"labels": {**ray_pod_labels(name), "lockgate.dev/role": "submitter"}},
            "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": account,
                "securityContext": kube.pod_security(RAY_USER_ID),
                "containers": [
                    {
                        "name": "ray-job-submitter",
                        "image": args["image"],
                        "resources": kube.resources("200m", "512Mi", limit_cpu="500m", limit_memory="512Mi"),
                        "securityContext": kube.container_security(RAY_USER_ID),
                    }
                ],
            },
        },
    }


class RayPlatform(pulumi.ComponentResource):
    """A RayService serving the router, a training RayJob template and the scheduled trigger checks.

    `pulumi up` waits for the RayService's `Ready` condition (``awaited``): a cluster that cannot schedule its
    pods fails the update instead of reporting success.
    """

    service_name: pulumi.Output[str]
    serve_url: pulumi.Output[str]
    training_job_manifest: pulumi.Output[str]
    pod_labels: dict[str, str]
    # The bearer token the router's POST /labels needs (a Pulumi secret; the pods read it from a Secret file).
    labels_token: pulumi.Output[str]

    def __init__(self, name: str, args: RayPlatformArgs, opts: pulumi.ResourceOptions | None = None):
        workers = args["workers"]
        if not workers["min_replicas"] <= workers["replicas"] <= workers["max_replicas"]:
            raise ValueError("workers.replicas: must lie between min_replicas and max_replicas")
        super().__init__("lockgate:ray:RayPlatform", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        namespace = args["namespace"]
        component = f"{name}-ray"
        # Serving and training are separate identities: their own service accounts (IRSA roles), MLflow users
        # and store credentials.
        account = kube.service_account(
            f"{name}-serving-account",
            kube.metadata(
                serving_service_account(name),
                namespace,
                name,
                component,
                annotations=args["serving"]["service_account_annotations"],
            ),
            child,
        )
        training_account = kube.service_account(
            f"{name}-training-account",
            kube.metadata(
                training_service_account(name),
                namespace,
                name,
                component,
                annotations=args["training"]["service_account_annotations"],
            ),
            child,
            mount_token=False,  # a training cluster has no autoscaler: nothing in it calls the Kubernetes API
        )
        labels_token = random.RandomPassword(f"{name}-labels-token", length=48, special=False, opts=child)
        labels_secret = k8s.core.v1.Secret(
            f"{name}-labels-token",
            metadata=kube.metadata(f"{name}-labels-token", namespace, name, component),
            string_data={LABELS_TOKEN_FILE: labels_token.result},
            opts=child,
        )
        # The serving head's autoscaler runs under its account: it may read and patch its own pods and cluster.
        autoscaler_metadata = kube.metadata(f"{name}-ray-autoscaler", namespace, name, component)
        autoscaler_rules: Any = [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
            {
                "apiGroups": ["ray.io"],
                "resources": ["rayclusters"],
                "verbs": ["get", "list", "watch", "patch"],
            },
        ]
        kube.role_for(f"{name}-autoscaler", autoscaler_metadata, autoscaler_rules, account, namespace, child)
        crd_opts = pulumi.ResourceOptions(parent=self, depends_on=args["operator_ready"])
        serve_service_name = f"{name}-serve"
        serve_service: dict[str, Any] = {
            "metadata": {"name": serve_service_name, "labels": kube.labels(name, component)},
            "spec": {
                "type": "ClusterIP",
                "ports": [{"name": "serve", "port": SERVE_PORT, "targetPort": SERVE_PORT}],
            },
        }
        if args["public_serve"]:
            serve_service["metadata"]["annotations"] = {kube.PUBLIC_ENDPOINT_ANNOTATION: "true"}
            serve_service["spec"]["type"] = "LoadBalancer"
        service = k8s.apiextensions.CustomResource(
            f"{name}-ray-service",
            api_version="ray.io/v1",
            kind="RayService",
            metadata=kube.metadata(
                f"{name}-serve", namespace, name, component, annotations=awaited(RAY_SERVICE_READY)
            ),
            spec={
                "serveConfigV2": args["serve_config"],
                "rayClusterConfig": ray_cluster_spec(
                    name,
                    args,
                    {
                        "workload": workloads.SERVING,
                        "identity": args["serving"],
                        "account": account.metadata.name,
                        "autoscale": True,
                        "extra_env": {
                            **SERVE_INGRESS_ENV[args["serve_ingress"]],
                            EnvVar.labels_token_file.value: f"{LABELS_TOKEN_DIR}/{LABELS_TOKEN_FILE}",
                            # The router follows the live rollout state (read-only: workloads.py).
                            EnvVar.live_state_uri.value: args["live_state_uri"],
                        },
                        "secret_mounts": {"labels-token": (labels_secret.metadata.name, LABELS_TOKEN_DIR)},
                    },
                ),
                "serveService": serve_service,
            },
            opts=crd_opts,
        )
        job_spec = training_job_spec(name, args, training_account.metadata.name)
        self._network_policies(name, args)
        self._training_egress(name, args)
        self.training_job_manifest = pulumi.Output.from_input(
            {
                "apiVersion": "ray.io/v1",
                "kind": "RayJob",
                "metadata": {
                    "generateName": f"{name}-train-",
                    "namespace": namespace,
                    "labels": {**kube.labels(name, component), ROLE_LABEL: TRAINING_ROLE},
                },
                "spec": job_spec,
            }
        ).apply(lambda manifest: yaml.safe_dump(manifest, sort_keys=False))
        self._trigger_checks(name, args, crd_opts)
        # The RayService's name, available once it exists (so consumers wait for it).
        self.service_name = service.id.apply(lambda _: f"{name}-serve")
        self.serve_url = pulumi.Output.concat(
            "http://", serve_service_name, ".", namespace, f".svc.cluster.local:{SERVE_PORT}"
        )
        self.pod_labels = ray_pod_labels(name)
        self.labels_token = pulumi.Output.secret(labels_token.result)
        self.register_outputs(
            {
                "service_name": self.service_name,
                "serve_url": self.serve_url,
                "training_job_manifest": self.training_job_manifest,
                "pod_labels": self.pod_labels,
                "labels_token": self.labels_token,
            }
        )

    def _network_policies(self, name: str, args: RayPlatformArgs) -> None:
        """Ray pods reach each other, namespace pods Serve and the dashboard, operator and Prometheus theirs."""
        ray_pods = ray_pod_labels(name)
        rules = [
            # Ray nodes use many (dynamic) ports between themselves: all ports, but only between Ray pods.
            {"from": [kube.same_namespace_pods(ray_pods)]},
            kube.ingress_rule([SERVE_PORT, DASHBOARD_PORT, CLIENT_PORT], [kube.same_namespace_pods()]),
            kube.ingress_rule(
                [DASHBOARD_PORT, DASHBOARD_AGENT_PORT], [kube.namespace_peer(args["operator_namespace"])]
            ),
            kube.ingress_rule(
                [METRICS_PORT, DASHBOARD_METRICS_PORT], [kube.namespace_peer(args["monitoring_namespace"])]
            ),
        ]
        if args["public_serve"]:
            rules.append(kube.ingress_rule([SERVE_PORT], [{"ipBlock": {"cidr": "0.0.0.0/0"}}]))
        kube.network_policy(
            f"{name}-ray-ingress",
            kube.metadata(f"{name}-ray", args["namespace"], name, f"{name}-ray"),
            ray_pods,
            rules,
            pulumi.ResourceOptions(parent=self),
        )

    def _training_egress(self, name: str, args: RayPlatformArgs) -> None:
        """What a training RayJob's Ray pods may reach: this namespace, DNS, HTTPS out, Prometheus' API port.

        The deploy stage (the rollout controller) runs on the RayJob's head and reads the in-cluster Prometheus
        in the monitoring namespace; nothing else there (Grafana, Alertmanager, node exporters) is reachable.
        """
        rules: list[dict[str, Any]] = [
            # DNS wherever the cluster answers it (the kube-dns Service, or NodeLocal DNSCache's address).
            {"ports": [{"protocol": protocol, "port": DNS_PORT} for protocol in ("UDP", "TCP")]},
            # This namespace: the RayJob's other Ray pods, MLflow, MinIO.
            {"to": [kube.same_namespace_pods()]},
            {
                "to": [kube.namespace_peer(args["monitoring_namespace"])],
                "ports": [{"protocol": "TCP", "port": url_port(args["prometheus_url"])}],
            },
            # HTTPS outside the cluster: S3 and STS (IRSA) on aws, an s3:// data source.
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": HTTPS_PORT}]},
        ]
        k8s.networking.v1.NetworkPolicy(
            f"{name}-training-egress",
            metadata=kube.metadata(f"{name}-training-egress", args["namespace"], name, f"{name}-ray"),
            spec={
                "podSelector": {"matchLabels": {kube.WORKLOAD_LABEL: workloads.TRAINING}},
                "policyTypes": ["Egress"],
                "egress": rules,
            },
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _trigger_checks(self, name: str, args: RayPlatformArgs, opts: pulumi.ResourceOptions) -> None:
        """A CronJob that runs ``lockgate triggers check``; a firing trigger creates a RayJob from the template.

        The checks keep their memory in the artefact store and read the router's captured traffic there; the
        pod's account may create, get and list RayJobs in this namespace and nothing else.
        """
        namespace, checks, identity = args["namespace"], args["trigger_checks"], args["triggers"]
        component = f"{name}-triggers"
        annotations = identity["service_account_annotations"]
        account = kube.service_account(
            f"{name}-triggers-account",
            kube.metadata(
                triggers_service_account(name), namespace, name, component, annotations=annotations
            ),
            opts,
        )
        meta = kube.metadata(component, namespace, name, component)
        rules = [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list"]}]
        kube.role_for(f"{name}-triggers", meta, rules, account, namespace, opts)
        template = k8s.core.v1.ConfigMap(
            f"{name}-training-job",
            metadata=kube.metadata(f"{name}-training-job", namespace, name, component),
            data={TEMPLATE_FILE: self.training_job_manifest, SERVING_FILE: args["serving_file_yaml"]},
            opts=opts,
        )
        container = {
            "name": "trigger-check",
            "image": args["image"],
            "workingDir": WORKDIR,
            "command": ["lockgate", "triggers", "check", "--config", args["pipeline_file"]],
            "env": [
                {"name": EnvVar.mlflow_tracking_uri.value, "value": args["mlflow_tracking_uri"]},
                {"name": EnvVar.capture_uri.value, "value": args["capture_uri"]},
                {"name": EnvVar.state_uri.value, "value": args["state_uri"]},
                {"name": EnvVar.events_uri.value, "value": args["events_uri"]},
                # Each check first reclaims a rollout whose controller died (its lease expired in this store).
                {"name": EnvVar.live_state_uri.value, "value": args["live_state_uri"]},
                {"name": EnvVar.job_template.value, "value": f"{TEMPLATE_DIR}/{TEMPLATE_FILE}"},
                # What the RayService serves is stack config: the checks judge that model, not the image's file.
                {"name": EnvVar.serving_file.value, "value": f"{TEMPLATE_DIR}/{SERVING_FILE}"},
                {"name": EnvVar.events_file.value, "value": "/tmp/lockgate/events.jsonl"},
                {"name": "HOME", "value": "/tmp"},
                *identity["store_env"],
            ],
            "envFrom": [{"secretRef": {"name": identity["mlflow_secret"]}}],
            "resources": kube.resources(checks["cpu"], checks["memory"]),
            "securityContext": kube.container_security(RAY_USER_ID, read_only_root=True),
            "volumeMounts": [
                {"name": "template", "mountPath": TEMPLATE_DIR, "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }
        pod = {
            "metadata": {"labels": {**kube.labels(name, component), **workload_labels(workloads.TRIGGERS)}},
            "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": account.metadata.name,
                "securityContext": kube.pod_security(RAY_USER_ID),
                "containers": [container],
                "volumes": [
                    {"name": "template", "configMap": {"name": template.metadata.name}},
                    {"name": "tmp", "emptyDir": {}},
                ],
            },
        }
        k8s.batch.v1.CronJob(
            f"{name}-trigger-checks",
            metadata=meta,
            spec={
                "schedule": checks["schedule"],
                "suspend": checks["suspended"],
                # One check at a time: the checks' memory in the artefact store has a single writer.
                "concurrencyPolicy": "Forbid",
                "startingDeadlineSeconds": 300,
                "successfulJobsHistoryLimit": 3,
                "failedJobsHistoryLimit": 3,
                "jobTemplate": {
                    "spec": {
                        "backoffLimit": 0,
                        "activeDeadlineSeconds": 1200,
                        "ttlSecondsAfterFinished": 86400,
                        "template": pod,
                    }
                },
            },
            opts=opts,
        )
