"""Pipeline files and runs: validate, schema, run, summary, and the data sets they train on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lockgate.cli.common import PIPELINE_FILE, USAGE, ConfigFile, StateDir, exits_on_error
from lockgate.runtime import connected, local_environment
from pipeline.config import json_schema, load_config

commands = typer.Typer()
data_app = typer.Typer(
    no_args_is_help=True, help="Make the shipped data set, a shifted batch or a bad batch."
)


@commands.command()
@exits_on_error()
def validate(config: ConfigFile = PIPELINE_FILE) -> None:
    """Validate a pipeline file; print every problem with its field path."""
    parsed = load_config(config)
    typer.echo(
        f"{config}: valid (pipeline '{parsed.name}', model '{parsed.registry.model_name}', "
        f"config hash {parsed.config_hash()})"
    )


@commands.command()
@exits_on_error()
def schema() -> None:
    """Print the pipeline definition's JSON schema."""
    typer.echo(json.dumps(json_schema(), indent=2))


@commands.command()
@exits_on_error()
def run(
    config: ConfigFile = PIPELINE_FILE,
    state_dir: StateDir = None,
    data: Annotated[str | None, typer.Option(help="a new batch (path or URI) instead of data.uri")] = None,
) -> None:
    """Submit one pipeline run as a Ray job, stream its logs, exit non-zero unless a version was registered."""
    from lockgate.jobs import submit_pipeline

    outcome = submit_pipeline(local_environment(state_dir), config, stream=typer.echo, data=data)
    typer.echo(
        f"job {outcome.submission_id}: {outcome.status}, outcome {outcome.outcome}, MLflow run {outcome.run_id}"
    )
    raise typer.Exit(outcome.exit_code)


@commands.command()
@exits_on_error()
def summary(config: ConfigFile = PIPELINE_FILE, state_dir: StateDir = None) -> None:
    """Show the registered versions of the pipeline's model: aliases, gates, lineage."""
    from lockgate.summary import format_summary, registry_summary

    parsed = load_config(config)
    with connected(local_environment(state_dir)):
        typer.echo(format_summary(parsed.registry.model_name, registry_summary(parsed.registry.model_name)))


@data_app.command("generate")
@exits_on_error({ValueError: USAGE})
def data_generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="target file (.parquet or .csv)")],
    rows: Annotated[int, typer.Option(help="number of rows")] = 20_000,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    shift: Annotated[float, typer.Option(help="population shift in [0, 1] (drift)")] = 0.0,
    bad_fraction: Annotated[float, typer.Option(help="share of corrupted rows in [0, 1]")] = 0.0,
    risk_shift: Annotated[float, typer.Option(help="added log-odds of default (concept drift)")] = 0.0,
) -> None:
    """Write a loan-default batch: the shipped set, a shifted batch, or a bad batch."""
    from pipeline.data import make_loans, write_table

    path = write_table(make_loans(rows, seed, shift, bad_fraction, risk_shift), out)
    typer.echo(f"wrote {rows} rows to {path}")
