"""What every command shares: its options, and one rule that turns a failure into a line and an exit code."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TextIO, TypeVar

import typer

from contracts.settings import EnvVar
from lockgate.kuberay import LaunchError, TemplateError
from lockgate.localenv import EnvironmentError_
from lockgate.runtime import MissingSettingError, RemoteUnsupportedError
from pipeline.config import ConfigError
from serving.deploy import DeployError
from serving.desired import ServingFileError
from serving.livestate import LiveStateError

FAILURE, USAGE = 1, 2
"""Exit codes: the command failed; its input (a file, an option) is wrong."""

StateDir = Annotated[
    Path | None, typer.Option("--state-dir", help="state directory [default: $LOCKGATE_HOME or ./.lockgate]")
]
MlflowPort = Annotated[int, typer.Option("--mlflow-port", help="MLflow tracking server port")]
RayPort = Annotated[int, typer.Option("--ray-port", help="Ray GCS port (Ray's other ports follow it)")]
DashboardPort = Annotated[int, typer.Option("--dashboard-port", help="Ray dashboard / Jobs API port")]
ConfigFile = Annotated[Path, typer.Option("--config", "-c", help="pipeline definition")]
ServingFileOption = Annotated[Path, typer.Option("--file", "-f", help="serving file")]
ServingFileOverride = Annotated[
    Path | None,
    typer.Option(
        "--serving-file",
        envvar=EnvVar.serving_file.value,
        help="what is served, instead of the pipeline file's rollout.serving_file (a cluster: the stack's)",
    ),
]
DataOption = Annotated[
    str | None, typer.Option(help="what a triggered run trains on (path or URI) instead of data.uri")
]
PIPELINE_FILE, SERVING_FILE = Path("pipeline.yaml"), Path("serving.yaml")
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="print the result as one JSON object on stdout (progress goes to stderr)"),
]


_RESULT_STREAM: ContextVar[TextIO | None] = ContextVar("result_stream", default=None)
"""Under ``--json``: the command's real stdout, kept for its result while everything else goes to stderr."""


def show(result: Mapping[str, Any], human: str, as_json: bool) -> None:
    """A command's result: one JSON object with ``--json``, else the line(s) a person reads."""
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str), file=_RESULT_STREAM.get() or sys.stdout)
    else:
        typer.echo(human)


def show_json_line(result: Mapping[str, Any]) -> None:
    """One of a command's many results (``watch``'s checks) as a JSON line on stdout, under ``--json`` too."""
    typer.echo(json.dumps(result, default=str), file=_RESULT_STREAM.get() or sys.stdout)


@contextmanager
def _result_only_on_stdout(as_json: bool) -> Iterator[None]:
    """Under ``--json`` stdout carries the result alone: what libraries print (MLflow's run links) goes to stderr."""
    if not as_json:
        yield
        return
    token = _RESULT_STREAM.set(sys.stdout)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        _RESULT_STREAM.reset(token)


def stdout_is_tty() -> bool:
    """Whether a person watches stdout (progress lines and spinners are for them, not for pipes and logs)."""
    return sys.stdout.isatty()


def progress_echo(as_json: bool) -> Callable[[str], None]:
    """Where a command's progress lines go: stderr under ``--json`` (stdout carries the result only)."""
    return lambda line: typer.echo(line, err=as_json)


@contextmanager
def working(message: str, as_json: bool) -> Iterator[Callable[[str], None]]:
    """Long work (``up``, ``run``): on a terminal a Rich spinner saying ``message``, progress lines above it.

    Elsewhere (a pipe, CI, ``--json``) no spinner: the progress lines only, as plain text. Yields the function
    that prints a progress line.
    """
    if as_json or not stdout_is_tty():
        yield progress_echo(as_json)
        return
    from rich.console import Console  # only on a terminal: the CLI's start-up stays light

    console = Console()
    with console.status(message, spinner="dots"):
        yield lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True)


ErrorType = type[BaseException] | str
"""An exception class, or ``"module:Class"`` for one in a module too heavy to import at start-up."""

# LiveStateError: the live rollout state store unreadable, a write lost, or a rollout already running.
SERVING_ERRORS: tuple[ErrorType, ...] = (ServingFileError, DeployError, EnvironmentError_, LiveStateError)
STANDARD_CODES: Mapping[ErrorType, int] = {
    ConfigError: USAGE,
    MissingSettingError: USAGE,
    RemoteUnsupportedError: USAGE,
    TemplateError: USAGE,
    **dict.fromkeys(SERVING_ERRORS, FAILURE),
    LaunchError: FAILURE,
}
"""What every command's failures mean, unless the command says otherwise."""

BACKEND_CAUSES: Mapping[ErrorType, int] = {
    "mlflow.exceptions:MlflowException": FAILURE,
    "ray.exceptions:RayError": FAILURE,
    OSError: FAILURE,  # among them a refused connection and an unreadable file
}
"""Failures of MLflow, Ray or the file system, for commands that call them directly: shown with their type."""


class CommandError(Exception):
    """A failure a command reports itself: one ``error:`` line and the exit code it carries."""

    def __init__(self, message: str, code: int = FAILURE):
        super().__init__(message)
        self.code = code


def resolve(error_types: Mapping[ErrorType, int]) -> dict[type[BaseException], int]:
    """The classes behind the names; a module not imported yet is skipped, since none of its errors was raised."""
    resolved: dict[type[BaseException], int] = {}
    for error_type, code in error_types.items():
        if isinstance(error_type, str):
            module_name, _, class_name = error_type.partition(":")
            module = sys.modules.get(module_name)
            found = getattr(module, class_name, None) if module is not None else None
            if not isinstance(found, type):
                continue
            error_type = found
        resolved[error_type] = code
    return resolved


def _most_specific(error: BaseException, codes: Mapping[type[BaseException], int]) -> int | None:
    """The code of the nearest class of ``error`` that ``codes`` names (a subclass beats its base)."""
    return next((codes[cls] for cls in type(error).__mro__ if cls in codes), None)


def _cause(error: BaseException) -> BaseException:
    """The original exception behind a wrapper that carries it as ``cause`` (Ray's task errors do)."""
    cause = getattr(error, "cause", None)
    return _cause(cause) if isinstance(cause, BaseException) and cause is not error else error


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


P = ParamSpec("P")
R = TypeVar("R")


def exits_on_error(
    codes: Mapping[ErrorType, int] | None = None, *, causes: Mapping[ErrorType, int] | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Map a command's exceptions to ``error: <message>`` on stderr and an exit code.

    ``codes`` adds to or overrides :data:`STANDARD_CODES` (their messages are written to be shown as they
    are); ``causes`` names library errors, shown as ``<Type>: <first line>`` of the original exception.
    Anything else propagates unchanged.
    """

    def decorate(command: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(command)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                with _result_only_on_stdout(bool(kwargs.get("as_json"))):
                    return command(*args, **kwargs)
            except CommandError as error:
                raise _fail(str(error), error.code) from None
            except Exception as error:
                code = _most_specific(error, resolve({**STANDARD_CODES, **(codes or {})}))
                if code is not None:
                    raise _fail(str(error), code) from None
                code = _most_specific(error, resolve(causes or {}))
                if code is None:
                    raise
                cause = _cause(error)
                raise _fail(f"{type(cause).__name__}: {_first_line(str(cause))}", code) from None

        return run

    return decorate


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)
