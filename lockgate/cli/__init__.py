"""The ``lockgate`` command: the local environment, pipeline files, runs and the end-to-end demo."""

from __future__ import annotations

import sys

import typer

from lockgate.cli import demo, env, observe, pipeline, serving

# A traceback never prints local variables: they include credentials (the MLflow admin password in `up`).
app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False
)
# Top-level commands first, in the order `--help` lists them, then the command groups.
for group_commands in (env.commands, pipeline.commands, demo.commands, serving.commands, observe.commands):
    app.add_typer(group_commands)
app.add_typer(pipeline.data_app, name="data")
app.add_typer(serving.rollout_app, name="rollout")
app.add_typer(observe.triggers_app, name="triggers")


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
