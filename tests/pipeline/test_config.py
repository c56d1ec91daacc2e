"""Pipeline definition: the shipped file validates; bad files list every problem with its field path."""

from __future__ import annotations

import json

import pytest
import yaml
from pydantic import ValidationError

from pipeline.config import ConfigError, PipelineConfig, json_schema, load_config, parse_config
from tests.conftest import ROOT, deep_merge, shipped_config


def test_shipped_pipeline_file_validates() -> None:
    config = load_config(ROOT / "pipeline.yaml")
    assert config.registry.model_name == "loan-default", "the shipped file names the loan-default model"
    assert config.features[-1] == "product", "features default to every non-label column in order"
    assert "default" not in config.features, "the label is never a feature"


def test_every_problem_is_reported_with_its_field_path() -> None:
    raw = deep_merge(
        shipped_config(),
        {
            "training": {"epochs": 0, "scaling": {"num_workers": 0}},
            "split": {"test_fraction": 1.5},
            "gates": {"regression": {"mode": "sometimes"}},
        },
    )
    raw["unexpected"] = True
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "bad.yaml")
    paths = [problem.split(":")[0] for problem in caught.value.problems]
    for expected in (
        "training.epochs",
        "training.scaling.num_workers",
        "split.test_fraction",
        "gates.regression.mode",
        "unexpected",
    ):
        assert expected in paths, f"expected a problem at {expected}, got {paths}"


def test_cross_field_rules_name_the_field() -> None:
    raw = deep_merge(shipped_config(), {"slices": ["income"], "model": {"features": ["nope"]}})
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    text = str(caught.value)
    assert "slices: 'income' must be a category column" in text, text
    assert "model.features: 'nope'" in text, text


def test_category_column_without_categories_is_refused() -> None:
    raw = deep_merge(
        shipped_config(), {"schema": {"columns": {"region": {"type": "category", "categories": None}}}}
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert any(p.startswith("schema.columns.region") for p in caught.value.problems), caught.value.problems


def test_unreadable_and_malformed_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listing)


def test_config_is_frozen_and_hash_tracks_content() -> None:
    config = load_config(ROOT / "pipeline.yaml")
    with pytest.raises(ValidationError):
        config.name = "other"  # type: ignore[misc]
    changed = parse_config(deep_merge(shipped_config(), {"training": {"epochs": 7}}))
    assert config.config_hash() == load_config(ROOT / "pipeline.yaml").config_hash(), "hash must be stable"
    assert config.config_hash() != changed.config_hash(), "a changed field must change the hash"


def test_json_schema_describes_the_file() -> None:
    schema = json_schema()
    assert {"name", "data", "schema", "registry"} <= set(schema["required"]), schema["required"]
    assert schema["additionalProperties"] is False, "unknown top-level keys must be refused"
    json.dumps(schema)
    assert PipelineConfig.model_config["frozen"] is True


def problems_of(override: dict) -> list[str]:
    """The problems a pipeline file with ``override`` merged into the shipped one has (asserts it is refused)."""
    with pytest.raises(ConfigError) as caught:
        parse_config(deep_merge(shipped_config(), override), "team.yaml")
    assert str(caught.value).startswith("team.yaml:"), "the error names the file"
    return caught.value.problems


def test_the_task_defaults_to_binary_and_decides_the_regression_gates_metric() -> None:
    config = parse_config(shipped_config())
    assert config.task == "binary", "a file without task: keeps today's meaning"
    assert config.regression_metric == "auc", "binary's default no-regression metric"


def test_a_gate_on_a_metric_the_task_does_not_have_is_refused_before_any_training() -> None:
    problems = problems_of(
        {
            "gates": {
                "thresholds": {"rules": [{"metric": "rmse", "max": 1.0}]},
                "regression": {"metric": "r2"},
            }
        }
    )
    assert any(
        p.startswith(
            "gates.thresholds.rules.0.metric: task 'binary' has no metric 'rmse'; its metrics are: auc"
        )
        for p in problems
    ), problems
    assert any(p.startswith("gates.regression.metric: task 'binary' has no metric 'r2'") for p in problems), (
        problems
    )


def test_a_label_column_that_contradicts_the_task_is_refused() -> None:
    raw = shipped_config()
    raw["schema"]["columns"][raw["schema"]["label"]] = {"type": "float"}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "team.yaml")
    label = raw["schema"]["label"]
    expected = (
        f"schema.columns.{label}.type: the label of a binary task must be integer or boolean, not float"
    )
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems


def test_the_built_in_model_refuses_tasks_it_cannot_train() -> None:
    problems = problems_of({"task": "regression"})
    assert any(p.startswith("task: the built-in model") and "'regression'" in p for p in problems), problems


def test_regression_gate_slices_must_be_declared() -> None:
    problems = problems_of({"gates": {"regression": {"slices": ["nowhere"]}}})
    assert any(
        p.startswith("gates.regression.slices: 'nowhere' is not in the declared slices") for p in problems
    )


def test_an_unknown_task_names_the_field() -> None:
    problems = problems_of({"task": "clustering"})
    assert any(
        p.startswith("task: Input should be 'binary', 'multiclass' or 'regression'") for p in problems
    ), problems
