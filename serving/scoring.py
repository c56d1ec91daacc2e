"""Scoring any registered pyfunc: load it, score validated rows, and turn whatever it returns into answers.

Two views of one output come back. ``answers`` (one JSON object per row) is what the router returns to
``{"rows": ...}`` and what metrics, shadow and capture read. ``predictions`` (one JSON value per row) is
exactly what ``mlflow models serve`` would put under ``"predictions"``: MLflow serialises a DataFrame as
its records, a Series as one-column records and an array as ``tolist()`` (mlflow/utils/proto_json_utils.py,
``_get_jsonable_obj``), so clients written for it switch to the router without change.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from contracts.vocabulary import ModelMetadata, Task
from serving.answers import PREDICTION, PROBABILITIES, PROBABILITY
from serving.routing import ColumnRule, rules_from_signature
from serving.spec import AliasRef, ModelRef

PYFUNC_FLAVOR = "python_function"


class OutputError(ValueError):
    """A model output the router cannot return: wrong length, not JSON, or a non-finite number."""


@dataclass(frozen=True)
class Scored:
    """One request's output: per-row answers (the router's body) and MLflow's per-row predictions."""

    answers: list[dict[str, Any]]
    predictions: list[Any]


def json_value(value: Any, where: str) -> Any:
    """``value`` as plain JSON (numpy scalars and arrays to Python); OutputError on NaN, infinity or the unknown."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise OutputError(f"{where} is {value}, not a finite number")
        return float(value)
    if isinstance(value, np.generic):
        return json_value(value.item(), where)
    if isinstance(value, np.ndarray | list | tuple):
        return [json_value(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        return {_json_key(key): json_value(item, f"{where}.{key}") for key, item in value.items()}
    if value is pd.NaT or value is pd.NA:
        raise OutputError(f"{where} is missing ({value})")
    if isinstance(value, pd.Timestamp | datetime.date | datetime.time):
        return value.isoformat()  # as MLflow's NumpyEncoder writes it
    raise OutputError(f"{where} is a {type(value).__name__}, which has no JSON form")


def _json_key(key: Any) -> str:
    """An object key as ``json.dumps`` would write it (numbers and booleans become their JSON text)."""
    if isinstance(key, str):
        return key
    return json.dumps(json_value(key, "a key"))


def normalise_output(output: Any, count: int) -> Scored:
    """Per-row answers and MLflow predictions from a pyfunc's output for ``count`` rows.

    A DataFrame answers with its columns per row; a Series, a 1-D array or a list with ``{"prediction":
    value}`` (a list of objects with the objects); a 2-D array with ``{"prediction": [row values]}``.
    """
    if isinstance(output, pd.DataFrame):
        records = output.to_dict(orient="records")
        predictions = json_value(records, "output")
        return _checked(predictions, [dict(record) for record in predictions], count)
    if isinstance(output, pd.Series):
        # MLflow serves a Series as the records of a one-column frame, keyed by the Series' name (0 if none).
        key = _json_key(0 if output.name is None else output.name)
        values = json_value(output.tolist(), "output")
        return _checked([{key: value} for value in values], [{PREDICTION: value} for value in values], count)
    if isinstance(output, np.ndarray) and output.ndim == 0:
        raise OutputError(f"the model returned a single value for {count} row(s)")
    if isinstance(output, np.ndarray | list | tuple):
        values = json_value(output, "output")
        answers = [dict(value) if isinstance(value, dict) else {PREDICTION: value} for value in values]
        return _checked(values, answers, count)
    raise OutputError(
        f"the model returned a {type(output).__name__}; expected a DataFrame, Series, array or list"
    )


def _checked(predictions: list[Any], answers: list[dict[str, Any]], count: int) -> Scored:
    if len(predictions) != count:
        raise OutputError(f"the model returned {len(predictions)} answer(s) for {count} row(s)")
    return Scored(answers=answers, predictions=predictions)


def add_probabilities(answers: list[dict[str, Any]], classes: Any, probabilities: Any) -> None:
    """Put ``{"probabilities": {class label: p}}`` next to each answer's prediction (in place)."""
    matrix = np.asarray(probabilities, dtype="float64")
    labels = [_json_key(json_value(label, "a class label")) for label in np.asarray(classes).tolist()]
    if matrix.shape != (len(answers), len(labels)):
        raise OutputError(
            f"class probabilities have shape {matrix.shape}, expected ({len(answers)}, {len(labels)})"
        )
    for index, (answer, row) in enumerate(zip(answers, matrix.tolist(), strict=True)):
        answer[PROBABILITIES] = {
            label: json_value(p, f"output[{index}].probabilities.{label}")
            for label, p in zip(labels, row, strict=True)
        }


def label_answers(answers: list[dict[str, Any]], classes: list[Any], matrix: Any, binary: bool) -> None:
    """Answers of a classifier that returns class probabilities: the likeliest label and every probability.

    A binary model's answer also carries ``probability`` (of its second class, the positive one), which
    the router's prediction histogram, shadow divergence, capture and drift read, as for the built-in model.
    """
    probabilities = np.asarray(matrix, dtype="float64")
    add_probabilities(answers, classes, probabilities)
    for answer, row in zip(answers, probabilities, strict=True):
        answer[PREDICTION] = json_value(classes[int(np.argmax(row))], "a class label")
        if binary and len(classes) == 2:
            answer[PROBABILITY] = json_value(float(row[1]), PROBABILITY)


def record_level_predict(model: Any) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None:
    """The optional fast path: ``predict_records(rows)`` of a Python model that offers it, else None."""
    from mlflow.exceptions import MlflowException

    try:
        python_model = model.unwrap_python_model()
    except (MlflowException, AttributeError):
        # Flavours that are not a PythonModel (scikit-learn, XGBoost, ...) raise rather than return None.
        return None
    method = getattr(python_model, "predict_records", None)
    return method if callable(method) else None


def probability_source(model: Any) -> Any | None:
    """The native classifier behind a pyfunc whose predict gives labels and that offers ``predict_proba``.

    Any flavour whose raw model follows scikit-learn's classifier API (``classes_`` and ``predict_proba``)
    qualifies. A model logged with another ``pyfunc_predict_fn`` (already ``predict_proba``) does not.
    """
    flavor = model.metadata.flavors.get(PYFUNC_FLAVOR, {})
    if flavor.get("predict_fn", "predict") != "predict":
        return None
    try:
        raw = model.get_raw_model()
    except (NotImplementedError, AttributeError):
        return None
    if callable(getattr(raw, "predict_proba", None)) and getattr(raw, "classes_", None) is not None:
        return raw
    return None


# What MLflow answers for a registered model, version or alias that does not exist (yet).
MISSING_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


def _version_or_none(client: Any, name: str, lookup: Callable[[], Any]) -> str | None:
    """``lookup()``'s version, or None when registered model ``name`` (or the version asked for) does not exist.

    MLflow's basic-auth answers a user who is no admin with 403, not 404, when the model does not exist yet:
    a version or alias lookup needs a version-read right it cannot find on nothing (mlflow/server/auth/
    __init__.py, ``_alias_version_requirement_met`` and the model-version validators), while the model lookup
    says 404. A refusal is therefore checked against the model itself; when the model exists, it stands.
    """
    from mlflow.exceptions import MlflowException

    try:
        return str(lookup().version)
    except MlflowException as error:
        if error.error_code in MISSING_CODES:
            return None
        if error.error_code != "PERMISSION_DENIED":
            raise
        refused = error
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code in MISSING_CODES:
            return None
        raise
    raise refused


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version ``alias`` of registered model ``name`` names, or None when the model or alias does not exist."""
    return _version_or_none(client, name, lambda: client.get_model_version_by_alias(name, alias))


def registry_version(ref: ModelRef | AliasRef) -> str | None:
    """The registered version ``ref`` names now, or None when the registry has none (yet).

    A pinned version is looked up (it may not be registered yet, as on a fresh stack); an alias is resolved.
    Any other registry failure (unreachable, refused) raises: the caller retries, it does not conclude.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if isinstance(ref, AliasRef):
        return alias_version(client, ref.name, ref.alias.value)
    return _version_or_none(client, ref.name, lambda: client.get_model_version(ref.name, ref.version))


class LoadedModel:
    """A registered version, loaded, with the column rules its signature declares."""

    def __init__(self, ref: ModelRef, model: Any):
        self.ref = ref
        self.model = model
        self.rules: tuple[ColumnRule, ...] = rules_from_signature(model.metadata.get_input_schema())
        self.columns = [rule.name for rule in self.rules]
        # A model whose code offers a record-level predict (pipeline/model.py does) skips pandas: for the few
        # rows of a request, building a DataFrame and the pyfunc checks cost several times the network.
        self.fast = record_level_predict(model)
        self.classifier = None if self.fast is not None else probability_source(model)
        # A classifier a team's trainer produced answers predict_proba; Lockgate wrote its labels beside it.
        metadata = getattr(model.metadata, "metadata", None) or {}
        self.classes: list[Any] | None = metadata.get(ModelMetadata.classes.value)
        self.binary = metadata.get(ModelMetadata.task.value) == Task.binary.value

    @classmethod
    def load(cls, ref: ModelRef) -> LoadedModel:
        """Load a registered version from the MLflow registry."""
        import mlflow.pyfunc

        return cls(ref, mlflow.pyfunc.load_model(ref.uri))

    def predict(self, rows: list[dict[str, Any]]) -> Scored:
        """Score validated rows: answers and MLflow predictions, one per row, JSON-safe and finite."""
        if self.fast is not None:
            return normalise_output(self.fast(rows), len(rows))
        frame = pd.DataFrame.from_records(rows, columns=self.columns)
        output = self.model.predict(frame)
        scored = normalise_output(output, len(rows))
        if self.classes and np.ndim(output) == 2 and np.shape(output)[1] == len(self.classes):
            label_answers(scored.answers, self.classes, output, self.binary)
        elif self.classifier is not None:
            add_probabilities(scored.answers, self.classifier.classes_, self.classifier.predict_proba(frame))
        return scored
