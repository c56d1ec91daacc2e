"""The local environment for each phase: its Ray Serve levers and pinned ports, up and down."""

from __future__ import annotations

import os
from pathlib import Path

from lockgate.localenv import LocalEnvironment, Ports, stop_pid

from .processes import SESSIONS, progress
from .settings import (
    LEVER_NAMES,
    MLFLOW_PORT,
    NUM_CPUS,
    PHASE_INGRESS,
    PHASES,
    RAY_DASHBOARD_PORT,
    RAY_GCS_PORT,
    SERVE_PORT_PINS,
)


def make_env(state_dir: Path) -> LocalEnvironment:
    ports = Ports.from_base(mlflow=MLFLOW_PORT, ray_gcs=RAY_GCS_PORT, ray_dashboard=RAY_DASHBOARD_PORT)
    return LocalEnvironment(state_dir, ports, num_cpus=NUM_CPUS)


def for_phase(env: LocalEnvironment, phase: str) -> LocalEnvironment:
    """The environment set to the phase's ingress (read when it comes up)."""
    env.serve_ingress = PHASE_INGRESS[phase]
    return env


def env_up(env: LocalEnvironment) -> None:
    env.up(log=lambda line: progress(f"  [env] {line}"))
    state = env.read_state()
    if state is not None:
        SESSIONS.extra |= {state.ray.pid, state.mlflow.pid}


def env_down(env: LocalEnvironment, scratch: Path) -> None:
    try:
        env.down(log=lambda line: progress(f"  [env] {line}"))
    finally:
        stop_leftover_haproxy(haproxy_dir(scratch))
        stop_leftover_haproxy(env.haproxy_dir)


def haproxy_dir(scratch: Path) -> Path:
    """This run's own HAProxy files (config, sockets, state), under its scratch directory."""
    return scratch / "haproxy"


def stop_leftover_haproxy(directory: Path) -> None:
    """HAProxy processes started for this run (identified by this run's own config path), stopped by PID."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(directory) in cmdline and "haproxy" in cmdline:
            progress(f"  stopping leftover HAProxy pid {entry.name}")
            stop_pid(int(entry.name), Path(cmdline.split("\0")[0]), timeout_s=6)


def phase_environ(phase: str, scratch: Path) -> dict[str, str]:
    """Env vars for the Ray head of a phase: its levers, plus this run's own ports and HAProxy files."""
    haproxy = haproxy_dir(scratch)
    haproxy.mkdir(parents=True, exist_ok=True)
    return {
        **SERVE_PORT_PINS,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(haproxy / "metrics.sock"),
        **PHASES[phase],
    }


class Environ:
    """Set env vars in this process (LocalEnvironment passes os.environ to the Ray head), restore on exit."""

    def __init__(self, values: dict[str, str]):
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> Environ:
        for key in (*self.values, *LEVER_NAMES):
            self.saved[key] = os.environ.get(key)
            os.environ.pop(key, None)
        os.environ.update(self.values)
        return self

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
