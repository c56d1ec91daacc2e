"""Typed rollout and serving spec: what the router receives as ``user_config`` and how the app is deployed."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from contracts.strict import StrictModel
from contracts.vocabulary import Alias, Header

# Registered-model names end up inside a ``models:/<name>/<version>`` URI, so a slash or a leading dot
# would change which model the URI points at.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
# A registry version is a positive integer; leading zeros are refused so "01" and "1" cannot both name
# the same version and slip past the champion != candidate check.
MODEL_VERSION_PATTERN = r"^[1-9][0-9]*$"
# RFC 9110 token characters, lowercase only: HTTP/2 and ASGI servers hand headers over lowercased.
HEADER_TOKEN_PATTERN = r"^[a-z0-9!#$%&'*+.^_`|~\-]+$"
ENV_VAR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Ray Serve's ingress, chosen where Ray starts (env of the head and workers, read once when Serve starts):
# Serve's Python proxy, or HAProxy in front of throughput-optimised replicas (about 5x the proxy's
# throughput in benchmarks/bench_serving.py). Its ports are Ray's defaults unless the environment pins them.
SERVE_INGRESS_ENV: dict[str, dict[str, str]] = {
    "proxy": {},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}
# How often the router asks the registry for a champion it does not serve yet (or an alias it follows).
DEFAULT_REGISTRY_POLL_S = 5.0
# How often the router reads the live rollout state (serving/livestate.py): bounds write-to-split latency.
DEFAULT_LIVE_POLL_S = 1.0
DEFAULT_BATCH_MAX_ROWS = 32
"""Rows one model call scores at most when concurrent requests are batched (serving/batching.py)."""
# The rendered serve config is committed and shown in cluster state; a secret must travel another way.
SECRET_NAME_MARKERS: tuple[str, ...] = ("PASSWORD", "TOKEN", "SECRET")


class ModelRef(StrictModel):
    """One registered model version."""

    name: str = Field(min_length=1, max_length=200, pattern=MODEL_NAME_PATTERN)
    version: str = Field(pattern=MODEL_VERSION_PATTERN)

    @property
    def uri(self) -> str:
        """The MLflow model URI of this version."""
        return f"models:/{self.name}/{self.version}"


class AliasRef(StrictModel):
    """A registered model's alias: the router serves whichever version it names, read from the registry.

    The router resolves it when configured and again every ``RouterConfig.registry_poll_s``: a version that
    gets the alias later is picked up without a redeploy, and until one has it the router answers 503.
    """

    name: str = Field(min_length=1, max_length=200, pattern=MODEL_NAME_PATTERN)
    alias: Alias = Alias.champion

    @property
    def uri(self) -> str:
        """The MLflow model URI of whatever version holds the alias."""
        return f"models:/{self.name}@{self.alias.value}"


class TrafficMode(StrEnum):
    """How the router shares requests between champion and candidate."""

    weighted = "weighted"
    sticky = "sticky"
    shadow = "shadow"


class TrafficFields(StrictModel):
    """What every statement of traffic shares (the serving file's and the router's)."""

    mode: TrafficMode = TrafficMode.weighted
    sticky_header: str = Field(default=Header.sticky_key.value, pattern=HEADER_TOKEN_PATTERN)
    shadow_percent: float = Field(default=0.0, ge=0.0, le=100.0)


class TrafficSpec(TrafficFields):
    """The traffic split the router applies; changed in place through ``reconfigure()``."""

    candidate_weight: float = Field(default=0.0, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _shadow_candidate_never_answers(self) -> TrafficSpec:
        if self.mode == TrafficMode.shadow and self.candidate_weight != 0:
            raise ValueError(
                f"candidate_weight must be 0 in shadow mode (the candidate never answers), "
                f"got {self.candidate_weight}"
            )
        return self


class CaptureFields(StrictModel):
    """Which share of answered requests is recorded, and where (a directory or a pyarrow URI such as s3://).

    As a serving file states it, ``uri`` may be left out: the environment's capture location is used.
    """

    sample_percent: float = Field(default=0.0, ge=0.0, le=100.0)
    uri: str | None = None
    batch_rows: int = Field(default=1_000, ge=1, le=1_000_000)
    flush_interval_s: float = Field(default=30.0, gt=0.0)


class CaptureSpec(CaptureFields):
    """Capture as the router applies it: a location is required whenever anything is sampled."""

    @model_validator(mode="after")
    def _uri_when_sampling(self) -> CaptureSpec:
        if self.sample_percent > 0 and not self.uri:
            raise ValueError(
                f"capture.uri is required when capture.sample_percent is {self.sample_percent:g} (> 0)"
            )
        return self


class RouterConfig(StrictModel):
    """Exactly what the router ingress receives as its Ray Serve ``user_config``."""

    # A pinned version, or an alias followed in the registry (a fresh cluster, before any version exists).
    champion: ModelRef | AliasRef
    candidate: ModelRef | None = None
    traffic: TrafficSpec = TrafficSpec()
    max_rows: int = Field(default=1000, ge=1, le=100_000)
    max_body_bytes: int = Field(default=1_000_000, ge=1)
    capture: CaptureSpec = CaptureSpec()
    # How often a router that serves no champion yet, or follows an alias, asks the registry again.
    registry_poll_s: float = Field(default=DEFAULT_REGISTRY_POLL_S, gt=0.0, le=3600.0)
    # Concurrent requests for a version without the record-level path are scored in one call of up to this
    # many rows (serving/batching.py); 1 scores each request alone (a model whose rows are not independent).
    batch_max_rows: int = Field(default=DEFAULT_BATCH_MAX_ROWS, ge=1, le=10_000)
    # How often the router reads the live rollout state (when its environment names a store): a change of
    # candidate, weight or pause is served within about this long, without a redeploy.
    live_poll_s: float = Field(default=DEFAULT_LIVE_POLL_S, gt=0.0, le=3600.0)
    # traffic.candidate_weight is a pin (the serving file's or the stack's): it wins over the live state's
    # weight, for whichever candidate the live state names, and may be set before any candidate is.
    weight_pinned: bool = False

    @model_validator(mode="after")
    def _candidate_consistent(self) -> RouterConfig:
        if isinstance(self.champion, AliasRef) and self.candidate is not None:
            raise ValueError(
                "candidate needs a pinned champion version: a canary is judged against a known version, "
                f"not whatever {self.champion.uri} names"
            )
        if self.candidate is None:
            # A pinned weight, or a shadow share in shadow mode, is shape: it applies to whichever candidate
            # the live rollout state names later. Any other share without a candidate is a mistake.
            problems = [
                f"traffic.{field} must be 0 when there is no candidate, got {value}"
                for field, value, shape in (
                    ("candidate_weight", self.traffic.candidate_weight, self.weight_pinned),
                    ("shadow_percent", self.traffic.shadow_percent, self.traffic.mode == TrafficMode.shadow),
                )
                if value != 0 and not shape
            ]
            if problems:
                raise ValueError("; ".join(problems))
        elif self.candidate == self.champion:
            raise ValueError(f"candidate must differ from champion, both are {self.champion.uri}")
        return self


RuntimeEnvValue = str | list[str] | dict[str, str]


class ServingSpec(StrictModel):
    """Deployment-level settings of the Serve application."""

    app_name: str = Field(default="lockgate", min_length=1)
    route_prefix: str = "/"
    import_path: str = Field(default="serving.app:app", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    num_replicas: int = Field(default=1, ge=1)
    replica_num_cpus: float = Field(default=0.5, gt=0.0)
    max_ongoing_requests: int = Field(default=64, ge=1)
    # Beyond this many waiting requests Serve answers 503 at once: overload sheds load instead of timing out.
    max_queued_requests: int = Field(default=256, ge=1)
    http_host: str = Field(default="127.0.0.1", min_length=1)
    http_port: int = Field(default=8000, ge=1, le=65535)
    runtime_env: dict[str, RuntimeEnvValue] = {}
    env_vars: dict[str, str] = {}
    # The router's RouterConfig.registry_poll_s: how soon a champion that appears in the registry serves.
    registry_poll_s: float = Field(default=DEFAULT_REGISTRY_POLL_S, gt=0.0, le=3600.0)
    # The router's RouterConfig.batch_max_rows: requests scored together (1: each alone).
    batch_max_rows: int = Field(default=DEFAULT_BATCH_MAX_ROWS, ge=1, le=10_000)

    @field_validator("route_prefix")
    @classmethod
    def _route_prefix_valid(cls, value: str) -> str:
        # Ray checks these only when the application is deployed; refusing them here fails at config time.
        if not value.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {value!r}")
        if value != "/" and value.endswith("/"):
            raise ValueError(f"route_prefix must not end with '/', got {value!r}")
        if "{" in value or "}" in value:
            raise ValueError(f"route_prefix must not contain wildcards, got {value!r}")
        return value

    @field_validator("env_vars")
    @classmethod
    def _env_vars_not_secret(cls, value: dict[str, str]) -> dict[str, str]:
        check_env_var_names(value, "env_vars")
        return value

    @field_validator("runtime_env")
    @classmethod
    def _runtime_env_vars_not_secret(cls, value: dict[str, RuntimeEnvValue]) -> dict[str, RuntimeEnvValue]:
        # runtime_env.env_vars lands in the same rendered config as env_vars, so the same rule applies.
        nested = value.get("env_vars")
        if nested is not None:
            if not isinstance(nested, dict):
                raise ValueError("runtime_env.env_vars must be a mapping of names to strings")
            check_env_var_names(nested, "runtime_env.env_vars")
        return value

    @model_validator(mode="after")
    def _env_vars_given_once(self) -> ServingSpec:
        nested = self.runtime_env.get("env_vars")
        if isinstance(nested, dict):
            twice = sorted(set(nested) & set(self.env_vars))
            if twice:
                raise ValueError(
                    f"env_vars: {', '.join(twice)} also set in runtime_env.env_vars; set each once"
                )
        return self

    def merged_env_vars(self) -> dict[str, str]:
        """``runtime_env.env_vars`` plus ``env_vars``, sorted by name."""
        nested = self.runtime_env.get("env_vars")
        merged = dict(nested) if isinstance(nested, dict) else {}
        merged.update(self.env_vars)
        return dict(sorted(merged.items()))


def check_env_var_names(env_vars: dict[str, str], field: str) -> None:
    """Raise ValueError naming the key if an env var name is malformed or looks like a secret."""
    for key in env_vars:
        if re.fullmatch(ENV_VAR_NAME_PATTERN, key) is None:
            raise ValueError(f"{field}: {key!r} is not a valid environment variable name")
        upper = key.upper()
        for marker in SECRET_NAME_MARKERS:
            if marker in upper:
                raise ValueError(
                    f"{field}: {key!r} looks like a secret ({marker}); the rendered serve config is visible, "
                    "so pass secrets through a Kubernetes Secret or the local environment instead"
                )


class AnalysisSpec(StrictModel):
    """Bounds the candidate must stay within at every step, judged on that step's own traffic."""

    min_requests: int = Field(default=100, ge=1)
    max_error_rate_increase: float = Field(default=0.01, ge=0.0, le=1.0)
    max_p99_latency_ratio: float = Field(default=3.0, gt=1.0)
    # Below this p99 a ratio is noise (a few ms of scheduling jitter doubles a 5 ms p99): not judged.
    p99_latency_floor_s: float = Field(default=0.05, ge=0.0)
    # How far the candidate's predictions may move from the champion's, by the kind of output: the mean
    # probability (binary), the mean value in champion standard deviations (regression), the total-variation
    # distance between predicted-class shares (multiclass).
    max_prediction_divergence: float = Field(default=0.1, ge=0.0, le=1.0)
    max_standardised_shift: float = Field(default=0.5, ge=0.0)
    max_class_share_distance: float = Field(default=0.1, ge=0.0, le=1.0)
    # The two versions answer different requests: a divergence breaches only when even the low end of its
    # confidence interval exceeds the bound, and only when a step's hold is over (no repeated peeking).
    divergence_confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    # While the router's metrics cannot be read a step holds (its clock stops, the weight stays, nothing is
    # promoted without evidence); once a step has gone this long unobserved in total, the candidate is
    # rolled back to weight 0. A short outage keeps a good candidate; a long or flapping one ends safely.
    max_metrics_outage_s: float = Field(default=60.0, gt=0.0)
    # How long a rollback keeps retrying its cleanup (weight 0 first, then the candidate's alias and tag):
    # a Ray head that died takes 13-25 s to come back, so a few seconds of retries would give up too soon.
    cleanup_timeout_s: float = Field(default=120.0, gt=0.0)


class RolloutPolicy(StrictModel):
    """A progressive rollout: candidate weights in order, how long each must hold, and the analysis."""

    enabled: bool = True
    steps: tuple[float, ...] = (10.0, 50.0, 100.0)
    interval_s: float = Field(default=20.0, gt=0.0)
    max_step_wait_s: float = Field(default=300.0, gt=0.0)
    analysis: AnalysisSpec = AnalysisSpec()
    serving_file: str = "serving.yaml"

    @field_validator("steps")
    @classmethod
    def _steps_rise_to_100(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not 0 < step <= 100 for step in value):
            raise ValueError(f"steps must be percentages in (0, 100], got {list(value)}")
        if list(value) != sorted(set(value)) or value[-1] != 100:
            raise ValueError(f"steps must rise strictly and end at 100, got {list(value)}")
        return value
