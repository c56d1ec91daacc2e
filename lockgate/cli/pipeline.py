"""Pipeline files and runs: validate, schema, run, summary, and the data sets they train on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lockgate.cli.common import (
    BACKEND_CAUSES,
    PIPELINE_FILE,
    USAGE,
    ConfigFile,
    JsonOption,
    StateDir,
    exits_on_error,
    show,
    working,
)
from lockgate.runtime import backend, local_environment
from pipeline.config import json_schema, load_config

commands = typer.Typer()
data_app = typer.Typer(
    no_args_is_help=True, help="Make the shipped data set, a shifted batch or a bad batch."
)


@commands.command()
@exits_on_error()
def validate(config: ConfigFile = PIPELINE_FILE, as_json: JsonOption = False) -> None:
    """Validate a pipeline file; print every problem with its field path."""
    parsed = load_config(config)
    result = {
        "file": str(config),
        "valid": True,
        "pipeline": parsed.name,
        "model_name": parsed.registry.model_name,
        "config_hash": parsed.config_hash(),
    }
    show(
        result,
        f"{config}: valid (pipeline '{parsed.name}', model '{parsed.registry.model_name}', "
        f"config hash {parsed.config_hash()})",
        as_json,
    )


@commands.command()
@exits_on_error()
def schema() -> None:
    """Print the pipeline definition's JSON schema (JSON already: no --json needed)."""
    typer.echo(json.dumps(json_schema(), indent=2))


@commands.command()
@exits_on_error(causes=BACKEND_CAUSES)
def run(
    config: ConfigFile = PIPELINE_FILE,
    state_dir: StateDir = None,
    data: Annotated[str | None, typer.Option(help="a new batch (path or URI) instead of data.uri")] = None,
    as_json: JsonOption = False,
) -> None:
    """Submit one pipeline run as a Ray job, stream its logs, exit non-zero unless a version was registered."""
    from dataclasses import asdict

    from lockgate.jobs import submit_pipeline

    with working(f"pipeline run of {config}", as_json) as echo:
        outcome = submit_pipeline(local_environment(state_dir), config, stream=echo, data=data)
    show(
        asdict(outcome),
        f"job {outcome.submission_id}: {outcome.status}, outcome {outcome.outcome}, MLflow run {outcome.run_id}",
        as_json,
    )
    raise typer.Exit(outcome.exit_code)


@commands.command()
@exits_on_error(causes=BACKEND_CAUSES)
def summary(
    config: ConfigFile = PIPELINE_FILE, state_dir: StateDir = None, as_json: JsonOption = False
) -> None:
    """Show the registered versions of the pipeline's model: aliases, gates, lineage.

    With no local environment up, the MLflow that MLFLOW_TRACKING_URI (and _USERNAME, _PASSWORD) names.
    """
    from dataclasses import asdict

    from lockgate.summary import format_summary, registry_summary

    parsed = load_config(config)
    name = parsed.registry.model_name
    with backend(state_dir):
        versions = registry_summary(name)
    show(
        {"model_name": name, "versions": [asdict(v) for v in versions]},
        format_summary(name, versions),
        as_json,
    )


@data_app.command("generate")
@exits_on_error({ValueError: USAGE})
def data_generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="target file (.parquet or .csv)")],
    rows: Annotated[int, typer.Option(help="number of rows")] = 20_000,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    shift: Annotated[float, typer.Option(help="population shift in [0, 1] (drift)")] = 0.0,
    bad_fraction: Annotated[float, typer.Option(help="share of corrupted rows in [0, 1]")] = 0.0,
    risk_shift: Annotated[float, typer.Option(help="added log-odds of default (concept drift)")] = 0.0,
    as_json: JsonOption = False,
) -> None:
    """Write a loan-default batch: the shipped set, a shifted batch, or a bad batch."""
    from pipeline.data import make_loans, write_table

    path = write_table(make_loans(rows, seed, shift, bad_fraction, risk_shift), out)
    show({"path": str(path), "rows": rows}, f"wrote {rows} rows to {path}", as_json)
