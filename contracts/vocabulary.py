"""The words every plane shares: aliases, outcomes, tag keys, metric names, column types.

Each is defined here once; infra, pipeline, serving and the CLI import it. Enums are ``StrEnum`` so a
member is also the plain string MLflow, Prometheus and JSON see.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class Alias(StrEnum):
    """Registered-model aliases: who serves the stable share, who is under rollout, the rollback target."""

    champion = "champion"
    candidate = "candidate"
    previous = "previous"


class Role(StrEnum):
    """Which of the router's models answered (or, for shadow, was mirrored) a request: a metric label.

    The router holds the versions the ``champion`` and ``candidate`` aliases name, under the same words.
    """

    champion = Alias.champion.value
    candidate = Alias.candidate.value
    shadow = "shadow"


class RolloutOutcome(StrEnum):
    """How the rollout stage ended. The controller returns the first four; the deploy stage adds the rest."""

    promoted = "promoted"
    rolled_back = "rolled_back"
    stalled = "stalled"  # too little traffic to judge a step in time: treated as a rollback
    pinned = (
        "pinned"  # the serving config pins the weight (or a person paused the rollout): automation yields
    )
    deployed = "deployed"  # a first champion, served directly
    skipped = "skipped"  # no serving target in this environment, or rollout disabled


class RunOutcome(StrEnum):
    """A pipeline run's outcome, as tagged on its MLflow run (``Tag.outcome``) and counted by the exporter."""

    running = "running"
    registered = "registered"
    promoted = "promoted"
    blocked = "blocked"
    rolled_back = "rolled_back"
    failed = "failed"


class RolloutVerdict(StrEnum):
    """What a rollout wrote on a version (``Tag.rollout``)."""

    promoted = "promoted"
    rejected = "rejected"  # rolled back while it was the candidate
    rolled_back = "rolled_back"  # replaced by ``previous`` after it had been champion


class GateStatus(StrEnum):
    """A gate's decision, as tagged on the run and the version (``Tag.gate_prefix`` + gate name)."""

    passed = "passed"
    blocked = "blocked"
    would_block = "would_block"  # a dry-run gate that would have blocked
    disabled = "disabled"
    skipped = "skipped"


class Tag(StrEnum):
    """MLflow tag keys Lockgate writes on runs and model versions."""

    pipeline = "lockgate.pipeline"
    kind = "lockgate.kind"
    outcome = "lockgate.outcome"
    submission_id = "lockgate.submission_id"
    git_commit = "lockgate.git_commit"
    config_hash = "lockgate.config_hash"
    data_fingerprint = "lockgate.data_fingerprint"
    data_uri = "lockgate.data_uri"
    pipeline_run_id = "lockgate.pipeline_run_id"
    train_checkpoint = "lockgate.train_checkpoint"
    registered_version = "lockgate.registered_version"
    registered_aliases = "lockgate.registered_aliases"
    rollout_outcome = "lockgate.rollout_outcome"
    failed_stage = "lockgate.failed_stage"
    error = "lockgate.error"
    rollout = "lockgate.rollout"
    rollout_reason = "lockgate.rollout.reason"
    gates = "lockgate.gates"  # every gate decision, as JSON
    gate_prefix = "lockgate.gate."
    trigger_prefix = "lockgate.trigger."


class Header(StrEnum):
    """HTTP headers the router reads or sets (lowercase: HTTP/2 and ASGI hand headers over lowercased)."""

    version = "x-lockgate-version"  # the version that answered
    traffic_split = "x-lockgate-split"  # the split in force when the request was routed, e.g. "weighted:10"
    sticky_key = "x-lockgate-key"  # the default request key of sticky A/B assignment


class ModelMetadata(StrEnum):
    """Keys Lockgate writes into a logged model's MLflow metadata (``MLmodel``), read by scoring and serving."""

    task = "lockgate.task"  # the task the model was trained for
    classes = "lockgate.classes"  # a classifier's class labels, in the order of its probability columns


class ColumnType(StrEnum):
    """Logical column types the data validator understands."""

    integer = "integer"
    float = "float"
    category = "category"
    boolean = "boolean"


class Task(StrEnum):
    """What a model predicts, declared as ``task:`` in the pipeline file; it decides metrics and answers."""

    binary = "binary"  # P(positive class); labels 0/1 or booleans
    multiclass = "multiclass"  # class probabilities (or hard labels); labels integers or strings
    regression = "regression"  # a number; labels finite numbers


MetricName = Literal["auc", "accuracy", "f1", "log_loss", "brier", "macro_f1", "rmse", "mae", "r2"]
TASK_METRICS: dict[Task, tuple[str, ...]] = {
    Task.binary: ("auc", "accuracy", "f1", "log_loss", "brier"),
    Task.multiclass: ("accuracy", "macro_f1", "log_loss"),
    Task.regression: ("rmse", "mae", "r2"),
}
"""The metrics each task is evaluated, gated and monitored on (pipeline/tasks.py computes them)."""
DEFAULT_METRIC: dict[Task, str] = {Task.binary: "auc", Task.multiclass: "macro_f1", Task.regression: "rmse"}
"""The no-regression gate's metric when the pipeline file names none."""
LOWER_IS_BETTER: frozenset[str] = frozenset({"log_loss", "brier", "rmse", "mae"})


class ServingMetric(StrEnum):
    """The router's Prometheus metrics, as Ray Serve exports them (Ray prefixes ``ray_``)."""

    requests = "lockgate_requests"
    latency = "lockgate_request_latency_seconds"
    prediction = "lockgate_prediction"
    shadow_divergence = "lockgate_shadow_divergence"
    rejected = "lockgate_rejected_requests"
    prediction_moments = "lockgate_prediction_moments"  # n, sum and sum of squares of numeric predictions
    predicted_class = "lockgate_predicted_class"  # answers by predicted class label (classifiers)
    live_state_failures = "lockgate_live_state_read_failures"  # reads of the live rollout state that failed
    live_state_generation = "lockgate_live_state_generation"  # the live state generation the router applies
    # 1 while the deployed config pins the candidate's weight (the router obeys it over the live state): how a
    # rollout controller in a cluster learns of `lockgate:canaryWeight` without Kubernetes API rights.
    weight_pinned = "lockgate_weight_pinned"

    @property
    def exported(self) -> str:
        """The name Prometheus scrapes from Ray's metrics endpoint."""
        return f"ray_{self.value}"
