"""The CLI without an environment: failures become one line and an exit code; files, schema, help, rollout status."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from lockgate.cli import app
from lockgate.cli.common import (
    BACKEND_CAUSES,
    FAILURE,
    SERVING_ERRORS,
    USAGE,
    CommandError,
    exits_on_error,
    resolve,
)
from lockgate.kuberay import LaunchError, TemplateError
from lockgate.localenv import EnvironmentError_
from lockgate.runtime import MissingSettingError, serving_path
from pipeline.config import ConfigError, load_config
from serving.deploy import DeployError
from serving.desired import ServingFileError
from tests.conftest import ROOT, deep_merge, shipped_config

runner = CliRunner()


def failing_app(error: BaseException, **decorator_args: object) -> typer.Typer:
    """A one-command app whose command raises ``error`` under the CLI's decorator."""
    tiny = typer.Typer()

    @tiny.command()
    @exits_on_error(**decorator_args)  # type: ignore[arg-type]
    def fail() -> None:
        raise error

    return tiny


STANDARD_CASES = [
    (ConfigError("pipeline.yaml", ["training.epochs: bad"]), USAGE),
    (MissingSettingError("capture.uri: not set"), USAGE),
    (TemplateError("template.yaml: no RayJob"), USAGE),
    (LaunchError("the cluster refused the RayJob"), FAILURE),
    (ServingFileError("serving.yaml: cannot read file"), FAILURE),
    (DeployError("Serve refused the config"), FAILURE),
    (EnvironmentError_("run `lockgate up`"), FAILURE),
    (CommandError("promotion refused: stale"), FAILURE),
    (CommandError("--data: not with --job-template", USAGE), USAGE),
]


@pytest.mark.parametrize(("error", "code"), STANDARD_CASES, ids=lambda v: type(v).__name__)
def test_the_decorator_maps_each_error_to_its_code_and_an_error_line(error: Exception, code: int) -> None:
    # given a command that raises a known error
    tiny = failing_app(error)
    # when it runs
    result = runner.invoke(tiny, [])
    # then it exits with the error's code and says what went wrong on stderr, prefixed "error: "
    assert result.exit_code == code, f"{type(error).__name__} should exit {code}, got {result.exit_code}"
    assert result.stderr == f"error: {error}\n", f"expected one error line, got {result.stderr!r}"
    assert result.stdout == "", f"nothing belongs on stdout, got {result.stdout!r}"


def test_an_error_named_in_a_module_not_yet_imported_is_skipped_not_imported() -> None:
    # given a mapping naming a class in a module nobody imported
    name = "lockgate_test_never_imported"
    # when it is resolved
    resolved = resolve({f"{name}:Missing": USAGE, ValueError: FAILURE})
    # then that entry is left out (none of its errors can have been raised) and the module stays unloaded
    assert resolved == {ValueError: FAILURE}, f"only the importable class should resolve, got {resolved}"
    assert name not in sys.modules, "resolving must not import a module"


def test_a_command_can_override_the_standard_code() -> None:
    # given a command that treats a bad serving file as a usage error (as `export` does)
    tiny = failing_app(ServingFileError("serving.yaml: invalid"), codes=dict.fromkeys(SERVING_ERRORS, USAGE))
    # when it fails that way
    result = runner.invoke(tiny, [])
    # then the override wins
    assert result.exit_code == USAGE, f"the override should give {USAGE}, got {result.exit_code}"


def test_the_most_specific_class_decides() -> None:
    # given a command mapping every ValueError to a usage error (as `data generate` does)
    codes = {ValueError: USAGE, ServingFileError: FAILURE}
    # when it raises a plain ValueError, and a ServingFileError (a ValueError subclass)
    plain = runner.invoke(failing_app(ValueError("rows must be positive"), codes=codes), [])
    serving = runner.invoke(failing_app(ServingFileError("serving.yaml: bad"), codes=codes), [])
    # then each gets the code of its nearest mapped class
    assert plain.exit_code == USAGE, f"a ValueError should exit {USAGE}, got {plain.exit_code}"
    assert serving.exit_code == FAILURE, f"a ServingFileError should exit {FAILURE}, got {serving.exit_code}"


def test_an_unmapped_error_propagates_unchanged() -> None:
    # given a command raising an error nobody mapped
    tiny = failing_app(KeyError("surprise"))
    # when it runs
    result = runner.invoke(tiny, [])
    # then the exception itself comes out (a bug shows its traceback)
    assert isinstance(result.exception, KeyError), f"expected the KeyError, got {result.exception!r}"


def test_a_library_cause_is_one_line_naming_its_type() -> None:
    # given a Ray-like wrapper carrying a multi-line library error as ``cause``
    class RemoteFailure(OSError):
        def __init__(self, cause: BaseException):
            super().__init__("ray::AliasWriter.apply()\n  File ...\ntraceback lines")
            self.cause = cause

    class MlflowLikeError(Exception):
        pass

    wrapped = RemoteFailure(MlflowLikeError("RESOURCE_DOES_NOT_EXIST: no model\nmore detail"))
    # when a command that declares library causes raises it
    result = runner.invoke(failing_app(wrapped, causes=BACKEND_CAUSES), [])
    # then one line names the original error's type and its first line
    assert result.exit_code == FAILURE, f"a library failure should exit {FAILURE}, got {result.exit_code}"
    expected = "error: MlflowLikeError: RESOURCE_DOES_NOT_EXIST: no model\n"
    assert result.stderr == expected, f"expected {expected!r}, got {result.stderr!r}"


def test_library_causes_are_resolved_by_name_when_loaded() -> None:
    # given the library errors the CLI names without importing them
    fake = types.ModuleType("lockgate_test_fake_library")

    class FakeLibraryError(Exception):
        pass

    fake.FakeLibraryError = FakeLibraryError  # type: ignore[attr-defined]
    sys.modules[fake.__name__] = fake
    try:
        # when the module is loaded and a command raises its error
        causes = {f"{fake.__name__}:FakeLibraryError": FAILURE}
        result = runner.invoke(failing_app(FakeLibraryError("down"), causes=causes), [])
    finally:
        del sys.modules[fake.__name__]
    # then it is mapped like any other
    assert result.stderr == "error: FakeLibraryError: down\n", f"unexpected message {result.stderr!r}"
    assert result.exit_code == FAILURE, f"expected exit {FAILURE}, got {result.exit_code}"


def test_validate_accepts_a_valid_pipeline_file(tmp_path: Path) -> None:
    # given the shipped pipeline definition
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(shipped_config()))
    # when it is validated
    result = runner.invoke(app, ["validate", "--config", str(config)])
    # then it is valid, with its hash
    assert result.exit_code == 0, f"a valid file should exit 0, got {result.exit_code}: {result.output}"
    expected_hash = load_config(config).config_hash()
    assert f"{config}: valid" in result.stdout, f"expected a valid verdict, got {result.stdout!r}"
    assert expected_hash in result.stdout, f"expected the config hash {expected_hash}, got {result.stdout!r}"


def test_validate_names_the_field_of_an_invalid_pipeline_file(tmp_path: Path) -> None:
    # given a pipeline definition whose training epochs are not a number
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(deep_merge(shipped_config(), {"training": {"epochs": "many"}})))
    # when it is validated
    result = runner.invoke(app, ["validate", "--config", str(config)])
    # then it exits 2 and names the field path
    assert result.exit_code == USAGE, f"an invalid file should exit {USAGE}, got {result.exit_code}"
    assert result.stderr.startswith(f"error: {config}: 1 problem(s)"), f"unexpected error {result.stderr!r}"
    assert "training.epochs" in result.stderr, f"the field path should be named, got {result.stderr!r}"


def test_schema_prints_the_pipeline_json_schema() -> None:
    # given nothing but the CLI
    # when the schema is asked for
    result = runner.invoke(app, ["schema"])
    # then it is JSON describing the pipeline's top-level sections
    assert result.exit_code == 0, f"schema should exit 0, got {result.exit_code}"
    schema = json.loads(result.stdout)
    assert {"data", "training", "rollout"} <= set(schema["properties"]), f"sections missing: {schema.keys()}"


HELP = {
    (): [
        *("init", "up", "down", "status", "env", "validate", "schema", "run", "summary", "demo", "apply"),
        *("watch", "export", "labels", "report", "data", "rollout", "triggers"),
    ],
    ("rollout",): ["status", "set-weight", "run", "promote", "rollback", "pause", "resume"],
    ("triggers",): ["check"],
    ("data",): ["generate"],
}


@pytest.mark.parametrize(("group", "commands"), HELP.items(), ids=lambda v: " ".join(v) or "lockgate")
def test_help_lists_every_command_of_each_group(group: tuple[str, ...], commands: list[str]) -> None:
    # given the CLI
    # when a group's help is shown
    result = runner.invoke(app, [*group, "--help"], env={"COLUMNS": "160"})
    # then it lists each of the group's commands at the start of a line of the commands panel
    assert result.exit_code == 0, f"--help should exit 0, got {result.exit_code}"
    listed = {line.strip("│ ").split(" ")[0] for line in result.stdout.splitlines()}
    missing = [command for command in commands if command not in listed]
    assert not missing, f"{' '.join(group) or 'lockgate'} --help does not list {missing}:\n{result.stdout}"


def test_the_serving_file_is_found_next_to_the_pipeline_file_unless_overridden(tmp_path: Path) -> None:
    # given a pipeline file in another directory naming its serving file relatively
    config = tmp_path / "project" / "pipeline.yaml"
    config.parent.mkdir()
    config.write_text(
        yaml.safe_dump(deep_merge(shipped_config(), {"rollout": {"serving_file": "live.yaml"}}))
    )
    parsed = load_config(config)
    # when the serving file is resolved, without and with an override
    named = serving_path(config, parsed)
    overridden = serving_path(config, parsed, Path("elsewhere/serving.yaml"))
    # then the named one is relative to the pipeline file, and an override wins as given
    assert named == config.parent.resolve() / "live.yaml", (
        f"expected it beside the pipeline file, got {named}"
    )
    assert overridden == Path("elsewhere/serving.yaml"), f"the override should win, got {overridden}"


def test_rollout_status_of_a_fresh_state_dir_is_weight_zero_and_not_pinned(tmp_path: Path) -> None:
    # given the shipped serving file (no pinned weight) and a state directory nothing was started in
    serving = tmp_path / "serving.yaml"
    serving.write_text((ROOT / "serving.yaml").read_text())
    state = tmp_path / "state"
    # when the rollout status is asked for
    result = runner.invoke(app, ["rollout", "status", "--file", str(serving), "--state-dir", str(state)])
    # then no weight was decided yet and nothing pins it
    assert result.exit_code == 0, f"status should exit 0, got {result.exit_code}: {result.output}"
    model_name = yaml.safe_load(serving.read_text())["model_name"]
    expected = f"model {model_name}: rollout weight 0%; not pinned\n"
    assert result.stdout == expected, f"expected {expected!r}, got {result.stdout!r}"


def test_an_unexpected_traceback_never_prints_local_variables() -> None:
    from lockgate.cli import app

    # Typer's pretty tracebacks print every frame's locals by default: `up` holds the MLflow admin password.
    assert app.pretty_exceptions_show_locals is False, "tracebacks must not print locals (secrets)"


def test_demo_of_an_unknown_example_names_the_examples_and_starts_nothing(monkeypatch, tmp_path) -> None:
    # Given the checkout (its examples/), when a demo of an example that is not there is asked for,
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["demo", "--example", "nope", "--state-dir", str(tmp_path / "state")])
    # then it is a usage error naming the option and the shipped examples, and no environment was made.
    assert result.exit_code == 2, result.output
    assert "--example: no example 'nope'; examples: diabetes, wine" in result.output, result.output
    assert not (tmp_path / "state").exists(), "nothing was started"


def test_version_prints_the_installed_version() -> None:
    from lockgate.cli import installed_version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, f"--version should exit 0, got {result.exit_code}"
    assert result.stdout == f"lockgate {installed_version()}\n", f"got {result.stdout!r}"


def test_shell_completion_is_offered() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "160"})
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout, result.stdout


def test_init_writes_a_project_that_validates_outside_the_checkout(tmp_path: Path) -> None:
    # Given an empty directory outside the checkout, when a project is started there,
    project = tmp_path / "team-repo"
    result = runner.invoke(app, ["init", str(project), "--json"])
    # then it holds a pipeline file, a serving file, a trainer and data, and the pipeline file validates.
    assert result.exit_code == 0, f"init should exit 0, got {result.exit_code}: {result.output}"
    written = set(json.loads(result.stdout)["files"])
    expected = {
        "pipeline.yaml",
        "serving.yaml",
        "trainers/model.py",
        "trainers/__init__.py",
        "data/churn.csv",
    }
    assert expected <= written, f"missing {expected - written}"
    parsed = load_config(project / "pipeline.yaml")
    assert parsed.training.trainer == "trainers.model:train", (
        f"the stub should be the trainer: {parsed.training}"
    )
    header = (project / "data/churn.csv").read_text().splitlines()[0].split(",")
    assert set(header) == set(parsed.data_schema.columns), f"data columns {header} differ from the schema"
    validated = runner.invoke(app, ["validate", "-c", str(project / "pipeline.yaml"), "--json"])
    assert validated.exit_code == 0 and json.loads(validated.stdout)["valid"], validated.output


def test_init_does_not_overwrite_without_force(tmp_path: Path) -> None:
    (tmp_path / "pipeline.yaml").write_text("name: mine\n")
    result = runner.invoke(app, ["init", str(tmp_path)])
    assert result.exit_code == USAGE, f"expected a usage error, got {result.exit_code}"
    assert (tmp_path / "pipeline.yaml").read_text() == "name: mine\n", "the team's file must be left alone"


def test_the_starter_trainer_fits_its_data(tmp_path: Path) -> None:
    # Given the starter project, when its trainer is called on its own data as a Ray worker would,
    import importlib.util

    import pandas as pd

    from pipeline.trainer import TrainerInput

    runner.invoke(app, ["init", str(tmp_path)])
    parsed = load_config(tmp_path / "pipeline.yaml")
    frame = pd.read_csv(tmp_path / "data/churn.csv")
    label = parsed.data_schema.label
    features = tuple(c for c in frame.columns if c != label)
    spec = importlib.util.spec_from_file_location("starter_model", tmp_path / "trainers/model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = TrainerInput(
        train=frame,
        features=features,
        label=label,
        task=parsed.task,
        schema=parsed.data_schema,
        params=parsed.training.params,
        seed=0,
    )
    model = module.train(data)
    # then the model ranks better than chance on the rows it learned from.
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(frame[label], model.predict_proba(frame[list(features)])[:, 1])
    assert auc > 0.7, f"the starter model should learn the starter data, AUC {auc:.2f}"


def test_json_results_are_one_object_on_stdout(tmp_path: Path) -> None:
    serving = tmp_path / "serving.yaml"
    serving.write_text((ROOT / "serving.yaml").read_text())
    state = ["--state-dir", str(tmp_path / "state")]
    paused = runner.invoke(app, ["rollout", "pause", "--file", str(serving), *state, "--json"])
    status = runner.invoke(app, ["rollout", "status", "--file", str(serving), *state, "--json"])
    assert paused.exit_code == 0 and json.loads(paused.stdout)["paused"] is True, paused.output
    assert json.loads(status.stdout)["paused"] is True, f"status should show the pause: {status.stdout}"
    nothing = runner.invoke(app, ["status", *state, "--json"])
    assert nothing.exit_code == FAILURE, (
        f"nothing runs: status should exit {FAILURE}, got {nothing.exit_code}"
    )
    assert json.loads(nothing.stdout) == {}, f"nothing recorded: expected {{}}, got {nothing.stdout!r}"


def test_progress_is_plain_lines_when_stdout_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from lockgate.cli.common import working

    # Given stdout that is not a terminal (captured), when long work reports progress,
    with working("starting", as_json=False) as echo:
        echo("step one")
    with working("starting", as_json=True) as echo:
        echo("step two")
    captured = capsys.readouterr()
    # then it is plain text, on stdout for people and on stderr under --json: no spinner, no escape codes.
    assert captured.out == "step one\n", f"got {captured.out!r}"
    assert captured.err == "step two\n", f"got {captured.err!r}"


def test_a_promotion_or_rollback_on_a_stack_says_the_router_follows_the_alias(capsys) -> None:
    from lockgate.cli.serving import _show_stack_aliases

    # Given aliases just moved on a stack (its router follows the champion alias unless a version is pinned)
    aliases = {"champion": "3", "previous": "2"}
    # When the command reports it, then it says which version serves and when, and does not advise a pin:
    # a pin set by hand would hold back every later automated promotion.
    _show_stack_aliases("loans", aliases, as_json=False)
    line = capsys.readouterr().out
    assert "serves v3 at its next registry poll" in line and "pulumi config set" not in line, line
    _show_stack_aliases("loans", aliases, as_json=True)
    assert json.loads(capsys.readouterr().out) == {"model_name": "loans", "aliases": aliases, "served": None}
