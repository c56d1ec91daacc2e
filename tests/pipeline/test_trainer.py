"""A team's trainer: the contract's errors name the field, and any returned model logs, loads and scores."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import Ridge

from contracts.vocabulary import Task
from pipeline.config import parse_config
from pipeline.register import log_trained_model
from pipeline.stages import score
from pipeline.trainer import TrainerError, check_model, load_trainer
from tests.conftest import deep_merge, shipped_config
from tests.pipeline.test_tracking import local_mlflow  # noqa: F401 - a fixture, used by name

TEAM_MODULE = """
from pipeline.trainer import TrainerInput

def train(data: TrainerInput):
    return None

def two(data, extra):
    return None

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def team_module(tmp_path, monkeypatch):
    """A team's trainers package on sys.path, as the job's working directory puts it."""
    package = tmp_path / "teamtrainers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "good.py").write_text(textwrap.dedent(TEAM_MODULE))
    (package / "broken.py").write_text("import a_module_nobody_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "teamtrainers"
    for name in [n for n in sys.modules if n.startswith("teamtrainers")]:
        del sys.modules[name]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("teamtrainers.good", "is not an import path of the form 'package.module:function'"),
        ("teamtrainers.missing:train", "cannot import 'teamtrainers.missing': ModuleNotFoundError"),
        ("teamtrainers.broken:train", "cannot import 'teamtrainers.broken': ModuleNotFoundError"),
        ("teamtrainers.good:nothing", "module 'teamtrainers.good' has no 'nothing'"),
        ("teamtrainers.good:NOT_A_FUNCTION", "is a int, not a function"),
        ("teamtrainers.good:two", "must take exactly one argument (the TrainerInput)"),
    ],
)
def test_a_trainer_that_cannot_be_used_is_named_with_its_field(team_module, path: str, expected: str) -> None:
    # Given a trainer path that is wrong in one way, when it is loaded, then the error names field and cause.
    with pytest.raises(TrainerError) as caught:
        load_trainer(path)
    message = str(caught.value)
    assert message.startswith("training.trainer: "), f"the field is named first: {message}"
    assert expected in message, f"expected {expected!r} in {message!r}"


def test_a_good_trainer_loads(team_module) -> None:
    assert callable(load_trainer("teamtrainers.good:train")), "a one-argument function is a trainer"


def test_what_a_trainer_returns_must_be_a_model() -> None:
    with pytest.raises(TrainerError, match="returned nothing"):
        check_model(None, "t.m:train")
    with pytest.raises(TrainerError, match="returned a builtins.dict"):
        check_model({"weights": 1}, "t.m:train")
    assert check_model(Ridge(), "t.m:train") == "sklearn", "a scikit-learn estimator logs as sklearn"


def test_checking_a_model_in_a_train_worker_does_not_import_mlflow() -> None:
    # Given a fresh interpreter, as a Ray Train worker is, whose trainer returned a scikit-learn model
    # and whose trainer module did not import MLflow,
    script = (
        "import sys\n"
        "from sklearn.linear_model import Ridge\n"
        "from pipeline.trainer import check_model\n"
        "flavour = check_model(Ridge(), 't.m:train')\n"
        "print(flavour, 'mlflow' in sys.modules)\n"
    )
    # when the model is checked there,
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    # then it is an sklearn model and MLflow (1 to 2 s of every run's train stage) was never imported.
    assert done.stdout.split() == ["sklearn", "False"], done.stdout + done.stderr


def test_a_python_model_is_found_when_the_team_module_imported_mlflow() -> None:
    # Given a PythonModel (its module imported mlflow.pyfunc, as this test module did),
    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return [0] * len(model_input)

    # then checking it says pyfunc.
    assert check_model(Constant(), "t.m:train") == "pyfunc", "a PythonModel logs as pyfunc"


def config_for(task: Task, label_type: dict) -> object:
    raw = shipped_config()
    raw["schema"]["columns"][raw["schema"]["label"]] = label_type
    raw["gates"] = {}  # the shipped file gates on AUC, a binary metric
    return parse_config(
        deep_merge(raw, {"task": task.value, "training": {"trainer": "teamtrainers.good:train"}})
    )


def frame(rows: int = 300) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows)})
    return x, x["a"].to_numpy() * 2 + rng.normal(0, 0.1, rows)


def test_a_regressor_logs_and_scores_exactly_as_it_predicts(local_mlflow, team_module) -> None:  # noqa: F811
    # Given a fitted regressor a team's trainer returned,
    x, y = frame()
    model = Ridge().fit(x, y)
    config = config_for(Task.regression, {"type": "float"})
    # when Lockgate logs it and scores held-out rows through the logged model,
    mlflow.set_experiment("trainer-contract")  # not whichever experiment an earlier test made active
    with mlflow.start_run():
        info = log_trained_model(model, "sklearn", x.head(5), config)  # type: ignore[arg-type]
    predictions = score(mlflow.pyfunc.load_model(info.model_uri), x, Task.regression)
    # then the scores are the estimator's own predictions, and the model records its task.
    assert np.allclose(predictions.values, model.predict(x)), "the logged model predicts as the estimator"
    assert info.metadata["lockgate.task"] == "regression", f"metadata: {info.metadata}"


def test_a_classifier_logs_with_its_probabilities_and_class_labels(local_mlflow, team_module) -> None:  # noqa: F811
    # Given a three-class classifier with string labels,
    x, y = frame()
    labels = np.where(y < -1, "low", np.where(y > 1, "high", "mid"))
    model = HistGradientBoostingClassifier(max_iter=20).fit(x, labels)
    config = config_for(Task.multiclass, {"type": "category", "categories": ["high", "low", "mid"]})
    # when it is logged and scored,
    mlflow.set_experiment("trainer-contract")  # not whichever experiment an earlier test made active
    with mlflow.start_run():
        info = log_trained_model(model, "sklearn", x.head(5), config)  # type: ignore[arg-type]
    predictions = score(mlflow.pyfunc.load_model(info.model_uri), x, Task.multiclass)
    # then the task sees each class's probability under the model's own labels.
    assert predictions.classes == ("high", "low", "mid"), f"classes: {predictions.classes}"
    assert np.allclose(predictions.values, model.predict_proba(x)), "probabilities are predict_proba's"
    assert (predictions.labels == model.predict(x)).mean() > 0.99, (
        "the most likely class is the predicted one"
    )


def test_a_team_model_records_the_packages_it_loads_with_and_nothing_is_inferred(
    local_mlflow,  # noqa: F811 - the fixture, by name
    team_module,
) -> None:
    from lightgbm import LGBMClassifier

    from pipeline.register import team_model_requirements

    # Given a LightGBM classifier (a library the project does not import itself),
    x, y = frame()
    model = LGBMClassifier(n_estimators=5, verbose=-1).fit(x, y > 0)
    config = config_for(Task.binary, {"type": "boolean"})
    # when it is logged,
    mlflow.set_experiment("trainer-contract")
    with mlflow.start_run():
        info = log_trained_model(model, "sklearn", x.head(5), config)  # type: ignore[arg-type]
    # then its requirements name LightGBM and scikit-learn (the flavour) with their exact versions, as computed
    # up front (MLflow's inference reloads the model in a subprocess, 3-8 s per run),
    local = mlflow.pyfunc.get_model_dependencies(info.model_uri)
    written = {line.strip() for line in Path(local).read_text().splitlines() if line.strip()}
    expected = set(team_model_requirements(model, None, "sklearn"))
    assert expected <= written, f"requirements.txt {sorted(written)} lacks {sorted(expected - written)}"
    assert any(r.startswith("lightgbm==") for r in written) and any(
        r.startswith("scikit-learn==") for r in written
    )
    # and the logged model loads and predicts as the estimator.
    assert np.allclose(
        mlflow.pyfunc.load_model(info.model_uri).predict(x.head(20)), model.predict_proba(x.head(20))
    )
