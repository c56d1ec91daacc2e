"""The local environment's commands: up, down, status, env."""

from __future__ import annotations

from typing import Annotated

import typer

from contracts.settings import EnvVar
from lockgate.cli.common import (
    BACKEND_CAUSES,
    FAILURE,
    DashboardPort,
    JsonOption,
    MlflowPort,
    RayPort,
    StateDir,
    exits_on_error,
    progress_echo,
    show,
    working,
)
from lockgate.localenv import (
    CREDENTIALS_FILE,
    DEFAULT_SERVE_INGRESS,
    LocalEnvironment,
    Ports,
    default_state_dir,
)
from lockgate.runtime import DEFAULT_PORTS, local_environment

commands = typer.Typer()


@commands.command()
@exits_on_error(causes=BACKEND_CAUSES)
def up(
    state_dir: StateDir = None,
    mlflow_port: MlflowPort = DEFAULT_PORTS.mlflow,
    ray_port: RayPort = DEFAULT_PORTS.ray_gcs,
    dashboard_port: DashboardPort = DEFAULT_PORTS.ray_dashboard,
    num_cpus: Annotated[
        int | None, typer.Option(help="logical CPUs Ray schedules with [default: 2x cores, at least 4]")
    ] = None,
    serve_ingress: Annotated[
        str,
        typer.Option(
            help="Ray Serve ingress: 'haproxy' (HAProxy + throughput-optimised replicas, ~5x the throughput) or "
            "'proxy' (Serve's Python proxy); every listener is on 127.0.0.1 in both"
        ),
    ] = DEFAULT_SERVE_INGRESS,
    as_json: JsonOption = False,
) -> None:
    """Start (or reuse) the local Ray head and MLflow server on 127.0.0.1."""
    env = LocalEnvironment(
        state_dir or default_state_dir(),
        Ports.from_base(mlflow_port, ray_port, dashboard_port),
        num_cpus,
        serve_ingress,
    )
    with working("starting MLflow and Ray", as_json) as echo:
        state, reused = env.up(log=echo)
    result = {
        "reused": reused,
        "mlflow": {"url": state.mlflow.url, "pid": state.mlflow.pid},
        "ray": {"url": state.ray.url, "pid": state.ray.pid, "gcs_address": state.ray_gcs_address},
        "state_dir": str(env.state_dir),
    }
    human = (
        f"{'reused' if reused else 'started'}: MLflow {state.mlflow.url} (pid {state.mlflow.pid}), "
        f"Ray dashboard {state.ray.url} (pid {state.ray.pid}); state in {env.state_dir}"
    )
    show(result, human, as_json)


@commands.command()
@exits_on_error()
def down(state_dir: StateDir = None, as_json: JsonOption = False) -> None:
    """Stop exactly the processes `up` recorded (data, credentials and logs are kept)."""
    env = local_environment(state_dir)
    stopped = env.down(log=progress_echo(as_json))
    if as_json:
        show({"stopped": stopped, "state_dir": str(env.state_dir)}, "", as_json)


@commands.command()
@exits_on_error()
def status(
    state_dir: StateDir = None,
    as_json: JsonOption = False,
) -> None:
    """Report each service's PID and health; exit 1 when anything is down."""
    env = local_environment(state_dir)
    report = env.health()
    lines = [f"no environment recorded in {env.state_dir}: run `lockgate up`"] if not report else []
    for name, service in report.items():
        state = (
            "healthy"
            if service["alive"] and service["healthy"]
            else ("unhealthy (process alive)" if service["alive"] else "down")
        )
        lines.append(f"{name:<7} {state:<26} pid={service['pid']:<8} {service['url']}")
    show(report, "\n".join(lines), as_json)
    if not report or not all(s["alive"] and s["healthy"] for s in report.values()):
        raise typer.Exit(FAILURE)


@commands.command("env")
@exits_on_error()
def env_command(state_dir: StateDir = None, as_json: JsonOption = False) -> None:
    """Print shell exports that point `ray job submit` and MLflow clients at the environment (no secrets)."""
    env = local_environment(state_dir)
    variables = {
        **env.client_env(include_secrets=False),
        EnvVar.mlflow_username.value: env.credentials()["mlflow_username"],
    }
    password_file = env.state_dir / CREDENTIALS_FILE
    human = "\n".join(
        [*(f"export {key}={value}" for key, value in variables.items())]
        + [f"# MLflow password: {password_file} (mlflow_password)"]
    )
    show({"variables": variables, "mlflow_password_file": str(password_file)}, human, as_json)
