"""The embedded local environment: a Ray head and an MLflow server on 127.0.0.1, with auth, owned by PID.

Everything lives in one state directory: ``state.json`` (PIDs, ports, URLs), generated credentials
(0600), the MLflow database and artefacts, logs, and Ray Train's storage. ``up`` is idempotent,
``down`` stops exactly the PIDs it recorded, and a failed ``up`` stops whatever it had started.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import requests

from contracts.settings import EnvVar, ServingTarget, rollout_state_dir
from lockgate.loopback.sitecustomize import LOOPBACK_ONLY_ENV
from serving.spec import SERVE_INGRESS_ENV

HOST = "127.0.0.1"
STATE_FILE = "state.json"
CREDENTIALS_FILE = "credentials.json"
LABELS_TOKEN_FILE = "labels.token"
RAY_TOKEN_FILE = "ray_token"
MLFLOW_AUTH_FILE = "mlflow_auth.ini"
MLFLOW_ADMIN = "lockgate-admin"

SERVE_INGRESSES = tuple(SERVE_INGRESS_ENV)
# HAProxy in front of throughput-optimised replicas: about 5x the throughput of Serve's Python proxy here
# (benchmarks/bench_serving.py), every listener on 127.0.0.1 (LocalEnvironment.loopback_env).
DEFAULT_SERVE_INGRESS = "haproxy"
# Every Python process of the Ray head imports the sitecustomize here (lockgate/loopback/sitecustomize.py).
LOOPBACK_DIR = Path(__file__).resolve().parent / "loopback"


class EnvironmentError_(Exception):
    """The local environment could not be started, reached or stopped; the message says what to do."""


@dataclass(frozen=True)
class Ports:
    """Every port the environment listens on (all on 127.0.0.1)."""

    mlflow: int = 5055
    ray_gcs: int = 6390
    ray_dashboard: int = 8275
    ray_client: int = 6391
    ray_agent: int = 6392
    ray_metrics: int = 6393

    @property
    def worker_range(self) -> tuple[int, int]:
        """Ray worker ports: a range of this environment's own, so two environments never collide."""
        return self.ray_gcs + 10, self.ray_gcs + 409

    @classmethod
    def from_base(cls, mlflow: int, ray_gcs: int, ray_dashboard: int) -> Ports:
        """The three user-facing ports; Ray's auxiliary ports are derived from the GCS port."""
        return cls(
            mlflow=mlflow,
            ray_gcs=ray_gcs,
            ray_dashboard=ray_dashboard,
            ray_client=ray_gcs + 1,
            ray_agent=ray_gcs + 2,
            ray_metrics=ray_gcs + 3,
        )


@dataclass(frozen=True)
class ServiceState:
    """One running service as recorded in state.json."""

    pid: int
    url: str
    log: str


@dataclass(frozen=True)
class EnvState:
    """What ``up`` recorded."""

    ports: Ports
    mlflow: ServiceState
    ray: ServiceState
    ray_gcs_address: str
    started_at: float

    def to_json(self) -> str:
        """Serialise for state.json."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EnvState:
        """Read state.json."""
        raw = json.loads(text)
        return cls(
            ports=Ports(**raw["ports"]),
            mlflow=ServiceState(**raw["mlflow"]),
            ray=ServiceState(**raw["ray"]),
            ray_gcs_address=raw["ray_gcs_address"],
            started_at=raw["started_at"],
        )


def default_state_dir() -> Path:
    """``$LOCKGATE_HOME`` or ``.lockgate`` in the current directory."""
    return Path(os.environ.get(EnvVar.home.value) or ".lockgate").resolve()


def _write_private(path: Path, text: str) -> None:
    """Create or replace a file readable by its owner only (0600 from the first byte)."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def make_private_dir(path: Path) -> None:
    """Create the state directory (or tighten an existing one) readable by its owner only: 0700.

    It holds the MLflow database, the auth database's password hashes, credentials and captured traffic.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(content[-lines:]) or "(log is empty)"


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def pid_alive(pid: int) -> bool:
    """True when the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _pid_matches(pid: int, executable: Path) -> bool:
    """Guard against a recycled PID: the recorded process must still be the one we started.

    It is ours when one of its first two arguments *is* the executable we started (``…/bin/ray``; a
    console script runs as ``python …/bin/ray``), compared as whole arguments, never as a substring: an
    unrelated ``array-job`` or ``grayscale`` process does not match ``ray``.
    """
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2]
    except OSError:
        return False
    return os.fsencode(str(executable)) in arguments


def stop_pid(pid: int, executable: Path, timeout_s: float = 30.0) -> None:
    """Stop a process we started: SIGTERM to it, then to what is left of its group, then SIGKILL.

    The leader goes first and alone: `ray start --block` drains its children itself on SIGTERM, and a
    group-wide signal would kill them under it and leave it waiting out its own timeout. A recorded PID that
    now belongs to another program is left alone, and so is its group: the kernel reuses a PID only once
    no process is left in the group that carried it, so none of ours can be in that group.
    """
    if pid_alive(pid):
        if not _pid_matches(pid, executable):
            return
        os.kill(pid, signal.SIGTERM)
        _wait_gone(lambda: pid_alive(pid), pid, timeout_s * 2 / 3)
    for sig, wait_s in ((signal.SIGTERM, timeout_s / 3), (signal.SIGKILL, 5.0)):
        if not _group_alive(pid):
            break
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        _wait_gone(lambda: _group_alive(pid), pid, wait_s)
    _reap(pid)


def _wait_gone(alive: Callable[[], bool], pid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while alive() and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().split(")")[-1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@dataclass
class _Starting:
    """A service just spawned by ``up``: what to call it, how to tell it answers, and until when to wait."""

    name: str
    program: str
    process: subprocess.Popen
    url: str
    log_path: Path
    probe: Callable[[], bool]
    timeout_s: float
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout_s


class LocalEnvironment:
    """Start, inspect and stop the local Ray + MLflow environment rooted at one state directory."""

    def __init__(
        self,
        state_dir: Path | None = None,
        ports: Ports | None = None,
        num_cpus: int | None = None,
        serve_ingress: str = DEFAULT_SERVE_INGRESS,
        live_state_uri: str | None = None,
    ):
        if serve_ingress not in SERVE_INGRESSES:
            raise EnvironmentError_(f"serve_ingress: {serve_ingress!r} is not one of {list(SERVE_INGRESSES)}")
        self.serve_ingress = serve_ingress
        self.state_dir = (state_dir or default_state_dir()).resolve()
        # The live rollout state store the router follows: the state directory's unless given (a rehearsal of
        # a cluster's object store, s3://…, passes its own; its credentials come from this process's env).
        self.live_state_uri = live_state_uri or str(rollout_state_dir(self.state_dir))
        self.ports = ports or Ports()
        # Logical CPUs are Ray's scheduling units, not cores: twice the cores leaves room for Serve replicas
        # beside a training run that reserves one CPU per worker.
        self.num_cpus = num_cpus or max(4, 2 * (os.cpu_count() or 2))
        self.bin_dir = Path(sys.executable).parent

    # -- paths and secrets -------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        """state.json."""
        return self.state_dir / STATE_FILE

    @property
    def ray_token_path(self) -> Path:
        """Ray's auth token file (0600)."""
        return self.state_dir / RAY_TOKEN_FILE

    @property
    def labels_token_path(self) -> Path:
        """The bearer token the router asks of whoever posts late labels (0600)."""
        return self.state_dir / LABELS_TOKEN_FILE

    def labels_auth_header(self) -> dict[str, str]:
        """The header a client posting to ``<route>/labels`` sends."""
        return {"Authorization": f"Bearer {self.labels_token_path.read_text().strip()}"}

    @property
    def ray_temp_dir(self) -> Path:
        """A short per-environment Ray temp dir (unix socket paths are limited to 107 bytes)."""
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:10]
        return Path("/tmp") / f"lockgate-ray-{digest}"

    @property
    def haproxy_dir(self) -> Path:
        """HAProxy's files (config, admin and metrics sockets, state), one directory per environment.

        Short: Ray adds a 56-character node-id directory, and HAProxy takes socket paths of 97 bytes at most.
        """
        return Path("/tmp") / f"lgh-{self.ray_temp_dir.name.rsplit('-', 1)[-1]}"

    def credentials(self) -> dict[str, str]:
        """Generated once per state directory and kept 0600."""
        path = self.state_dir / CREDENTIALS_FILE
        if path.exists():
            return json.loads(path.read_text())
        creds = {
            "mlflow_username": MLFLOW_ADMIN,
            "mlflow_password": secrets.token_urlsafe(24),
            "mlflow_flask_secret": secrets.token_hex(32),
        }
        make_private_dir(self.state_dir)
        _write_private(path, json.dumps(creds, indent=2))
        return creds

    def _ensure_ray_token(self) -> None:
        if not self.ray_token_path.exists():
            _write_private(self.ray_token_path, secrets.token_hex(32))
        if not self.labels_token_path.exists():
            _write_private(self.labels_token_path, secrets.token_hex(32))

    def _write_mlflow_auth_config(self, creds: dict[str, str]) -> Path:
        settings = {
            "default_permission": "NO_PERMISSIONS",
            "database_uri": f"sqlite:///{self.state_dir / 'mlflow' / 'auth.db'}",
            "admin_username": creds["mlflow_username"],
            "admin_password": creds["mlflow_password"],
            "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
            "auth_cache_ttl_seconds": "60",
        }
        path = self.state_dir / MLFLOW_AUTH_FILE
        text_lines = ["[mlflow]"] + [f"{key} = {value}" for key, value in settings.items()]
        _write_private(path, "\n".join(text_lines) + "\n")
        return path

    # -- what clients need -----------------------------------------------------------------------
    @property
    def mlflow_url(self) -> str:
        """The tracking server's URL."""
        return f"http://{HOST}:{self.ports.mlflow}"

    @property
    def metrics_url(self) -> str:
        """Ray's Prometheus endpoint on the head node (Serve and custom metrics)."""
        return f"http://{HOST}:{self.ports.ray_metrics}/metrics"

    @property
    def dashboard_url(self) -> str:
        """The Ray dashboard / Jobs API URL."""
        return f"http://{HOST}:{self.ports.ray_dashboard}"

    @property
    def capture_dir(self) -> Path:
        """The local artefact store's capture location (requests and labels in Parquet batches)."""
        return self.state_dir / "capture"

    def ingress_env(self) -> dict[str, str]:
        """Ray Serve's ingress levers for the head (read once, when Serve starts).

        ``haproxy`` (the default): HAProxy in front of throughput-optimised replicas (benchmarks/bench_serving.py:
        about 5x the Python proxy's throughput here). Its extra listeners are pinned to this environment's own
        ports and its files to its own directory (Ray's defaults, 8404, 9101, 8500, 30000+ and
        /tmp/haproxy-serve, are machine-wide); ``loopback_env`` keeps every listener on 127.0.0.1.
        """
        if self.serve_ingress != "haproxy":
            return {}
        base = self.ports.ray_gcs
        files = self.haproxy_dir
        return {
            **SERVE_INGRESS_ENV["haproxy"],
            "RAY_SERVE_HAPROXY_STATS_PORT": str(base + 4),
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(base + 5),
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(base + 6),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(base + 7),
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(base + 410),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(base + 429),
            "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(base + 430),
            "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(base + 449),
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(files / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(files / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(files),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(files / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(files / "metrics.sock"),
        }

    def loopback_env(self, inherited_pythonpath: str | None) -> dict[str, str]:
        """What keeps the listeners Ray binds on every interface, with no setting of its own, on 127.0.0.1.

        Every Python process of the head imports lockgate/loopback/sitecustomize.py, which says which
        listeners those are (replicas' inter-deployment gRPC in every mode, HAProxy's stats and metrics).
        """
        return {
            LOOPBACK_ONLY_ENV: "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(LOOPBACK_DIR), inherited_pythonpath])),
        }

    def client_env(self, include_secrets: bool = True) -> dict[str, str]:
        """Environment for a process that talks to this environment (the CLI, tests, a Ray job driver)."""
        env = {
            EnvVar.ray_address.value: self.dashboard_url,
            EnvVar.ray_auth_mode.value: "token",
            EnvVar.ray_auth_token_path.value: str(self.ray_token_path),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            EnvVar.mlflow_tracking_uri.value: self.mlflow_url,
            # Where the router writes captured requests and labels (serving/capture.py) in this environment.
            EnvVar.capture_uri.value: str(self.capture_dir),
        }
        if include_secrets:
            creds = self.credentials()
            env[EnvVar.mlflow_username.value] = creds["mlflow_username"]
            env[EnvVar.mlflow_password.value] = creds["mlflow_password"]
        return env

    def serving_target(self) -> ServingTarget:
        """Where this environment serves: what the pipeline's rollout stage reads from the Ray head's env."""
        return ServingTarget(self.dashboard_url, self.metrics_url, self.state_dir, self.ray_token_path)

    def ray_auth_header(self) -> dict[str, str]:
        """Bearer header for raw HTTP calls to the dashboard."""
        return {"Authorization": f"Bearer {self.ray_token_path.read_text().strip()}"}

    # -- state ------------------------------------------------------------------------------------
    def read_state(self) -> EnvState | None:
        """The recorded state, or None when nothing was started here."""
        if not self.state_path.exists():
            return None
        return EnvState.from_json(self.state_path.read_text())

    def health(self, state: EnvState | None = None) -> dict[str, dict[str, object]]:
        """Per service: recorded PID alive, and its health endpoint answering."""
        state = state or self.read_state()
        if state is None:
            return {}
        report: dict[str, dict[str, object]] = {}
        mlflow_ok = _http_ok(f"{state.mlflow.url}/health")
        report["mlflow"] = {
            "pid": state.mlflow.pid,
            "alive": pid_alive(state.mlflow.pid),
            "healthy": mlflow_ok,
            "url": state.mlflow.url,
        }
        ray_ok = _http_ok(f"{state.ray.url}/api/gcs_healthz", headers=self._auth_header_or_empty())
        report["ray"] = {
            "pid": state.ray.pid,
            "alive": pid_alive(state.ray.pid),
            "healthy": ray_ok,
            "url": state.ray.url,
            "gcs_address": state.ray_gcs_address,
        }
        return report

    def _auth_header_or_empty(self) -> dict[str, str]:
        return self.ray_auth_header() if self.ray_token_path.exists() else {}

    def is_healthy(self, attempts: int = 3) -> bool:
        """Both services alive and answering.

        A service whose process is alive but slow to answer (a busy 2-core machine: training, a benchmark)
        is asked again, up to ``attempts`` times a second apart, before the environment is called unhealthy.
        """
        for attempt in range(attempts):
            report = self.health()
            if report and all(s["alive"] and s["healthy"] for s in report.values()):
                return True
            if not report or not all(s["alive"] for s in report.values()) or attempt == attempts - 1:
                return False
            time.sleep(1.0)
        return False

    # -- lifecycle --------------------------------------------------------------------------------
    def up(self, log: Callable[[str], None] = print) -> tuple[EnvState, bool]:
        """Start both services, or reuse a healthy environment; returns (state, reused)."""
        existing = self.read_state()
        if existing is not None:
            if self.is_healthy():
                self.ports = existing.ports
                log(f"reusing the healthy environment in {self.state_dir}")
                return existing, True
            log("a previous environment is recorded but not healthy: stopping what is left of it")
            self.down(log=lambda _: None)
        taken = [f"{name} port {port}" for name, port in asdict(self.ports).items() if not port_is_free(port)]
        if taken:
            raise EnvironmentError_(
                f"cannot start: {', '.join(taken)} on {HOST} already in use; pick free ports with "
                "--mlflow-port / --ray-port / --dashboard-port, or stop what holds them"
            )
        make_private_dir(self.state_dir)
        for directory in ("logs", "mlflow/artifacts", "ray_results"):
            (self.state_dir / directory).mkdir(parents=True, exist_ok=True)
        creds = self.credentials()
        self._ensure_ray_token()
        # Both start at once and are waited for together: neither needs the other to be up (the Ray head only
        # passes MLflow's address on to its jobs), so `up` takes the slower of the two, not their sum.
        starting: list[_Starting] = []
        try:
            starting.append(self._spawn_mlflow(creds, log))
            starting.append(self._spawn_ray(log))
            self._wait_ready(starting)
        except BaseException:
            for service in reversed(starting):
                stop_pid(service.process.pid, self.bin_dir / service.program)
            raise
        mlflow_state, ray_state = (
            ServiceState(pid=service.process.pid, url=service.url, log=str(service.log_path))
            for service in starting
        )
        state = EnvState(
            ports=self.ports,
            mlflow=mlflow_state,
            ray=ray_state,
            ray_gcs_address=f"{HOST}:{self.ports.ray_gcs}",
            started_at=time.time(),
        )
        self.state_path.write_text(state.to_json())
        return state, False

    def _spawn(self, command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
        with log_path.open("ab") as handle:
            return subprocess.Popen(
                command,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,
            )

    def _wait_ready(self, starting: list[_Starting], poll_s: float = 0.25) -> None:
        """Until every service answers its probe; an error naming the first that exits or runs out of time."""
        waiting = list(starting)
        while waiting:
            for service in list(waiting):
                if service.process.poll() is not None:
                    raise EnvironmentError_(
                        f"{service.name} exited with code {service.process.returncode} while starting; last "
                        f"lines of {service.log_path}:\n" + _tail(service.log_path)
                    )
                if service.probe():
                    waiting.remove(service)
                elif time.monotonic() > service.deadline:
                    raise EnvironmentError_(
                        f"{service.name} did not become healthy within {service.timeout_s:.0f}s; last lines "
                        f"of {service.log_path}:\n" + _tail(service.log_path)
                    )
            if waiting:
                time.sleep(poll_s)
        # One that answered early may have died while the other was still starting (a Ray head whose helper
        # timed out on a loaded machine stops the whole node): every service must still be running now.
        for service in starting:
            if service.process.poll() is not None:
                raise EnvironmentError_(
                    f"{service.name} exited with code {service.process.returncode} after answering; last lines "
                    f"of {service.log_path}:\n" + _tail(service.log_path)
                )

    def mlflow_server_env(
        self, creds: dict[str, str], auth_config: Path, inherited: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The MLflow server's environment: the shell's, minus anything that would change who it trusts.

        MLflow's ``MLFLOW_AUTH_ADMIN_*`` variables override the auth config file: one left in a user's shell
        would make the server's admin someone else than ``credentials.json`` says (every client a 401).
        Client variables are dropped too: the server is not a client of itself.
        """
        env = {
            key: value
            for key, value in (os.environ if inherited is None else inherited).items()
            if not key.startswith(("MLFLOW_AUTH_", "MLFLOW_TRACKING_", "MLFLOW_FLASK_SERVER_SECRET_KEY"))
        }
        env.update(
            {
                "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["mlflow_flask_secret"],
                # The server's background job runner (7 worker processes) serves features we do not use.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            }
        )
        return env

    def _spawn_mlflow(self, creds: dict[str, str], log: Callable[[str], None]) -> _Starting:
        auth_config = self._write_mlflow_auth_config(creds)
        auth_db = self.state_dir / "mlflow" / "auth.db"
        if auth_db.exists():  # the admin exists: its password follows credentials.json (a rotation)
            from lockgate.mlflow_admin import ensure_admin_password

            if ensure_admin_password(
                f"sqlite:///{auth_db}",
                creds["mlflow_username"],
                creds["mlflow_password"],
                self.state_dir / "mlflow" / "admin.applied",
            ):
                log("MLflow admin password changed to the one in credentials.json")
        env = self.mlflow_server_env(creds, auth_config)
        log_path = self.state_dir / "logs" / "mlflow.log"
        mlflow_dir = self.state_dir / "mlflow"
        command = [
            str(self.bin_dir / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--backend-store-uri",
            f"sqlite:///{mlflow_dir / 'mlflow.db'}",
            "--artifacts-destination",
            str(mlflow_dir / "artifacts"),
            "--host",
            HOST,
            "--port",
            str(self.ports.mlflow),
            "--workers",
            "1",
        ]
        log(f"starting MLflow on {self.mlflow_url} (log: {log_path})")
        url = self.mlflow_url
        return _Starting(
            "MLflow",
            "mlflow",
            self._spawn(command, env, log_path),
            url,
            log_path,
            lambda: _http_ok(f"{url}/health"),
            180.0,  # a loaded 2-core machine has taken over 90 s to import and migrate twice
        )

    def _spawn_ray(self, log: Callable[[str], None]) -> _Starting:
        env = {
            **os.environ,
            **self.client_env(include_secrets=True),
            # The job driver and Train workers inherit this environment: they find MLflow and
            # Train storage here, as pods would through their env in a cluster.
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            EnvVar.train_storage.value: str(self.state_dir / "ray_results"),
            # Where the pipeline's rollout stage finds serving (pipeline/deploy.py).
            EnvVar.dashboard_url.value: self.dashboard_url,
            EnvVar.metrics_url.value: self.metrics_url,
            EnvVar.home.value: str(self.state_dir),
            # The live rollout state the router follows and the rollout controller writes (serving/livestate.py):
            # by default the state directory's, where the CLI reads and writes it too.
            EnvVar.live_state_uri.value: self.live_state_uri,
            # Serve replicas (the router) inherit it: `POST <route>/labels` needs this token.
            EnvVar.labels_token_file.value: str(self.labels_token_path),
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5",
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Serve metrics reach the Prometheus endpoint within 2 s instead of 10 s (rollout analysis reads them).
            "RAY_metrics_report_interval_ms": "2000",
            **self.ingress_env(),
            **self.loopback_env(os.environ.get("PYTHONPATH")),
        }
        # Every Ray process started under this head (Train's helper actors included) must find this cluster,
        # not "the" cluster: another environment may run on the same machine.
        env[EnvVar.ray_address.value] = f"{HOST}:{self.ports.ray_gcs}"
        log_path = self.state_dir / "logs" / "ray.log"
        command = [
            str(self.bin_dir / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            HOST,
            "--port",
            str(self.ports.ray_gcs),
            "--include-dashboard",
            "true",
            "--dashboard-host",
            HOST,
            "--dashboard-port",
            str(self.ports.ray_dashboard),
            "--ray-client-server-port",
            str(self.ports.ray_client),
            "--dashboard-agent-listen-port",
            str(self.ports.ray_agent),
            "--metrics-export-port",
            str(self.ports.ray_metrics),
            "--num-cpus",
            str(self.num_cpus),
            "--temp-dir",
            str(self.ray_temp_dir),
            "--min-worker-port",
            str(self.ports.worker_range[0]),
            "--max-worker-port",
            str(self.ports.worker_range[1]),
            "--disable-usage-stats",
        ]
        log(f"starting Ray head, dashboard on {self.dashboard_url} (log: {log_path})")
        headers, url = self.ray_auth_header(), self.dashboard_url
        return _Starting(
            "Ray",
            "ray",
            self._spawn(command, env, log_path),
            url,
            log_path,
            lambda: _ray_ready(url, headers),
            120.0,
        )

    def restart_mlflow(self, log: Callable[[str], None] = print, ready_timeout_s: float = 90.0) -> EnvState:
        """Start MLflow again on its recorded port after it died, leave Ray alone, and record its new PID.

        ``up`` restarts both services when either is unhealthy; this brings back only the tracking server
        (same database, artefacts and credentials). A running, healthy MLflow is left as it is.
        """
        state = self.read_state()
        if state is None:
            raise EnvironmentError_(f"nothing recorded in {self.state_dir}: run `lockgate up`")
        self.ports = state.ports
        if pid_alive(state.mlflow.pid) and _http_ok(f"{state.mlflow.url}/health"):
            log(f"MLflow (pid {state.mlflow.pid}) is running: left as it is")
            return state
        stop_pid(state.mlflow.pid, self.bin_dir / "mlflow")  # whatever is left of the dead server's group
        # A killed server's listener goes with its last process, a moment after the kill: wait for it.
        deadline = time.monotonic() + 10.0
        while not port_is_free(self.ports.mlflow) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not port_is_free(self.ports.mlflow):
            raise EnvironmentError_(f"cannot restart MLflow: port {self.ports.mlflow} on {HOST} is in use")
        state = replace(state, mlflow=self._start_mlflow(self.credentials(), log, ready_timeout_s))
        self.state_path.write_text(state.to_json())
        return state

    def _start_mlflow(
        self, creds: dict[str, str], log: Callable[[str], None], ready_timeout_s: float = 180.0
    ) -> ServiceState:
        """Start MLflow alone and wait until it answers (``up`` starts both services at once instead)."""
        starting = self._spawn_mlflow(creds, log)
        starting.deadline = time.monotonic() + ready_timeout_s
        self._wait_ready([starting])
        return ServiceState(pid=starting.process.pid, url=starting.url, log=str(starting.log_path))

    def down(self, log: Callable[[str], None] = print) -> bool:
        """Stop exactly the recorded processes; keep data, credentials and logs. Returns whether anything ran."""
        state = self.read_state()
        if state is None:
            log(f"nothing recorded in {self.state_dir}: nothing to stop")
            return False
        stopping: list[tuple[int, Path]] = []
        for name, service, program in (("Ray", state.ray, "ray"), ("MLflow", state.mlflow, "mlflow")):
            executable = self.bin_dir / program
            if pid_alive(service.pid) and _pid_matches(service.pid, executable):
                log(f"stopping {name} (pid {service.pid})")
            elif pid_alive(service.pid):
                log(f"{name}'s recorded pid {service.pid} now runs another program: left alone")
            stopping.append((service.pid, executable))
        # Both at once: each drains its own children on SIGTERM, independently of the other.
        with ThreadPoolExecutor(max_workers=len(stopping)) as pool:
            list(pool.map(lambda recorded: stop_pid(*recorded), stopping))
        self.state_path.unlink(missing_ok=True)
        still = [p for p in asdict(state.ports).values() if not port_is_free(p)]
        if still:
            raise EnvironmentError_(f"stopped the recorded processes but ports {still} still have listeners")
        return True


def _http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return requests.get(url, timeout=2, headers=headers or {}).status_code == 200
    except requests.RequestException:
        return False


def _ray_ready(dashboard_url: str, headers: dict[str, str]) -> bool:
    """Dashboard up and the Jobs API answering (it is what ``lockgate run`` needs)."""
    return _http_ok(f"{dashboard_url}/api/gcs_healthz", headers) and _http_ok(
        f"{dashboard_url}/api/jobs/", headers
    )


def require_healthy(env: LocalEnvironment) -> LocalEnvironment:
    """The environment, with its recorded ports, if it is up and healthy; else an error saying what to do."""
    if not env.is_healthy():
        raise EnvironmentError_(
            f"the local environment in {env.state_dir} is not running or not healthy: run `lockgate up` "
            f"(or, for a stack, set {EnvVar.mlflow_tracking_uri.value} and {EnvVar.ray_address.value})"
        )
    state = env.read_state()
    if state is not None:
        env.ports = state.ports
    return env


@contextmanager
def connected(env: LocalEnvironment) -> Iterator[LocalEnvironment]:
    """Point this process's Ray and MLflow clients at the environment while the block runs, then restore.

    MLflow's and Ray's clients read their address and credentials only from the process environment
    (``MLFLOW_TRACKING_*``, ``RAY_AUTH_*``), so this is the one place that sets them, and every variable
    it set is put back as it was (or removed) on the way out: nothing leaks into later code or tests.
    """
    require_healthy(env)
    wanted = env.client_env(include_secrets=True)
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
