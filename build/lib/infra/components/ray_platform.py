"""RayPlatform: the KubeRay operator, the serving RayService, the training RayJob template, the trigger checks.

The RayService's ``serveConfigV2`` is serving's rendered config, untouched: a stack config change that moves
only the canary weight changes only the router's ``user_config`` there, which KubeRay applies in place
(Serve calls ``reconfigure()``), with no new cluster and no replica restart.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import pulumi
import pulumi_kubernetes as k8s
import yaml

from contracts.settings import EnvVar
from infra import kube
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


def ray_service_account(name: str) -> str:
    """The service account every Ray pod of a RayPlatform runs as (an IRSA role trusts it by name)."""
    return f"{name}-ray"


def triggers_service_account(name: str) -> str:
    """The service account the trigger checks run as: it may create and read RayJobs, nothing else."""
    return f"{name}-triggers"


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


class RayPlatformArgs(TypedDict):
    """The operator, the image, the serve config and what Ray pods need to reach MLflow and the store."""

    namespace: pulumi.Input[str]
    install_operator: bool
    operator_chart_version: str
    operator_namespace: str
    monitoring_namespace: str
    ray_version: str
    image: pulumi.Input[str]
    serve_config: pulumi.Input[str]
    head_cpu: str
    head_memory: str
    workers: WorkerGroupArgs
    mlflow_tracking_uri: pulumi.Input[str]
    mlflow_client_secret: pulumi.Input[str]
    store_env: list[dict[str, Any]]
    train_storage_uri: pulumi.Input[str]
    service_account_annotations: pulumi.Input[dict[str, str]]
    pipeline_file: str
    trigger_checks: TriggerChecksArgs
    capture_uri: pulumi.Input[str]
    state_uri: pulumi.Input[str]
    events_uri: pulumi.Input[str]
    serving_file_yaml: str
    serve_ingress: Literal["proxy", "haproxy"]
    triggers_service_account_annotations: pulumi.Input[dict[str, str]]
    public_serve: bool


def ray_container(
    name: str,
    args: RayPlatformArgs,
    cpu: str,
    memory: str,
    ports: list[dict[str, Any]],
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Ray node container: the code image, MLflow credentials from a Secret, bounded and non-root."""
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
            *args["store_env"],
            *({"name": key, "value": value} for key, value in (extra_env or {}).items()),
        ],
        # MLFLOW_TRACKING_USERNAME / _PASSWORD: never in the serve config, only in this Secret.
        "envFrom": [{"secretRef": {"name": args["mlflow_client_secret"]}}],
        "resources": kube.resources(cpu, memory),
        "securityContext": kube.container_security(RAY_USER_ID),
        "volumeMounts": [{"name": "ray-logs", "mountPath": "/tmp/ray"}],
    }


def pod_spec(account: pulumi.Input[str], container: dict[str, Any]) -> dict[str, Any]:
    """A Ray pod: one container, our service account, non-root, a scratch volume for Ray's session dir."""
    return {
        "serviceAccountName": account,
        "securityContext": kube.pod_security(RAY_USER_ID),
        "containers": [container],
        "volumes": [{"name": "ray-logs", "emptyDir": {}}],
    }


def ray_cluster_spec(
    name: str,
    args: RayPlatformArgs,
    account: pulumi.Input[str],
    autoscale: bool,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A RayCluster spec: a head that schedules no work, one autoscaled worker group, token auth on.

    ``extra_env``: set on every node (the serving cluster's ingress choice).
    """
    workers = args["workers"]
    pod_labels = {**ray_pod_labels(name), kube.CLIENT_LABEL: "true"}
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
                    account,
                    ray_container(
                        "ray-head", args, args["head_cpu"], args["head_memory"], head_ports, extra_env
                    ),
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
                        account,
                        ray_container(
                            "ray-worker", args, workers["cpu"], workers["memory"], worker_ports, extra_env
                        ),
                    ),
                },
            }
        ],
    }
    if autoscale:
        spec["enableInTreeAutoscaling"] = True
        # KubeRay injects the autoscaler as a sidecar of the head: bound and harden it too.
        spec["autoscalerOptions"] = {
            "resources": kube.resources("200m", "512Mi", limit_cpu="500m", limit_memory="512Mi"),
            "securityContext": kube.container_security(RAY_USER_ID),
            "idleTimeoutSeconds": 300,
        }
    return spec


def training_job_spec(name: str, args: RayPlatformArgs, account: pulumi.Input[str]) -> dict[str, Any]:
    """A RayJob spec that runs the pipeline entrypoint on its own cluster, torn down when the run ends."""
    return {
        "entrypoint": f"cd {WORKDIR} && python -m pipeline.run --config {args['pipeline_file']}",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": 600,
        "activeDeadlineSeconds": 4 * 3600,
        "backoffLimit": 0,
        "submissionMode": "K8sJobMode",
        "rayClusterSpec": ray_cluster_spec(name, args, account, autoscale=False),
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
    """KubeRay, a RayService serving the router, a training RayJob template and the scheduled trigger checks."""

    service_name: pulumi.Output[str]
    serve_url: pulumi.Output[str]
    training_job_manifest: pulumi.Output[str]
    pod_labels: dict[str, str]

    def __init__(self, name: str, args: RayPlatformArgs, opts: pulumi.ResourceOptions | None = None):
        workers = args["workers"]
        if not workers["min_replicas"] <= workers["replicas"] <= workers["max_replicas"]:
            raise ValueError("workers.replicas: must lie between min_replicas and max_replicas")
        super().__init__("lockgate:ray:RayPlatform", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        namespace = args["namespace"]
        component = f"{name}-ray"
        dependencies: list[pulumi.Resource] = []
        if args["install_operator"]:
            operator_namespace = k8s.core.v1.Namespace(
                f"{name}-operator-namespace",
                metadata={
                    "name": args["operator_namespace"],
                    "labels": {
                        **kube.labels(name, f"{name}-kuberay"),
                        "pod-security.kubernetes.io/enforce": "restricted",
                    },
                },
                opts=child,
            )
            dependencies.append(
                kube.helm_release(
                    f"{name}-kuberay-operator",
                    "kuberay-operator",
                    args["operator_chart_version"],
                    "https://ray-project.github.io/kuberay-helm/",
                    operator_namespace.metadata.name,
                    {
                        "resources": kube.resources("100m", "512Mi", limit_cpu="500m", limit_memory="512Mi"),
                        "securityContext": kube.container_security(65532),
                        # Workers then wait for the head themselves: every container in a Ray pod is one we
                        # declare (bounded, non-root), which the namespace's restricted profile requires.
                        "env": [{"name": "ENABLE_INIT_CONTAINER_INJECTION", "value": "false"}],
                    },
                    child,
                )
            )
        account = kube.service_account(
            f"{name}-ray-account",
            kube.metadata(
                ray_service_account(name),
                namespace,
                name,
                component,
                annotations=args["service_account_annotations"],
            ),
            child,
        )
        # The head's autoscaler runs under this account: it may read and patch its own pods and cluster only.
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
        crd_opts = pulumi.ResourceOptions(parent=self, depends_on=dependencies)
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
            metadata=kube.metadata(f"{name}-serve", namespace, name, component),
            spec={
                "serveConfigV2": args["serve_config"],
                "rayClusterConfig": ray_cluster_spec(
                    name,
                    args,
                    account.metadata.name,
                    autoscale=True,
                    extra_env=SERVE_INGRESS_ENV[args["serve_ingress"]],
                ),
                "serveService": serve_service,
            },
            opts=crd_opts,
        )
        job_spec = training_job_spec(name, args, account.metadata.name)
        self._network_policies(name, args)
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
        self.register_outputs(
            {
                "service_name": self.service_name,
                "serve_url": self.serve_url,
                "training_job_manifest": self.training_job_manifest,
                "pod_labels": self.pod_labels,
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

    def _trigger_checks(self, name: str, args: RayPlatformArgs, opts: pulumi.ResourceOptions) -> None:
        """A CronJob that runs ``lockgate triggers check``; a firing trigger creates a RayJob from the template.

        The checks keep their memory in the artefact store and read the router's captured traffic there; the
        pod's account may create, get and list RayJobs in this namespace and nothing else.
        """
        namespace, checks = args["namespace"], args["trigger_checks"]
        component = f"{name}-triggers"
        annotations = args["triggers_service_account_annotations"]
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
                {"name": EnvVar.job_template.value, "value": f"{TEMPLATE_DIR}/{TEMPLATE_FILE}"},
                # What the RayService serves is stack config: the checks judge that model, not the image's file.
                {"name": EnvVar.serving_file.value, "value": f"{TEMPLATE_DIR}/{SERVING_FILE}"},
                {"name": EnvVar.events_file.value, "value": "/tmp/lockgate/events.jsonl"},
                {"name": "HOME", "value": "/tmp"},
                *args["store_env"],
            ],
            "envFrom": [{"secretRef": {"name": args["mlflow_client_secret"]}}],
            "resources": kube.resources(checks["cpu"], checks["memory"]),
            "securityContext": kube.container_security(RAY_USER_ID, read_only_root=True),
            "volumeMounts": [
                {"name": "template", "mountPath": TEMPLATE_DIR, "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }
        pod = {
            "metadata": {"labels": {**kube.labels(name, component), kube.CLIENT_LABEL: "true"}},
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
