"""The one serve-config renderer: typed spec in, a Ray Serve config dict validated twice out."""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator

from contracts.strict import StrictModel, format_problems
from serving.spec import RouterConfig, ServingSpec, check_env_var_names

ROUTER_DEPLOYMENT_NAME = "Router"
PROXY_LOCATION = "EveryNode"


class ServeConfigError(ValueError):
    """A serve config that fails validation; every problem starts with its dotted field path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"serve config refused by {source}: " + "; ".join(problems))


class StrictServeModel(StrictModel):
    """Base for the mirror of Ray's Serve schema: unknown keys and type coercion both refused."""

    # Ray's ServeDeploySchema ignores unknown keys for forward compatibility, so a misspelled
    # `user_confg` would deploy silently with no split at all; this mirror is what catches it.
    model_config = ConfigDict(strict=True)  # merged with StrictModel's: frozen, extra forbidden


class ActorOptionsModel(StrictServeModel):
    """The ``ray_actor_options`` we set on a deployment."""

    num_cpus: float = Field(gt=0.0)


class DeploymentModel(StrictServeModel):
    """One deployment entry of an application; the router is the only one and takes a RouterConfig."""

    name: Literal["Router"]
    num_replicas: int = Field(ge=1)
    max_ongoing_requests: int = Field(ge=1)
    max_queued_requests: int = Field(ge=1)
    ray_actor_options: ActorOptionsModel
    user_config: RouterConfig


class ApplicationModel(StrictServeModel):
    """One Serve application as we emit it."""

    name: str = Field(min_length=1)
    route_prefix: str = Field(pattern=r"^/")
    import_path: str = Field(min_length=1)
    # runtime_env keys are plugin-extensible; Ray validates them itself, we only guard env_vars.
    runtime_env: dict[str, Any]
    deployments: list[DeploymentModel] = Field(min_length=1, max_length=1)

    @field_validator("runtime_env")
    @classmethod
    def _no_secret_env_vars(cls, value: dict[str, Any]) -> dict[str, Any]:
        env_vars = value.get("env_vars")
        if env_vars is not None:
            if not isinstance(env_vars, dict) or not all(isinstance(v, str) for v in env_vars.values()):
                raise ValueError("env_vars must be a mapping of names to strings")
            check_env_var_names(env_vars, "env_vars")
        return value


class HttpOptionsModel(StrictServeModel):
    """Where the HTTP proxy listens."""

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)


class ServeConfigModel(StrictServeModel):
    """The subset of ``ServeDeploySchema`` that the renderer emits, every key required."""

    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"]
    http_options: HttpOptionsModel
    applications: list[ApplicationModel] = Field(min_length=1)


def render_serve_config(spec: ServingSpec, router: RouterConfig) -> dict[str, Any]:
    """Render the Ray Serve config (``serve deploy`` YAML / RayService ``serveConfigV2``) and validate it."""
    runtime_env: dict[str, Any] = spec.model_dump(mode="json")["runtime_env"]
    env_vars = spec.merged_env_vars()
    if env_vars:
        runtime_env["env_vars"] = env_vars
    config: dict[str, Any] = {
        "proxy_location": PROXY_LOCATION,
        "http_options": {"host": spec.http_host, "port": spec.http_port},
        "applications": [
            {
                "name": spec.app_name,
                "route_prefix": spec.route_prefix,
                "import_path": spec.import_path,
                "runtime_env": runtime_env,
                "deployments": [
                    {
                        "name": ROUTER_DEPLOYMENT_NAME,
                        "num_replicas": spec.num_replicas,
                        "max_ongoing_requests": spec.max_ongoing_requests,
                        "max_queued_requests": spec.max_queued_requests,
                        "ray_actor_options": {"num_cpus": spec.replica_num_cpus},
                        "user_config": router.model_dump(mode="json"),
                    }
                ],
            }
        ],
    }
    return validate_serve_config(config)


def render_serve_yaml(spec: ServingSpec, router: RouterConfig) -> str:
    """The rendered serve config as YAML with sorted keys: byte-identical for identical input."""
    return yaml.safe_dump(render_serve_config(spec, router), sort_keys=True, default_flow_style=False)


def validate_serve_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check a serve config against our strict mirror, then Ray's ServeDeploySchema; return it unchanged.

    Raises ServeConfigError naming each offending field path.
    """
    if not isinstance(config, dict):
        raise ServeConfigError(
            "strict serve schema", [f"<root>: expected a mapping, got {type(config).__name__}"]
        )
    try:
        ServeConfigModel.model_validate(config)
    except ValidationError as error:
        raise ServeConfigError("strict serve schema", format_problems(error)) from None
    # Imported here, never at module level: infra imports this module and must not pull in Ray.
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as error:
        raise ServeConfigError("ray ServeDeploySchema", format_problems(error)) from None
    return config
