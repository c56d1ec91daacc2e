"""The ``lockgate`` command: the local environment, pipeline files, runs and the end-to-end demo."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from lockgate.cli import demo, env, observe, pipeline, project, serving

# A traceback never prints local variables: they include credentials (the MLflow admin password in `up`).
# Shell completion: `lockgate --install-completion` (bash, zsh, fish, PowerShell) or `--show-completion`.
app = typer.Typer(no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False)
# Top-level commands first, in the order `--help` lists them, then the command groups.
for group_commands in (
    project.commands,
    env.commands,
    pipeline.commands,
    demo.commands,
    serving.commands,
    observe.commands,
):
    app.add_typer(group_commands)
app.add_typer(pipeline.data_app, name="data")
app.add_typer(serving.rollout_app, name="rollout")
app.add_typer(observe.triggers_app, name="triggers")


def installed_version() -> str:
    """The installed distribution's version (a checkout run without installing says so)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lockgate")
    except PackageNotFoundError:
        return "unknown (not installed: run from a checkout)"


def _print_version(requested: bool) -> None:
    if requested:
        typer.echo(f"lockgate {installed_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit"),
    ] = False,
) -> None:
    """The MLOps pipeline as code: a local Ray + MLflow environment, pipeline runs, gates, rollouts."""


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
