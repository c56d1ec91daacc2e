"""Register stage: package the model, then register a version with lineage and aliases, all or nothing."""

from __future__ import annotations

import collections
import functools
import json
import logging
import tempfile
import time
from collections.abc import Callable
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


TEAM_MODEL_REQUIREMENTS = ("mlflow", "numpy", "pandas", "cloudpickle")
"""What any team model needs at load time, beside the packages its own objects and trainer module come from."""


def _object_roots(value: Any, seen: set[int], depth: int = 0) -> set[str]:
    """Top-level packages of ``value``'s class and of the estimators it holds (a pipeline's steps)."""
    if id(value) in seen or depth > 6:
        return set()
    seen.add(id(value))
    roots = {type(value).__module__.split(".")[0]}
    get_params = getattr(value, "get_params", None)
    if callable(get_params):
        try:
            params = get_params(deep=False)
        except Exception:  # noqa: BLE001 - an estimator-like object whose params cannot be listed
            params = {}
        for item in params.values():
            for part in item if isinstance(item, list | tuple) else (item,):
                for member in part if isinstance(part, tuple) else (part,):
                    if hasattr(member, "__module__") and not isinstance(member, type | str | int | float):
                        roots |= _object_roots(member, seen, depth + 1)
    return roots


def team_model_requirements(model: Any, trainer_module: str | None, flavour: str = "pyfunc") -> list[str]:
    """``name==version`` for a team model: its classes' packages, its trainer module's imports, the basics.

    Given explicitly, MLflow does not infer them by loading the model again in a subprocess (3 to 8 s of
    every run, measured with benchmarks/bench_pipeline.py --example diabetes).
    """
    import importlib
    import sys

    roots = _object_roots(model, set())
    if trainer_module is not None:
        module = importlib.import_module(trainer_module)
        for value in vars(module).values():
            name = value.__name__ if isinstance(value, type(sys)) else getattr(value, "__module__", None)
            if isinstance(name, str):
                roots.add(name.split(".")[0])
    distributions = module_distributions()
    names = set(TEAM_MODEL_REQUIREMENTS) | ({"scikit-learn"} if flavour == "sklearn" else set())
    for root in roots - set(sys.stdlib_module_names):
        names.update(d for d in distributions.get(root, ()) if d.lower() != "lockgate")
    return sorted(f"{name}=={installed_version(name).split('+')[0]}" for name in names)


@functools.cache
def module_distributions() -> dict[str, list[str]]:
    """Top-level module → the installed distributions that provide it, as ``packages_distributions`` says.

    The same rule as ``importlib.metadata.packages_distributions`` (Python 3.11): a distribution's
    ``top_level.txt``, else the first part of each path its ``RECORD`` lists (a lone file by its module
    name), names with a dot left out. It reads RECORD as text: ``packages_distributions`` builds a path
    object per installed file (importlib_metadata's, which MLflow calls, also stats each one), which took
    0.4 to 2.4 s of every run's package stage on a 2-core machine; this takes about 0.02 s.
    """
    import inspect
    from importlib.metadata import distributions

    found: dict[str, list[str]] = collections.defaultdict(list)
    for distribution in distributions():
        declared = (distribution.read_text("top_level.txt") or "").split()
        modules = declared or _recorded_top_level(
            distribution.read_text("RECORD") or "", inspect.getmodulename
        )
        for module in modules:
            found[module].append(distribution.metadata["Name"])
    return dict(found)


def _recorded_top_level(record: str, module_name: Callable[[str], str | None]) -> set[str]:
    """The importable top-level names a RECORD's paths install (``packages_distributions``' inference)."""
    names = set()
    for line in record.splitlines():
        path = line.split(",", 1)[0]
        if not path:
            continue
        first, nested, _ = path.partition("/")
        name = first if nested else (module_name(path) or path)
        if "." not in name and name != "__pycache__":  # the standard library's answer has no __pycache__
            names.add(name)
    return names


def seed_mlflow_module_map() -> None:
    """Hand MLflow the module → distribution map, so logging a model does not rebuild it the slow way.

    With explicit ``pip_requirements`` MLflow still checks them against this environment
    (``warn_dependency_requirement_mismatches``), building the map with importlib_metadata's
    ``packages_distributions`` once per process (mlflow/utils/requirements_utils.py
    ``_init_modules_to_packages_map``, which fills ``_MODULES_TO_PACKAGES`` only while it is None). A
    version of MLflow without that cache is left alone.
    """
    from mlflow.utils import requirements_utils

    if getattr(requirements_utils, "_MODULES_TO_PACKAGES", "absent") is not None:
        return
    mapping = {module: list(names) for module, names in module_distributions().items()}
    mapping.update(getattr(requirements_utils, "MLFLOW_MODULES_TO_PACKAGES", {}))
    setattr(requirements_utils, "_MODULES_TO_PACKAGES", mapping)  # noqa: B010 - a private cache, typed None


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
        seed_mlflow_module_map()
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
    trainer_module = config.training.trainer.split(":")[0] if config.training.trainer is not None else None
    if trainer_module is not None:
        cloudpickle.register_pickle_by_value(importlib.import_module(trainer_module))
    requirements = team_model_requirements(model, trainer_module, flavour)
    seed_mlflow_module_map()
    if flavour == "pyfunc":
        output = model.predict(None, input_example)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            signature=infer_signature(input_example, output),
            input_example=input_example,
            metadata=metadata,
            pip_requirements=requirements,
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
        pip_requirements=requirements,
    )


def _plain(label: Any) -> Any:
    """A class label as JSON has it (numpy scalars become Python numbers)."""
    return label.item() if hasattr(label, "item") else label


def point_new_version(name: str, version: str, first_model_alias: str) -> str:
    """Point an alias at a new version through the single alias writer; the alias it got.

    The model's first version takes ``first_model_alias`` (champion) if nobody took it meanwhile, any
    later one ``candidate``: each a compare-and-set against what the writer itself reads, so a
    registration never overwrites a promotion running at the same moment.
    """
    from serving.promotion import AliasMove, apply_moves, current_aliases

    for _ in range(5):
        aliases = current_aliases(name)
        alias = first_model_alias if Alias.champion.value not in aliases else Alias.candidate.value
        change = apply_moves(name, [AliasMove(alias, aliases.get(alias), version)])
        if change.ok:
            return alias
        if not change.stale:
            raise RuntimeError(f"model {name}: pointing '{alias}' at v{version} failed: {change.reason}")
    raise RuntimeError(
        f"model {name}: aliases kept changing while v{version} was registered: {change.reason}"
    )


def register_version(
    client: Any,
    name: str,
    model_uri: str,
    tags: dict[str, str],
    first_model_alias: str,
    wait_s: float = 120.0,
    point_alias: Callable[[str, str, str], str] = point_new_version,
) -> Registration:
    """Register, wait until READY, then set the alias; on any error delete the new version so nothing is half-done.

    The alias is the last step, so no alias ever points at an incomplete version.
    """
    import mlflow

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
        alias = point_alias(name, str(version.version), first_model_alias)
    except BaseException:
        logger.error("registration of %s/%s failed: deleting the version", name, version.version)
        client.delete_model_version(name, version.version)
        raise
    return Registration(name=name, version=str(version.version), aliases=(alias,))
