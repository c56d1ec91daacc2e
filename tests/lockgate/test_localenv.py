"""The local environment: up → status → down leaves nothing behind; a taken port fails cleanly."""

from __future__ import annotations

import json
import re
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from contracts.settings import EnvVar
from lockgate.localenv import (
    SERVE_INGRESSES,
    EnvironmentError_,
    LocalEnvironment,
    Ports,
    ServiceState,
    pid_alive,
    port_is_free,
)
from serving.deploy import deploy_config, wait_running
from serving.render import render_serve_config
from serving.spec import ModelRef, RouterConfig, ServingSpec
from tests.conftest import PORT_OFFSET, SESSION_SERVE_PORT, running_environment

# Every port a test here starts a service on is shifted by the session's LOCKGATE_TEST_PORT_OFFSET.
ENV_PORTS = Ports.from_base(
    mlflow=18055 + PORT_OFFSET, ray_gcs=18390 + PORT_OFFSET, ray_dashboard=18275 + PORT_OFFSET
)
# An environment of its own for an ingress mode the session's environment does not run; Serve's HTTP port
# below Ray's GCS port, clear of the worker and direct-ingress ranges derived from it.
INGRESS_PORTS = Ports.from_base(
    mlflow=18505 + PORT_OFFSET, ray_gcs=18540 + PORT_OFFSET, ray_dashboard=18525 + PORT_OFFSET
)
INGRESS_SERVE_PORT = 18515 + PORT_OFFSET


def lockgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lockgate", *args], capture_output=True, text=True, timeout=300
    )


def sessions_of(leaders: list[int]) -> set[int]:
    """Every process in the sessions the given leaders started (each service runs in a session of its own)."""
    wanted, members = set(leaders), set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().split(")")[-1].split()
            except OSError:
                continue
            if int(fields[3]) in wanted:  # the session id
                members.add(int(entry.name))
    return members


LOOPBACK = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")


def listeners(owners: set[int]) -> set[str]:
    """Addresses the given processes listen on (TCP), as ``ss`` attributes sockets to processes.

    Restricted to the environment's own processes: other programs on the machine (another test session, a
    developer's tools) neither fail the check nor hide a listener of ours.
    """
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    return {
        line.split()[3] for line in lines if {int(pid) for pid in re.findall(r"pid=(\d+)", line)} & owners
    }


def exposed_listeners(leaders: list[int]) -> set[str]:
    """Listeners of the processes in the leaders' sessions that are not on loopback, as ``address program``.

    HAProxy, Serve's proxies and replicas all run in the Ray head's session: one check covers each of them.
    """
    owners = sessions_of(leaders)
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    found = set()
    for line in lines:
        address, pids = line.split()[3], {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        if pids & owners and not address.startswith(LOOPBACK):
            program = re.search(r'\(\("([^"]+)"', line)
            found.add(f"{address} {program.group(1) if program else '?'}")
    return found


def own_ports(ports: Ports) -> list[int]:
    return [*vars(ports).values()]


@pytest.mark.e2e
def test_up_status_down_leaves_no_process_or_listener(tmp_path) -> None:
    state = tmp_path / "state"
    common = ["--state-dir", str(state)]
    ports = [
        *("--mlflow-port", str(ENV_PORTS.mlflow), "--ray-port", str(ENV_PORTS.ray_gcs)),
        *("--dashboard-port", str(ENV_PORTS.ray_dashboard)),
    ]
    started = lockgate("up", *common, *ports, "--num-cpus", "1")
    try:
        assert started.returncode == 0, started.stderr
        recorded = json.loads((state / "state.json").read_text())
        pids = [recorded["mlflow"]["pid"], recorded["ray"]["pid"]]
        assert all(pid_alive(pid) for pid in pids), "both services run"
        for secret in ("credentials.json", "ray_token", "mlflow_auth.ini"):
            mode = stat.S_IMODE((state / secret).stat().st_mode)
            assert mode == 0o600, f"{secret} must be 0600, is {oct(mode)}"
        status = lockgate("status", *common, "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert all(s["healthy"] and s["alive"] for s in json.loads(status.stdout).values())
        again = lockgate("up", *common, *ports)
        assert again.returncode == 0 and "reused" in again.stdout, (
            "a second up reuses the healthy environment"
        )
        assert json.loads((state / "state.json").read_text())["ray"]["pid"] == pids[1]
        owned = listeners(sessions_of(pids))
        assert {f"127.0.0.1:{ENV_PORTS.mlflow}", f"127.0.0.1:{ENV_PORTS.ray_dashboard}"} <= owned, (
            f"the environment's sockets are its own: {owned}"
        )
        exposed = {address for address in owned if not address.startswith(LOOPBACK)}
        assert not exposed, f"every listener must be on 127.0.0.1, found {exposed}"
    finally:
        stopped = lockgate("down", *common)
    assert stopped.returncode == 0, stopped.stderr
    assert not any(pid_alive(pid) for pid in pids), "down stops exactly the recorded processes"
    assert all(port_is_free(port) for port in own_ports(ENV_PORTS)), "no listener is left on our ports"
    after = lockgate("status", *common)
    assert after.returncode == 1 and "run `lockgate up`" in after.stdout


@pytest.mark.e2e
def test_taken_port_fails_clearly_and_starts_nothing(tmp_path) -> None:
    blocker = socket.socket()
    taken = 18455 + PORT_OFFSET
    blocker.bind(("127.0.0.1", taken))
    blocker.listen()
    try:
        env = LocalEnvironment(
            tmp_path / "state",
            Ports.from_base(mlflow=taken, ray_gcs=18490 + PORT_OFFSET, ray_dashboard=18475 + PORT_OFFSET),
        )
        with pytest.raises(EnvironmentError_, match=f"mlflow port {taken} on 127.0.0.1 already in use"):
            env.up(log=lambda _: None)
        assert env.read_state() is None, "nothing recorded"
    finally:
        blocker.close()


@pytest.mark.e2e
def test_service_that_fails_to_start_is_reported_with_its_log_and_cleaned_up(tmp_path) -> None:
    # Ray refuses a client-server port inside its worker range: a real start-up failure after MLflow is up.
    bad = Ports(
        **{
            name: port + PORT_OFFSET
            for name, port in dict(
                mlflow=18555,
                ray_gcs=18590,
                ray_dashboard=18575,
                ray_client=18605,
                ray_agent=18592,
                ray_metrics=18593,
            ).items()
        }
    )
    env = LocalEnvironment(tmp_path / "state", bad, num_cpus=1)
    with pytest.raises(EnvironmentError_) as caught:
        env.up(log=lambda _: None)
    assert "Ray exited with code" in str(caught.value) and "last lines of" in str(caught.value)
    assert env.read_state() is None
    assert port_is_free(bad.mlflow), "the MLflow server started first was stopped again"


def test_haproxy_ingress_is_the_default_and_pinned_to_the_environments_ports(tmp_path) -> None:
    ports = Ports.from_base(18055, 18390, 18275)
    assert LocalEnvironment(tmp_path, ports, serve_ingress="proxy").ingress_env() == {}, "Serve's own proxy"
    levers = LocalEnvironment(tmp_path, ports).ingress_env()
    assert levers["RAY_SERVE_ENABLE_HA_PROXY"] == levers["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1", (
        "HAProxy in front of throughput-optimised replicas by default"
    )
    pinned = [int(v) for k, v in levers.items() if k.endswith("_PORT") and v.isdigit()]
    low, high = ports.worker_range
    assert all(18390 < port and not low <= port <= high for port in pinned), (
        "own ports, clear of Ray's workers"
    )
    assert int(levers["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]) > high
    files = [Path(v) for k, v in levers.items() if k.startswith("RAY_SERVE_HAPROXY_") and v.startswith("/")]
    own = LocalEnvironment(tmp_path, ports).haproxy_dir
    assert files and all(path == own or own in path.parents for path in files), (
        f"HAProxy's files are the environment's: {files}"
    )
    longest = max(len(str(path)) for path in files) + 57  # Ray puts a node-id directory before each file
    assert longest <= 97, f"HAProxy refuses socket paths over 97 bytes: {longest}"
    with pytest.raises(EnvironmentError_, match="serve_ingress: 'nginx'"):
        LocalEnvironment(tmp_path, ports, serve_ingress="nginx")


def test_every_ingress_mode_starts_ray_with_the_loopback_patches(tmp_path) -> None:
    for ingress in SERVE_INGRESSES:
        loopback = LocalEnvironment(tmp_path, ENV_PORTS, serve_ingress=ingress).loopback_env("/elsewhere")
        assert loopback[EnvVar.loopback_only.value] == "1", ingress
        assert loopback["PYTHONPATH"].split(":")[0].endswith("lockgate/loopback"), (
            f"the patches load first in every Ray process ({ingress}): {loopback['PYTHONPATH']}"
        )
        assert loopback["PYTHONPATH"].endswith(":/elsewhere"), "the inherited path is kept"


def test_down_leaves_an_unrelated_process_that_took_a_recorded_pid_alone(tmp_path) -> None:
    # Given a state file whose recorded Ray and MLflow PIDs now belong to another program, leading its own
    # process group, whose command line merely contains the words ("array", "mlflow-unrelated"),
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "array", "mlflow-unrelated"],
        start_new_session=True,
    )
    try:
        env = LocalEnvironment(tmp_path / "state", ENV_PORTS)
        env.state_dir.mkdir(parents=True)
        service = {"pid": stranger.pid, "url": "http://127.0.0.1:1", "log": str(tmp_path / "log")}
        state = {
            "ports": vars(ENV_PORTS),
            "mlflow": service,
            "ray": service,
            "ray_gcs_address": "127.0.0.1:1",
            "started_at": 0.0,
        }
        (env.state_dir / "state.json").write_text(json.dumps(state))
        # when the environment is stopped,
        said: list[str] = []
        env.down(log=said.append)
        # then the stranger and its group still run, and down says why it left them alone.
        assert stranger.poll() is None and pid_alive(stranger.pid), "down killed a process it did not start"
        assert any("now runs another program: left alone" in line for line in said), said
    finally:
        stranger.kill()
        stranger.wait(timeout=10)


def test_the_state_directory_is_private(tmp_path) -> None:
    # Given a state directory another user could read,
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    # when the environment creates its credentials there,
    LocalEnvironment(state, ENV_PORTS).credentials()
    # then only its owner can list or read it (it holds the MLflow database and password hashes).
    mode = stat.S_IMODE(state.stat().st_mode)
    assert mode == 0o700, f"the state directory must be 0700, is {oct(mode)}"


def test_the_mlflow_server_trusts_only_the_environments_own_admin(tmp_path) -> None:
    # Given a user's shell that happens to carry MLflow's admin override and client credentials,
    shell = {
        "PATH": "/usr/bin",
        "MLFLOW_AUTH_ADMIN_USERNAME": "someone-else",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "their-password",
        "MLFLOW_TRACKING_PASSWORD": "a-client-secret",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "not-ours",
    }
    env = LocalEnvironment(tmp_path / "state", ENV_PORTS)
    creds = {"mlflow_username": "lockgate-admin", "mlflow_password": "p", "mlflow_flask_secret": "ours"}
    # when the server's environment is built,
    server = env.mlflow_server_env(creds, tmp_path / "auth.ini", shell)
    # then nothing of the shell decides who the admin is: only the environment's own auth config does.
    assert not any(key.startswith(("MLFLOW_AUTH_ADMIN", "MLFLOW_TRACKING_")) for key in server), server
    assert server["MLFLOW_AUTH_CONFIG_PATH"] == str(tmp_path / "auth.ini"), server
    assert server["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "ours" and server["PATH"] == "/usr/bin", server


@contextmanager
def environment_in(
    ingress: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[LocalEnvironment, int]]:
    """The environment in this ingress mode and its Serve HTTP port: the session's when it runs that mode."""
    session_mode = LocalEnvironment(tmp_path, ENV_PORTS).serve_ingress
    if ingress == session_mode:
        yield request.getfixturevalue("local_env"), SESSION_SERVE_PORT
        return
    env = LocalEnvironment(tmp_path / "state", INGRESS_PORTS, num_cpus=2, serve_ingress=ingress)
    with running_environment(env):
        yield env, INGRESS_SERVE_PORT


@pytest.mark.e2e
@pytest.mark.parametrize("ingress", SERVE_INGRESSES)
def test_a_deployed_router_listens_on_loopback_only_in_every_ingress_mode(
    ingress: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # Given the environment in this ingress mode,
    with environment_in(ingress, request, tmp_path) as (env, serve_port):
        # when a router is deployed (its champion not registered: it starts and answers 503 naming it)
        absent = ModelRef(name=f"absent-{uuid.uuid4().hex[:6]}", version="1")
        spec = ServingSpec(app_name="lockgate-listeners", http_port=serve_port, replica_num_cpus=0.25)
        headers = env.ray_auth_header()
        config = render_serve_config(spec, RouterConfig(champion=absent))
        deploy_config(env.dashboard_url, headers, config, timeout_s=120)  # a busy 2-core machine
        wait_running(env.dashboard_url, headers, spec.app_name)
        # and a request reaches it through the ingress,
        answer = requests.post(f"http://127.0.0.1:{serve_port}/", json={"rows": [{}]}, timeout=30)
        assert answer.status_code == 503 and answer.json().get("model") == absent.name, (
            f"the router answers through the {ingress} ingress: {answer.status_code} {answer.text[:300]}"
        )
        # then every TCP listener of the environment's processes (HAProxy, proxies, replicas) is on loopback.
        state = env.read_state()
        assert state is not None, "the environment recorded what it started"
        exposed = exposed_listeners([state.mlflow.pid, state.ray.pid])
        assert not exposed, f"with the {ingress} ingress every listener must be on 127.0.0.1, found {exposed}"


@pytest.mark.e2e
def test_a_changed_admin_password_reaches_the_existing_auth_database(tmp_path) -> None:
    import requests

    from lockgate.localenv import CREDENTIALS_FILE, stop_pid

    def who_am_i(creds: dict[str, str]) -> int:
        response = requests.get(
            f"{env.mlflow_url}/api/2.0/mlflow/users/current",
            auth=(creds["mlflow_username"], creds["mlflow_password"]),
            timeout=10,
        )
        return response.status_code

    # Given an environment whose MLflow server created its admin with the first password,
    env = LocalEnvironment(
        tmp_path / "state",
        Ports.from_base(
            mlflow=18655 + PORT_OFFSET, ray_gcs=18690 + PORT_OFFSET, ray_dashboard=18675 + PORT_OFFSET
        ),
    )
    first = env.credentials()
    for directory in ("logs", "mlflow"):  # as `up` makes them
        (env.state_dir / directory).mkdir(parents=True, exist_ok=True)
    server = env._start_mlflow(first, log=lambda _: None)
    try:
        assert who_am_i(first) == 200, "the first password works"
    finally:
        stop_pid(server.pid, env.bin_dir / "mlflow")
    # when credentials.json is lost, so `up` makes a new password, and the server starts again,
    (env.state_dir / CREDENTIALS_FILE).unlink()
    second = env.credentials()
    assert second["mlflow_password"] != first["mlflow_password"]
    server = env._start_mlflow(second, log=lambda _: None)
    try:
        # then the admin answers to the new password only: clients of the environment are not locked out.
        assert who_am_i(second) == 200, "the new password works (it was a 401 before the rotation)"
        assert who_am_i(first) == 401, "the old one no longer does"
    finally:
        stop_pid(server.pid, env.bin_dir / "mlflow")
    assert port_is_free(env.ports.mlflow), "the server is gone"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_restart_mlflow_starts_only_mlflow_again_and_records_its_new_pid(tmp_path, monkeypatch) -> None:
    # Given a recorded environment whose MLflow has died (its PID exited) while Ray is recorded as before
    dead = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    dead.wait(timeout=30)
    ports = Ports.from_base(mlflow=free_port(), ray_gcs=free_port(), ray_dashboard=free_port())
    env = LocalEnvironment(tmp_path / "state", ports)
    env.state_dir.mkdir(parents=True)
    ray = {"pid": 1, "url": "http://127.0.0.1:1", "log": "ray.log"}
    state = {
        "ports": vars(ports),
        "mlflow": {"pid": dead.pid, "url": f"http://127.0.0.1:{ports.mlflow}", "log": "mlflow.log"},
        "ray": ray,
        "ray_gcs_address": "127.0.0.1:1",
        "started_at": 1.0,
    }
    (env.state_dir / "state.json").write_text(json.dumps(state))
    started: list[int] = []

    def start_mlflow(creds, log, ready_timeout_s):
        started.append(env.ports.mlflow)
        return ServiceState(pid=4242, url=env.mlflow_url, log="mlflow.log")

    monkeypatch.setattr(env, "_start_mlflow", start_mlflow)

    # When MLflow is restarted
    restarted = env.restart_mlflow(log=lambda _: None)

    # Then MLflow alone was started, on its recorded port, and the state file names its new PID
    assert started == [ports.mlflow], f"MLflow started once on its recorded port: {started}"
    recorded = json.loads((env.state_dir / "state.json").read_text())
    assert recorded["mlflow"]["pid"] == 4242 == restarted.mlflow.pid, recorded["mlflow"]
    assert recorded["ray"] == ray and recorded["started_at"] == 1.0, "Ray's record is unchanged"


def test_restart_mlflow_without_an_environment_says_to_start_one(tmp_path) -> None:
    # Given a state directory where nothing was started, when MLflow is restarted, then the error says what to do
    with pytest.raises(EnvironmentError_, match="lockgate up"):
        LocalEnvironment(tmp_path / "state").restart_mlflow(log=lambda _: None)
