"""Register stage: package the model, then register a version with lineage and aliases, all or nothing."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contracts.vocabulary import Alias, ModelMetadata, Tag, Task
from pipeline.gates import GateDecision

if (
    TYPE_CHECKING
):  # the model module imports MLflow: loaded when a model is logged, not with the lineage types
    import pandas as pd

    from pipeline.config import PipelineConfig
    from pipeline.model import FeatureEncoder

logger = logging.getLogger(__name__)

# What a served model needs, pinned to the versions it was trained and tested with.
MODEL_REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "cloudpickle")


@dataclass(frozen=True)
class Lineage:
    """Where a model version came from."""

    git_commit: str
    data_fingerprint: str
    data_uri: str
    config_hash: str
    pipeline_run_id: str
    submission_id: str

    def tags(self) -> dict[str, str]:
        """Lineage as MLflow tags."""
        return {
            Tag.git_commit.value: self.git_commit,
            Tag.data_fingerprint.value: self.data_fingerprint,
            Tag.data_uri.value: self.data_uri,
            Tag.config_hash.value: self.config_hash,
            Tag.pipeline_run_id.value: self.pipeline_run_id,
            Tag.submission_id.value: self.submission_id,
        }


@dataclass(frozen=True)
class Registration:
    """The version registered and the aliases that now point at it."""

    name: str
    version: str
    aliases: tuple[str, ...]


def pinned_requirements() -> list[str]:
    """``name==version`` for what the model needs at load time (local build tags such as +cpu dropped)."""
    return [f"{name}=={installed_version(name).split('+')[0]}" for name in MODEL_REQUIREMENTS]


def gate_tags(decisions: list[GateDecision]) -> dict[str, str]:
    """Every gate decision as tags: a status per gate, and the full record as JSON."""
    tags = {f"{Tag.gate_prefix}{d.gate}": d.status for d in decisions}
    for decision in decisions:
        if "ci_low" in decision.details:
            tags[f"{Tag.gate_prefix}{decision.gate}.ci"] = (
                f"[{decision.details['ci_low']:+.4f}, {decision.details['ci_high']:+.4f}]"
            )
    tags[Tag.gates.value] = json.dumps([d.to_dict() for d in decisions], sort_keys=True, default=str)[:7900]
    return tags


def log_model(encoder: FeatureEncoder, state_dict: dict[str, Any], input_example: pd.DataFrame) -> Any:
    """Log the pyfunc model (encoder + weights + the code that reads them) under the active run."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    import pipeline
    from pipeline.model import ENCODER_FILE, WEIGHTS_FILE, TabularClassifier

    with tempfile.TemporaryDirectory() as directory:
        encoder_path = Path(directory) / ENCODER_FILE
        weights_path = Path(directory) / WEIGHTS_FILE
        encoder_path.write_text(encoder.to_json())
        torch.save(state_dict, weights_path)
        model = TabularClassifier()
        model.load_context(
            type("Context", (), {"artifacts": {"encoder": str(encoder_path), "weights": str(weights_path)}})()
        )
        output = model.predict(None, input_example)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=TabularClassifier(),
            artifacts={"encoder": str(encoder_path), "weights": str(weights_path)},
            code_paths=[str(Path(pipeline.__file__).parent)],
            signature=infer_signature(input_example, output),
            input_example=input_example,
            pip_requirements=pinned_requirements(),
        )


def log_trained_model(model: Any, flavour: str, input_example: pd.DataFrame, config: PipelineConfig) -> Any:
    """Log a team trainer's model under the active run, as its own MLflow flavour.

    A classifier is logged so that its pyfunc answers ``predict_proba`` (gates and rollout need
    probabilities), with its class labels in the model's metadata. The trainer's module is pickled by
    value, so a class the team defined there loads where their repository is not installed (the router).
    """
    import importlib

    import cloudpickle
    import mlflow
    from mlflow.models import infer_signature

    task = config.task
    metadata: dict[str, Any] = {ModelMetadata.task.value: task.value}
    if config.training.trainer is not None:
        cloudpickle.register_pickle_by_value(importlib.import_module(config.training.trainer.split(":")[0]))
    if flavour == "pyfunc":
        output = model.predict(None, input_example)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            signature=infer_signature(input_example, output),
            input_example=input_example,
            metadata=metadata,
        )
    predict_fn = "predict"
    if task != Task.regression and callable(getattr(model, "predict_proba", None)):
        predict_fn = "predict_proba"
        metadata[ModelMetadata.classes.value] = [_plain(label) for label in getattr(model, "classes_", ())]
    output = getattr(model, predict_fn)(input_example)
    return mlflow.sklearn.log_model(
        sk_model=model,
        name="model",
        signature=infer_signature(input_example, output),
        input_example=input_example,
        serialization_format="cloudpickle",
        pyfunc_predict_fn=predict_fn,
        metadata=metadata,
    )


def _plain(label: Any) -> Any:
    """A class label as JSON has it (numpy scalars become Python numbers)."""
    return label.item() if hasattr(label, "item") else label


def current_alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def register_version(
    client: Any,
    name: str,
    model_uri: str,
    tags: dict[str, str],
    first_model_alias: str,
    wait_s: float = 120.0,
) -> Registration:
    """Register, wait until READY, then set the alias; on any error delete the new version so nothing is half-done.

    The alias is the last step, so no alias ever points at an incomplete version.
    """
    import mlflow

    champion = current_alias_version(client, name, Alias.champion.value)
    alias = first_model_alias if champion is None else Alias.candidate.value
    version = mlflow.register_model(model_uri, name, tags=tags)
    try:
        deadline = time.monotonic() + wait_s
        current = client.get_model_version(name, version.version)
        while current.status == "PENDING_REGISTRATION":
            if time.monotonic() > deadline:
                raise TimeoutError(f"model version {name}/{version.version} not READY after {wait_s:.0f}s")
            time.sleep(0.5)
            current = client.get_model_version(name, version.version)
        if current.status != "READY":
            raise RuntimeError(
                f"model version {name}/{version.version} ended {current.status}: {current.status_message}"
            )
        client.set_registered_model_alias(name, alias, version.version)
    except BaseException:
        logger.error("registration of %s/%s failed: deleting the version", name, version.version)
        client.delete_model_version(name, version.version)
        raise
    return Registration(name=name, version=str(version.version), aliases=(alias,))
