"""Stack output names: the composition root exports these keys, the docs and tests read them."""

NAMESPACE = "namespace"
IMAGE_REF = "imageRef"
MLFLOW_TRACKING_URI = "mlflowTrackingUri"
MLFLOW_ADMIN_USERNAME = "mlflowAdminUsername"
MLFLOW_ADMIN_PASSWORD = "mlflowAdminPassword"
ARTIFACTS_URI = "artifactsUri"
SERVE_URL = "serveUrl"
SERVE_CONFIG = "serveConfig"
RAY_SERVICE = "rayService"
TRAINING_JOB_MANIFEST = "trainingJobManifest"
GRAFANA_ADMIN_PASSWORD = "grafanaAdminPassword"
PROMETHEUS_RULES = "prometheusRules"
DASHBOARDS = "dashboards"
KUBECONFIG = "kubeconfig"
CLUSTER_NAME = "clusterName"
IMAGE_REPOSITORY = "imageRepository"

ALL: tuple[str, ...] = (
    NAMESPACE,
    IMAGE_REF,
    MLFLOW_TRACKING_URI,
    MLFLOW_ADMIN_USERNAME,
    MLFLOW_ADMIN_PASSWORD,
    ARTIFACTS_URI,
    SERVE_URL,
    SERVE_CONFIG,
    RAY_SERVICE,
    TRAINING_JOB_MANIFEST,
    GRAFANA_ADMIN_PASSWORD,
    PROMETHEUS_RULES,
    DASHBOARDS,
)
# Exported only by stacks that create their own cluster (aws).
AWS_ONLY: tuple[str, ...] = (KUBECONFIG, CLUSTER_NAME, IMAGE_REPOSITORY)
