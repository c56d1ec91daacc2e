"""KubeRayOperator: the KubeRay operator and its CRDs, managed as resources so that a chart bump updates them.

Helm installs a chart's ``crds/`` once and never upgrades them (helm.sh/docs/chart_best_practices/
custom_resource_definitions). The release therefore skips them and this component applies the CRDs vendored
in ``infra/schemas/crds/`` (KubeRay's own files for the pinned chart, the ones the tests validate against):
the chart version must equal the vendored one, so a bump without new CRDs fails before anything is declared.

Created before the application namespace, which waits for it: on `pulumi destroy` the namespace, with any
RayJob a trigger check created in it (each holds a finalizer only the operator removes), is deleted while the
operator still runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

import pulumi
import pulumi_kubernetes as k8s
import yaml

from infra import kube

CRD_DIR = Path(__file__).resolve().parents[1] / "schemas" / "crds"
VERSIONS_FILE = CRD_DIR / "versions.yaml"
KUBERAY_CRD_FILES: tuple[str, ...] = (
    "ray.io_rayclusters.yaml",
    "ray.io_rayjobs.yaml",
    "ray.io_rayservices.yaml",
    "ray.io_raycronjobs.yaml",
)
# Server-side apply takes the fields over from Helm's field manager on clusters where Helm installed them.
PATCH_FORCE_ANNOTATION = "pulumi.com/patchForce"


def vendored_version(component: str) -> str:
    """The upstream release the vendored CRDs of ``component`` come from (infra/schemas/crds/versions.yaml)."""
    versions = yaml.safe_load(VERSIONS_FILE.read_text())
    return str(versions[component])


def load_crd(path: Path) -> dict[str, Any]:
    """One vendored CustomResourceDefinition (libyaml: the Ray CRDs are megabytes)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document = yaml.load(path.read_text(), Loader=loader)
    if not isinstance(document, dict) or document.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path}: not a CustomResourceDefinition")
    return document


class KubeRayOperatorArgs(TypedDict):
    """The chart version (equal to the vendored CRDs') and the operator's namespace."""

    chart_version: str
    namespace: str


class KubeRayOperator(pulumi.ComponentResource):
    """The operator's namespace (restricted), its CRDs as resources, and the Helm release without CRDs."""

    namespace: pulumi.Output[str]
    crd_names: list[str]
    release: k8s.helm.v3.Release

    def __init__(self, name: str, args: KubeRayOperatorArgs, opts: pulumi.ResourceOptions | None = None):
        vendored = vendored_version("kuberay")
        if args["chart_version"] != vendored:
            raise ValueError(
                f"chart_version: {args['chart_version']} but the CRDs in infra/schemas/crds/ are KubeRay "
                f"{vendored}: replace them with that release's (and versions.yaml) to upgrade"
            )
        super().__init__("lockgate:ray:KubeRayOperator", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        crds = []
        for file in KUBERAY_CRD_FILES:
            document = load_crd(CRD_DIR / file)
            metadata = dict(document["metadata"])
            metadata["annotations"] = {**(metadata.get("annotations") or {}), PATCH_FORCE_ANNOTATION: "true"}
            crds.append(
                k8s.apiextensions.v1.CustomResourceDefinition(
                    f"{name}-crd-{document['spec']['names']['plural']}",
                    metadata=metadata,
                    spec=document["spec"],
                    opts=child,
                )
            )
        self.crd_names = [file.removesuffix(".yaml").split("_", 1)[1] for file in KUBERAY_CRD_FILES]
        operator_namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={
                "name": args["namespace"],
                "labels": {
                    **kube.labels(name, f"{name}-kuberay"),
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
            },
            opts=child,
        )
        self.release = kube.helm_release(
            f"{name}-operator",
            "kuberay-operator",
            args["chart_version"],
            "https://ray-project.github.io/kuberay-helm/",
            operator_namespace.metadata.name,
            {
                "resources": kube.resources("100m", "512Mi", limit_cpu="500m", limit_memory="512Mi"),
                "securityContext": kube.container_security(65532),
                # Workers then wait for the head themselves: every container in a Ray pod is one we
                # declare (bounded, non-root), which the namespace's restricted profile requires.
                "env": [{"name": "ENABLE_INIT_CONTAINER_INJECTION", "value": "false"}],
            },
            pulumi.ResourceOptions(parent=self, depends_on=crds),
            skip_crds=True,
        )
        self.namespace = operator_namespace.metadata.name
        self.register_outputs({"namespace": self.namespace, "crd_names": self.crd_names})
