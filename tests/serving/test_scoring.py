"""Scoring any pyfunc: outputs of every shape become JSON answers and MLflow predictions; NaN never escapes."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.types import ColSpec, Schema

from serving.answers import binary_probability
from serving.scoring import LoadedModel, OutputError, normalise_output
from serving.spec import ModelRef

REF = ModelRef(name="any", version="1")
ROWS = [{"x": 1.0, "y": 2.0}, {"x": 3.0, "y": 4.0}]


class Metadata:
    """What LoadedModel reads of an MLflow model's metadata."""

    def __init__(self, predict_fn: str = "predict", loader_module: str = "mlflow.sklearn"):
        self.flavors = {"python_function": {"loader_module": loader_module, "predict_fn": predict_fn}}

    def get_input_schema(self) -> Schema:
        return Schema([ColSpec("double", "x"), ColSpec("double", "y")])


class FakePyfunc:
    """A pyfunc-like model: ``predict`` returns a fixed output; flavour quirks as MLflow 3.17 has them."""

    def __init__(self, output: Any, raw: Any = None, python_model: Any = None, predict_fn: str = "predict"):
        self.output, self.raw, self.python_model = output, raw, python_model
        self.metadata = Metadata(predict_fn)
        self.frames: list[pd.DataFrame] = []

    def predict(self, frame: pd.DataFrame) -> Any:
        self.frames.append(frame)
        return self.output

    def unwrap_python_model(self) -> Any:
        if self.python_model is None:  # as PyFuncModel does for scikit-learn, XGBoost, ...
            raise MlflowException("Unable to retrieve base model object from pyfunc.")
        return self.python_model

    def get_raw_model(self) -> Any:
        if self.raw is None:
            raise NotImplementedError("`get_raw_model` is not implemented by the underlying model")
        return self.raw


class Classifier:
    """A scikit-learn-style classifier: labels from ``classes_``, probabilities per row."""

    classes_ = np.array(["no", "yes"])

    def __init__(self, probabilities: list[list[float]]):
        self.probabilities = np.array(probabilities)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.probabilities[: len(frame)]


class RecordModel:
    """A Python model offering the record-level fast path, as pipeline/model.py's classifier does."""

    def predict_records(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"probability": 0.25 * (i + 1), "prediction": 0} for i, _ in enumerate(records)]


def test_a_one_dimensional_array_answers_prediction_with_python_scalars() -> None:
    # Given a regressor's float64 array, when normalised,
    scored = normalise_output(np.array([1.5, -2.0]), 2)
    # then each row answers {"prediction": value} and MLflow's predictions are the bare values.
    assert scored.answers == [{"prediction": 1.5}, {"prediction": -2.0}], scored.answers
    assert scored.predictions == [1.5, -2.0], scored.predictions
    assert all(type(a["prediction"]) is float for a in scored.answers), "numpy floats become Python floats"
    assert json.loads(json.dumps(scored.answers)) == scored.answers, "the answers are plain JSON"


def test_integer_and_string_labels_become_python_values() -> None:
    ints = normalise_output(np.array([0, 1], dtype="int64"), 2)
    strings = normalise_output(np.array(["no", "yes"], dtype=object), 2)
    assert [type(a["prediction"]) for a in ints.answers] == [int, int], ints.answers
    assert strings.predictions == ["no", "yes"], strings.predictions


def test_a_series_answers_prediction_and_predicts_as_mlflow_serialises_it() -> None:
    # Given a named and an unnamed Series, when normalised,
    named = normalise_output(pd.Series([0.5, 0.75], name="score"), 2)
    unnamed = normalise_output(pd.Series([3, 4]), 2)
    # then answers use "prediction", and predictions are one-column records as `mlflow models serve` writes.
    assert named.answers == [{"prediction": 0.5}, {"prediction": 0.75}], named.answers
    assert named.predictions == [{"score": 0.5}, {"score": 0.75}], named.predictions
    assert unnamed.predictions == [{"0": 3}, {"0": 4}], "an unnamed Series is column 0, a string key in JSON"


def test_a_dataframe_answers_with_its_columns_per_row() -> None:
    frame = pd.DataFrame({"probability": [0.2, 0.9], "prediction": np.array([0, 1], dtype="int64")})
    scored = normalise_output(frame, 2)
    assert scored.answers == [{"probability": 0.2, "prediction": 0}, {"probability": 0.9, "prediction": 1}]
    assert scored.predictions == scored.answers, "MLflow serves a DataFrame as its records"
    assert scored.answers[0] is not scored.predictions[0], (
        "answers can be extended without touching predictions"
    )


def test_a_two_dimensional_array_answers_a_list_per_row() -> None:
    scored = normalise_output(np.array([[0.1, 0.9], [0.6, 0.4]]), 2)
    assert scored.answers == [{"prediction": [0.1, 0.9]}, {"prediction": [0.6, 0.4]}], scored.answers
    assert scored.predictions == [[0.1, 0.9], [0.6, 0.4]], "as ndarray.tolist(), which MLflow returns"


@pytest.mark.parametrize(
    ("output", "fragment"),
    [
        (np.array([1.0, np.nan]), "output[1] is nan"),
        (pd.Series([np.inf, 1.0]), "output[0] is inf"),
        (pd.DataFrame({"probability": [0.5, np.nan]}), "output[1].probability is nan"),
        (np.array([[0.1, -np.inf], [0.2, 0.3]]), "output[0][1] is -inf"),
        (np.array([1.0]), "1 answer(s) for 2 row(s)"),
        (np.array(1.0), "single value"),
        (np.float64(1.0), "returned a float64"),
        ({"prediction": [1, 2]}, "returned a dict"),
        ([object(), object()], "has no JSON form"),
    ],
)
def test_outputs_that_cannot_be_returned_are_refused(output: Any, fragment: str) -> None:
    with pytest.raises(OutputError) as caught:
        normalise_output(output, 2)
    assert fragment in str(caught.value), str(caught.value)


def test_a_scikit_learn_like_pyfunc_loads_despite_unwrap_raising_and_adds_probabilities() -> None:
    # Given a flavour whose unwrap_python_model raises and whose raw model is a classifier,
    model = FakePyfunc(np.array(["yes", "no"], dtype=object), raw=Classifier([[0.3, 0.7], [0.8, 0.2]]))
    # when loaded and asked to score,
    loaded = LoadedModel(REF, model)
    scored = loaded.predict(ROWS)
    # then there is no fast path, each answer carries its label and class probabilities,
    assert loaded.fast is None, "no record-level path for a model that is not a PythonModel"
    assert scored.answers == [
        {"prediction": "yes", "probabilities": {"no": 0.3, "yes": 0.7}},
        {"prediction": "no", "probabilities": {"no": 0.8, "yes": 0.2}},
    ], scored.answers
    # and MLflow's predictions are the labels alone, the model seeing the signature's columns in order.
    assert scored.predictions == ["yes", "no"], scored.predictions
    assert list(model.frames[0].columns) == ["x", "y"], "the frame has the signature's columns"
    assert all(binary_probability(answer) is None for answer in scored.answers), "no binary probability"


def test_probabilities_are_not_added_when_the_pyfunc_already_predicts_them() -> None:
    model = FakePyfunc(np.array([[0.3, 0.7], [0.8, 0.2]]), raw=Classifier([[0.3, 0.7], [0.8, 0.2]]))
    model.metadata = Metadata(predict_fn="predict_proba")
    scored = LoadedModel(REF, model).predict(ROWS)
    assert scored.answers == [{"prediction": [0.3, 0.7]}, {"prediction": [0.8, 0.2]}], scored.answers


def test_non_finite_class_probabilities_are_refused() -> None:
    model = FakePyfunc(np.array(["yes", "no"], dtype=object), raw=Classifier([[np.nan, 0.7], [0.8, 0.2]]))
    with pytest.raises(OutputError) as caught:
        LoadedModel(REF, model).predict(ROWS)
    assert "probabilities.no is nan" in str(caught.value), str(caught.value)


def test_a_model_without_a_raw_classifier_answers_prediction_only() -> None:
    scored = LoadedModel(REF, FakePyfunc(np.array([0.5, 1.5]))).predict(ROWS)
    assert scored.answers == [{"prediction": 0.5}, {"prediction": 1.5}], scored.answers


def test_a_python_model_offering_predict_records_keeps_the_fast_path_and_its_answer() -> None:
    # Given a Python model with predict_records (the built-in classifier's shape),
    model = FakePyfunc(pd.DataFrame(), python_model=RecordModel())
    loaded = LoadedModel(REF, model)
    # when it scores,
    scored = loaded.predict(ROWS)
    # then the record-level path answered, unchanged, without pandas or predict.
    assert loaded.fast is not None and model.frames == [], "predict_records used, predict not called"
    assert scored.answers == [{"probability": 0.25, "prediction": 0}, {"probability": 0.5, "prediction": 0}]
    assert scored.predictions == scored.answers, "MLflow would serve the same records from predict's frame"
    assert binary_probability(scored.answers[1]) == 0.5, "binary answers feed the prediction histogram"


def test_a_model_without_a_named_signature_is_refused_when_it_loads() -> None:
    model = FakePyfunc(np.array([1.0]))
    model.metadata.get_input_schema = lambda: None  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="no input signature"):
        LoadedModel(REF, model)


def test_a_real_scikit_learn_pyfunc_answers_labels_and_probabilities(tmp_path) -> None:
    # Given a scikit-learn classifier saved by MLflow itself, with string labels and a signature,
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=120), "y": rng.normal(size=120)})
    labels = np.where(frame["x"] - frame["y"] > 0, "up", "down")
    estimator = LogisticRegression().fit(frame, labels)
    path = tmp_path / "model"
    mlflow.sklearn.save_model(
        estimator, str(path), signature=infer_signature(frame, labels), pip_requirements=["scikit-learn"]
    )
    # when the router's loader scores two rows,
    loaded = LoadedModel(REF, mlflow.pyfunc.load_model(str(path)))
    scored = loaded.predict(frame.head(2).to_dict("records"))
    # then the labels are the model's, and the probabilities predict_proba's, keyed by class.
    expected = estimator.predict_proba(frame.head(2))
    assert scored.predictions == estimator.predict(frame.head(2)).tolist(), scored.predictions
    for answer, row in zip(scored.answers, expected, strict=True):
        assert answer["probabilities"] == pytest.approx({"down": row[0], "up": row[1]}), answer


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_a_classifier_a_team_trainer_made_answers_label_probabilities_and_for_binary_probability(
    tmp_path, task: str
) -> None:
    # Given a classifier logged as Lockgate packages a team's model: its pyfunc answers predict_proba, and
    # the model's metadata names the task and the class labels,
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from contracts.vocabulary import ModelMetadata

    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x": rng.normal(size=150), "y": rng.normal(size=150)})
    score = frame["x"] - frame["y"]
    labels = (score > 0).astype(int) if task == "binary" else np.digitize(score, [-0.5, 0.5])
    estimator = LogisticRegression().fit(frame, labels)
    classes = [int(c) for c in estimator.classes_]
    path = tmp_path / "model"
    mlflow.sklearn.save_model(
        estimator,
        str(path),
        signature=infer_signature(frame, estimator.predict_proba(frame)),
        pip_requirements=["scikit-learn"],
        pyfunc_predict_fn="predict_proba",
        metadata={ModelMetadata.task.value: task, ModelMetadata.classes.value: classes},
    )
    # when the router's loader scores three rows,
    loaded = LoadedModel(REF, mlflow.pyfunc.load_model(str(path)))
    scored = loaded.predict(frame.head(3).to_dict("records"))
    # then each answer names the likeliest class and every class's probability, and a binary answer also
    # carries the positive class's probability that rollout analysis, shadow, capture and drift read;
    # /invocations answers what mlflow models serve would (the probability rows).
    expected = estimator.predict_proba(frame.head(3))
    for answer, row in zip(scored.answers, expected, strict=True):
        assert answer["prediction"] == classes[int(np.argmax(row))], answer
        assert answer["probabilities"] == pytest.approx(
            {str(c): p for c, p in zip(classes, row, strict=True)}
        ), answer
        if task == "binary":
            assert answer["probability"] == pytest.approx(row[1]), answer
        else:
            assert "probability" not in answer, "only a binary answer has one probability"
    assert np.allclose(scored.predictions, expected), "invocations keep the pyfunc's own output"
