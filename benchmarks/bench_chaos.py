"""Chaos benchmark: faults in turn under load during rollouts; failed requests, recovery, captures, events, aliases.

Run from the repository root (about 5 minutes on a 2-core machine):

    .venv/bin/python benchmarks/bench_chaos.py
    .venv/bin/python benchmarks/bench_chaos.py --hold 8 --metrics-outage 15 --keep-state

What one run does, all on 127.0.0.1 and on this script's own ports (MLflow 28055, Ray GCS 28390-28393 and its
workers 28400-28799, dashboard 28275, Serve HTTP 28800, the metrics forwarder 28850), in a fresh state
directory under /tmp:

1. ``LocalEnvironment.up``; two versions of one model are logged and registered from a subprocess
   (``serving_bench.registration``: torch stays out of this process), a third and a fourth version are
   registered from the second's artefacts; all carry passing gate tags, so promotion is allowed.
   ``champion`` -> v1, ``candidate`` -> v2. The router (2 replicas of 0.25 CPU) is deployed from a serving file through
   ``apply_desired`` with capture at 100% into the environment's capture directory (batches of 50 rows or
   2 s). Closed-loop load (``lockgate.traffic.LoadClient``, 4 clients, every outcome kept with its times
   and its request id) runs from here to the end.
2. Rollout A (v1 -> v2, steps 10/50/100, ``--hold`` s each) is run by the real controller
   (``serving.live.rollout_controller``) in a thread of this process, its events written to an event log:
   - fault 1, ``replica``: 3 s into the 10% step one router replica (its PID from Serve's REST API, checked
     to be a Serve replica in the Ray head's session) is SIGKILLed; Serve starts another.
   - fault 2, ``mlflow``: 1.5 s before the 100% step's hold ends, the MLflow server's process group (its
     PID from the state file) is SIGKILLed, so the promotion meets a dead registry; it is started again at
     once with ``LocalEnvironment.restart_mlflow()`` (same port, database and credentials).
3. Rollout B (v2 -> v3, same policy): fault 3, ``metrics``: the controller's metrics URL points at a small
   TCP forwarder in this process (``chaos_bench.forwarder``) in front of Ray's metrics export port, not at
   the port itself; 2 s into the 10% step the forwarder stops listening and cuts its connections for
   ``--metrics-outage`` s, then listens again. This stands in for the endpoint going away: Ray's own
   metrics agent keeps running (stopping it would take the head's other agent functions with it).
4. Rollout C (champion -> v4, same policy), fault 4, ``head``: 3 s into the 10% step this process leaves the
   cluster (``ray.shutdown``: a driver whose GCS dies is ended by Ray), then every process of the Ray head's
   session (the head's PID from the state file is the session leader) is SIGKILLed, router replicas
   included; ``LocalEnvironment.up`` brings the environment back and the serving file is applied again; the
   champion must answer again. The controller keeps running in its thread meanwhile: its scrapes and Serve
   calls fail while the head is down, so it must end in a rollback (weight 0 in the rollout state, the
   candidate tagged rejected, one ``rollback`` event), which the re-applied serving file then serves. Its
   ``analysis.max_metrics_outage_s`` is ``--head-outage-bound`` (10 s), shorter than the restart, so the
   rollback's cleanup (``analysis.cleanup_timeout_s``) begins while the head is down and must outlast it:
   weight 0 first, then the alias writer joins the new head (this process left the old one) and rejects.

Then the load stops, the routers' last capture batches are waited for, and the run is judged: per fault,
failed requests (non-200 answers plus attempts that found no router) and time to recover (from the fault to
the first answer after the last failure); lost captures (answered request ids missing from the captured
``request_id`` column; the routers spool every captured request before answering and a replica recovers the
spools of killed ones, ``serving/capture.py``), captured rows written twice, and rows captured but never
answered to the client (a request in flight when its replica died); the events (each emitted event logged
once, one promotion or one rollback per rollout); and the aliases and weight after each rollout and at the
end. A table is printed and everything is written to ``benchmarks/results/chaos-<stamp>.json``.

Every process is started here and stopped by PID or process group in ``finally`` (SIGINT and SIGTERM
included); the run ends by checking that nothing of its own still runs or listens.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO, BENCHMARKS = Path(__file__).resolve().parents[1], Path(__file__).resolve().parent
for _entry in (BENCHMARKS, REPO):
    if str(_entry) not in sys.path:
        sys.path.insert(0, str(_entry))

from chaos_bench.analysis import (  # noqa: E402
    Phase,
    capture_check,
    events_check,
    phase_figures,
    rollout_consistency,
)
from chaos_bench.forwarder import TcpForwarder  # noqa: E402
from serving_bench.environment import env_up  # noqa: E402
from serving_bench.processes import PROCS, SESSIONS, progress, raise_on_sigterm  # noqa: E402
from serving_bench.registration import register_in_subprocess  # noqa: E402

from lockgate.localenv import LocalEnvironment, Ports, pid_alive, port_is_free  # noqa: E402

MLFLOW_PORT, RAY_GCS_PORT, RAY_DASHBOARD_PORT = 28055, 28390, 28275
SERVE_PORT, FORWARDER_PORT = 28800, 28850
APP_NAME, ROUTE = "lockgate-chaos", "/chaos"
PASSED = {"lockgate.gate.thresholds": "passed", "lockgate.gate.regression": "passed"}
RESULTS_DIR = REPO / "benchmarks" / "results"
PORTS = Ports.from_base(mlflow=MLFLOW_PORT, ray_gcs=RAY_GCS_PORT, ray_dashboard=RAY_DASHBOARD_PORT)
OWN_PORTS = [*vars(PORTS).values(), SERVE_PORT, FORWARDER_PORT]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--hold", type=float, default=10.0, help="seconds each rollout step holds (default 10)"
    )
    parser.add_argument(
        "--metrics-outage", type=float, default=15.0, help="seconds the metrics endpoint is gone (default 15)"
    )
    parser.add_argument(
        "--head-outage-bound",
        type=float,
        default=10.0,
        help="rollout C's analysis.max_metrics_outage_s: shorter than the head's 13-25 s restart, so the "
        "controller ends the rollout while the head is still down (default 10)",
    )
    parser.add_argument("--clients", type=int, default=4, help="closed-loop load clients (default 4)")
    parser.add_argument(
        "--keep-state", action="store_true", help="keep the state directory (logs) afterwards"
    )
    return parser.parse_args(argv)


# -- the run's record: a timeline, the controller's events ----------------------------------------------
class Record:
    """What happened when (``time.monotonic``), and every event the controllers emitted."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.timeline: list[tuple[float, str]] = []
        self.events: list[tuple[float, str, dict[str, Any]]] = []  # (time, rollout, event as logged)
        self._lock = threading.Lock()

    def mark(self, what: str) -> float:
        now = time.monotonic()
        with self._lock:
            self.timeline.append((now, what))
        progress(f"+{now - self.started:6.1f}s {what}")
        return now

    def emitter(self, rollout: str, events_path: Path, model: str, version: str) -> Callable[..., None]:
        """The controller's ``(kind, message, details)`` sink: the event log, and this record."""
        from contracts.settings import Settings
        from pipeline.config import EventsConfig
        from pipeline.events import Event, EventType, emit

        config = EventsConfig(log_file=str(events_path))

        def send(kind: str, message: str, details: dict[str, Any]) -> None:
            event = Event(
                type=EventType(kind),
                pipeline="bench-chaos",
                stage=rollout,
                model_name=model,
                model_version=version,
                message=message,
                details=details,
            )
            delivered = emit(event, config, settings=Settings())
            with self._lock:
                self.events.append((time.monotonic(), rollout, event.model_dump(mode="json")))
            self.mark(f"[{rollout}] event {kind}: {message[:150]} (delivered {delivered})")

        return send

    def wait_event(self, rollout: str, kind: str, weight: float | None, timeout_s: float) -> float | None:
        """When the rollout emitted ``kind`` (at ``weight``); None when it did not within the timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                for at, name, event in self.events:
                    if name == rollout and event["type"] == kind:
                        if weight is None or event["details"].get("weight") == weight:
                            return at
            time.sleep(0.1)
        return None


class ControllerThread:
    """One rollout run by the real controller in a thread: its result, or the error it ended with."""

    def __init__(self, controller: Any, name: str):
        self.result: Any = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, args=(controller,), name=name, daemon=True)

    def _run(self, controller: Any) -> None:
        try:
            self.result = controller.run()
        except Exception as error:  # noqa: BLE001 - reported as the rollout's end
            self.error = f"{type(error).__name__}: {error}"

    def start(self) -> ControllerThread:
        self.thread.start()
        return self

    def join(self, timeout_s: float) -> bool:
        """Whether it ended within the timeout (False: the controller hangs)."""
        self.thread.join(timeout=timeout_s)
        return not self.thread.is_alive()

    def summary(self) -> dict[str, Any]:
        result = self.result
        return {
            "outcome": None if result is None else (str(result.outcome) if result.outcome else None),
            "reason": None if result is None else result.reason,
            "steps": None if result is None else result.steps,
            "error": self.error,
            "hung": self.thread.is_alive(),
        }


# -- the environment's pieces this run kills ------------------------------------------------------------
def session_members(leader: int) -> list[int]:
    """Every live process in the session ``leader`` started (the Ray head's, or MLflow's)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == leader and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def serve_replicas(env: LocalEnvironment) -> list[dict[str, Any]]:
    """The router's replicas as Serve reports them (state, pid, actor id)."""
    import requests

    from serving.deploy import APPLICATIONS_PATH

    response = requests.get(
        f"{env.dashboard_url}{APPLICATIONS_PATH}", headers=env.ray_auth_header(), timeout=10
    )
    response.raise_for_status()
    app = response.json().get("applications", {}).get(APP_NAME, {})
    return list(app.get("deployments", {}).get("Router", {}).get("replicas", []))


def kill_replica(env: LocalEnvironment, record: Record) -> dict[str, Any]:
    """SIGKILL one running router replica; wait (bounded) until Serve runs as many again, on a new PID."""
    head = env.read_state()
    running = [r for r in serve_replicas(env) if r.get("state") == "RUNNING" and r.get("pid")]
    if not running:
        raise RuntimeError("no running router replica to kill")
    pid = int(running[0]["pid"])
    owned = head is not None and pid in session_members(head.ray.pid)
    if "ServeReplica" not in cmdline(pid) or not owned:
        raise RuntimeError(f"pid {pid} is not a Serve replica of this run's Ray head: {cmdline(pid)[:100]}")
    killed_at = record.mark(f"fault replica: SIGKILL router replica pid {pid}")
    os.kill(pid, signal.SIGKILL)
    deadline = killed_at + 180
    while time.monotonic() < deadline:
        try:
            now = [r for r in serve_replicas(env) if r.get("state") == "RUNNING"]
        except Exception:  # noqa: BLE001 - the dashboard may be slow for a moment
            now = []
        pids = {int(r.get("pid") or 0) for r in now}
        if len(now) >= len(running) and pid not in pids:
            back = record.mark(f"replica replaced: running pids {sorted(pids)}")
            return {"killed_pid": pid, "at": killed_at, "replica_back_s": round(back - killed_at, 2)}
        time.sleep(0.5)
    return {"killed_pid": pid, "at": killed_at, "replica_back_s": None}


def kill_mlflow(env: LocalEnvironment, record: Record) -> dict[str, Any]:
    """SIGKILL the MLflow server's process group, then ``restart_mlflow`` it; time to healthy again."""
    state = env.read_state()
    if state is None or str(env.bin_dir / "mlflow") not in cmdline(state.mlflow.pid):
        raise RuntimeError("the state file names no MLflow server of this run")
    leader = state.mlflow.pid
    killed_at = record.mark(f"fault mlflow: SIGKILL MLflow's process group (leader pid {leader})")
    os.killpg(leader, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while session_members(leader) and time.monotonic() < deadline:
        time.sleep(0.1)
    # A busy 2-core machine has taken over 90 s to start MLflow: a longer bound than `up` gives.
    restarted = env.restart_mlflow(log=lambda line: progress(f"  [env] {line}"), ready_timeout_s=240)
    SESSIONS.extra.add(restarted.mlflow.pid)
    back = record.mark(f"MLflow healthy again (pid {restarted.mlflow.pid})")
    return {
        "killed_pid": leader,
        "at": killed_at,
        "new_pid": restarted.mlflow.pid,
        "down_s": back - killed_at,
    }


def kill_head(env: LocalEnvironment, record: Record) -> dict[str, Any]:
    """SIGKILL every process of the Ray head's session (its leader's PID from the state file)."""
    state = env.read_state()
    if state is None or str(env.bin_dir / "ray") not in cmdline(state.ray.pid):
        raise RuntimeError("the state file names no Ray head of this run")
    leader = state.ray.pid
    members = session_members(leader)
    killed_at = record.mark(f"fault head: SIGKILL the Ray head's session ({len(members)} processes)")
    for pid in [leader, *[m for m in members if m != leader]]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 15
    while session_members(leader) and time.monotonic() < deadline:
        time.sleep(0.2)
    return {"killed_pid": leader, "processes": len(members), "at": killed_at, "left": session_members(leader)}


# -- serving and registry -------------------------------------------------------------------------------
def write_serving_file(path: Path, model: str, capture_dir: Path) -> None:
    import yaml

    path.write_text(
        yaml.safe_dump(
            {
                "model_name": model,
                "serving": {
                    "app_name": APP_NAME,
                    "route_prefix": ROUTE,
                    "http_port": SERVE_PORT,
                    "num_replicas": 2,
                    "replica_num_cpus": 0.25,
                },
                "capture": {
                    "sample_percent": 100,
                    "uri": str(capture_dir),
                    "batch_rows": 50,
                    "flush_interval_s": 2,
                },
            }
        )
    )


def aliases_now(model: str) -> dict[str, str]:
    from serving.promotion import current_aliases

    return current_aliases(model)


def rollout_tag(model: str, version: str) -> str | None:
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_model_version(model, version).tags.get("lockgate.rollout")


def served_config(env: LocalEnvironment) -> dict[str, Any] | None:
    from serving.deploy import router_user_config

    try:
        return router_user_config(env.dashboard_url, env.ray_auth_header(), APP_NAME)
    except Exception as error:  # noqa: BLE001 - reported as what was seen
        return {"error": f"{type(error).__name__}: {error}"}


def after_rollout(
    env: LocalEnvironment, model: str, state_path: Path, thread: ControllerThread, versions: tuple[str, str]
) -> dict[str, Any]:
    """The rollout's end: its result, and the aliases, weight and served versions it left."""
    from serving.desired import read_rollout_state

    summary = thread.summary()
    weight = read_rollout_state(state_path).candidate_weight
    consistency = rollout_consistency(
        summary["outcome"],
        aliases_now(model),
        versions[0],
        versions[1],
        weight,
        rollout_tag(model, versions[1]),
    )
    served = served_config(env) or {}
    return {
        **summary,
        "versions": {"champion": versions[0], "candidate": versions[1]},
        "end": consistency,
        "served": {
            "champion": (served.get("champion") or {}).get("version"),
            "candidate": (served.get("candidate") or {}).get("version"),
            "candidate_weight": (served.get("traffic") or {}).get("candidate_weight"),
        },
    }


# -- the run ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_on_sigterm()
    taken = [p for p in OWN_PORTS if not port_is_free(p)]
    if taken:
        print(f"ports already in use on 127.0.0.1: {taken}", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    scratch = Path(tempfile.mkdtemp(prefix="lgchaos-"))
    env = LocalEnvironment(scratch / "state", PORTS, num_cpus=4)
    log_dir = scratch / "logs"
    log_dir.mkdir(parents=True)
    events_path = scratch / "events.jsonl"
    serving_file = scratch / "serving.yaml"
    record = Record()
    forwarder = TcpForwarder(FORWARDER_PORT, PORTS.ray_metrics)
    saved_environ = dict(os.environ)
    results: dict[str, Any] = {"benchmark": "chaos", "timestamp": stamp, "args": vars(args), "faults": {}}
    starts: list[tuple[str, float, float, str]] = []  # each phase: name, start, fault time, note
    load: Any = None
    samples: list[tuple[float, int]] = []
    sampling = threading.Event()
    error: str | None = None
    progress(f"state and logs in {scratch}")
    try:
        # Ray reads its loopback and token settings when it is imported: set them before anything imports it.
        os.environ.update(env.client_env())
        import mlflow
        from mlflow.tracking import MlflowClient

        from contracts.settings import ServingTarget
        from lockgate.runtime import connect_ray
        from lockgate.traffic import LoadClient
        from pipeline.data import make_loans
        from serving.desired import apply_desired, load_serving_file, update_rollout_state
        from serving.live import rollout_controller
        from serving.spec import AnalysisSpec, RolloutPolicy

        env_up(env)
        registered = register_in_subprocess(env, log_dir)
        model, (v1, v2) = registered["name"], registered["versions"]
        client = MlflowClient()
        v3 = str(mlflow.register_model(client.get_model_version(model, v2).source, model).version)
        v4 = str(mlflow.register_model(client.get_model_version(model, v2).source, model).version)
        for version in (v1, v2, v3, v4):
            for key, value in PASSED.items():
                client.set_model_version_tag(model, version, key, value)
        client.set_registered_model_alias(model, "champion", v1)
        client.set_registered_model_alias(model, "candidate", v2)
        record.mark(
            f"registered {model} v{v1} (champion), v{v2} (candidate A), v{v3} (candidate B), v{v4} (candidate C)"
        )
        write_serving_file(serving_file, model, env.capture_dir)
        target = ServingTarget(
            env.dashboard_url, f"http://127.0.0.1:{FORWARDER_PORT}/metrics", env.state_dir, env.ray_token_path
        )
        state_path = target.rollout_state_path(model)
        update_rollout_state(state_path, candidate_weight=0.0)
        connect_ray(env)
        apply_desired(env.dashboard_url, env.ray_auth_header(), load_serving_file(serving_file), state_path)
        forwarder.start()
        record.mark("router deployed (champion only at weight 0), metrics forwarder listening")

        rows = make_loans(64, seed=9).drop(columns="default").to_dict("records")
        load = LoadClient(
            f"http://127.0.0.1:{SERVE_PORT}{ROUTE}",
            rows,
            clients=args.clients,
            timeout_s=5.0,
            seed=0,
            tolerate_unavailable=True,
            backoff_s=0.05,
            keep_outcomes=True,
        ).start()

        def sample() -> None:
            while not sampling.wait(0.1):
                samples.append((time.monotonic(), load.unavailable))

        sampling.clear()
        threading.Thread(target=sample, name="sampler", daemon=True).start()
        loaded_at = record.mark(f"load runs ({args.clients} clients)")
        starts.append(("baseline", loaded_at, loaded_at, "no fault"))
        time.sleep(5)
        policy = RolloutPolicy(
            steps=(10.0, 50.0, 100.0),
            interval_s=args.hold,
            max_step_wait_s=max(60.0, 4 * args.hold),
            analysis=AnalysisSpec(
                min_requests=30,
                max_error_rate_increase=0.02,
                max_p99_latency_ratio=4.0,
                p99_latency_floor_s=0.25,
                max_prediction_divergence=0.5,
            ),
        )
        results["policy"] = policy.model_dump(mode="json")
        bound = 3 * (policy.max_step_wait_s + 30)

        # Rollout A: a replica killed at 10%, MLflow killed as the promotion comes.
        record.mark("rollout A starts (v1 -> v2)")
        rollout_a = ControllerThread(
            rollout_controller(
                policy, target, serving_file, (v1, v2), record.emitter("A", events_path, model, v2)
            ),
            "rollout-A",
        ).start()
        step = record.wait_event("A", "rollout_step", 10.0, 120)
        if step is None:
            raise RuntimeError("rollout A never reached its 10% step")
        time.sleep(max(step + 3 - time.monotonic(), 0))
        replica = kill_replica(env, record)
        results["faults"]["replica"] = replica
        starts.append(("replica", replica["at"] - 0.5, replica["at"], "SIGKILL one router replica"))
        step = record.wait_event("A", "rollout_step", 100.0, bound)
        mlflow_fault: dict[str, Any] = {}
        if step is not None:
            time.sleep(max(step + args.hold - 1.5 - time.monotonic(), 0))
            mlflow_fault = kill_mlflow(env, record)
        else:
            record.mark("rollout A ended before 100%: MLflow is killed now, after it")
            mlflow_fault = kill_mlflow(env, record)
        results["faults"]["mlflow"] = mlflow_fault
        starts.append(("mlflow", mlflow_fault["at"] - 0.5, mlflow_fault["at"], "SIGKILL MLflow, restart it"))
        ended = rollout_a.join(bound)
        record.mark(f"rollout A ended: {rollout_a.summary()['outcome']} (hung: {not ended})")
        results["rollout_A"] = after_rollout(env, model, state_path, rollout_a, (v1, v2))

        def next_rollout(
            name: str, candidate: str, policy: RolloutPolicy = policy
        ) -> tuple[ControllerThread, str, float, float]:
            """Make ``candidate`` the candidate at weight 0 and run its rollout; (thread, champion, start, 10%)."""
            champion = aliases_now(model).get("champion", v1)
            client.set_registered_model_alias(model, "candidate", candidate)
            update_rollout_state(state_path, candidate_weight=0.0)
            apply_desired(
                env.dashboard_url, env.ray_auth_header(), load_serving_file(serving_file), state_path
            )
            started = record.mark(f"rollout {name} starts (v{champion} -> v{candidate})")
            emit = record.emitter(name, events_path, model, candidate)
            thread = ControllerThread(
                rollout_controller(policy, target, serving_file, (champion, candidate), emit),
                f"rollout-{name}",
            ).start()
            step = record.wait_event(name, "rollout_step", 10.0, 120)
            if step is None:
                raise RuntimeError(f"rollout {name} never reached its 10% step")
            return thread, champion, started, step

        # Rollout B: the metrics endpoint goes away at 10%.
        rollout_b, champion_b, start_b, step = next_rollout("B", v3)
        time.sleep(max(step + 2 - time.monotonic(), 0))
        outage_at = record.mark(
            f"fault metrics: the metrics endpoint goes away for {args.metrics_outage:g} s"
        )
        starts.append(
            ("metrics", start_b - 0.5, outage_at, f"metrics endpoint gone {args.metrics_outage:g} s")
        )
        forwarder.stop()
        time.sleep(args.metrics_outage)
        forwarder.start()
        outage_end = record.mark("metrics endpoint back")
        ended = rollout_b.join(bound)
        record.mark(f"rollout B ended: {rollout_b.summary()['outcome']} (hung: {not ended})")
        reaction = [at for at, name, e in record.events if name == "B" and at >= outage_at]
        results["faults"]["metrics"] = {
            "at": outage_at,
            "outage_s": round(outage_end - outage_at, 2),
            "controller_reacted_after_s": round(reaction[0] - outage_at, 2) if reaction else None,
            "connections_forwarded": forwarder.connections,
        }
        results["rollout_B"] = after_rollout(env, model, state_path, rollout_b, (champion_b, v3))

        # Rollout C: the Ray head is killed with everything under it during the 10% step, brought back, and
        # the serving file applied again, while the controller runs on.
        time.sleep(3)
        # Its metrics outage bound is shorter than the head's restart: the rollback and its cleanup start while
        # the head is down, so the cleanup must outlast the restart and the alias writer reach the new head.
        policy_c = policy.model_copy(
            update={
                "analysis": policy.analysis.model_copy(
                    update={"max_metrics_outage_s": args.head_outage_bound}
                )
            }
        )
        results["policy_C"] = policy_c.model_dump(mode="json")
        rollout_c, champion_c, start_c, step = next_rollout("C", v4, policy_c)
        time.sleep(max(step + 3 - time.monotonic(), 0))
        import ray

        ray.shutdown()
        head = kill_head(env, record)
        starts.append(("head", start_c - 0.5, head["at"], "SIGKILL the Ray head's session in rollout C"))
        env_up(env)
        SESSIONS.extra.add(env.read_state().ray.pid)  # type: ignore[union-attr]
        up_at = record.mark("environment up again")
        ended = rollout_c.join(bound)
        record.mark(f"rollout C ended: {rollout_c.summary()['outcome']} (hung: {not ended})")
        apply_desired(env.dashboard_url, env.ray_auth_header(), load_serving_file(serving_file), state_path)
        applied_at = record.mark("serving file applied again")
        time.sleep(8)
        reaction = [at for at, name, e in record.events if name == "C" and at >= head["at"]]
        head |= {
            "up_s": round(up_at - head["at"], 2),
            "reapplied_s": round(applied_at - head["at"], 2),
            "controller_reacted_after_s": round(reaction[0] - head["at"], 2) if reaction else None,
        }
        results["faults"]["head"] = head
        results["rollout_C"] = after_rollout(env, model, state_path, rollout_c, (champion_c, v4))
        record.mark("load stops")
    except BaseException as exc:  # noqa: BLE001 - report what was measured, then re-raise below
        error = f"{type(exc).__name__}: {exc}"
        progress(f"stopped early: {error}")
        raise
    finally:
        sampling.set()
        if load is not None:
            load.stop()
        forwarder.stop()
        phases = windows(starts, time.monotonic())
        try:
            results |= judge(env, load, samples, phases, events_path, record, results)
        except Exception as judge_error:  # noqa: BLE001 - the report still gets written
            results["judge_error"] = f"{type(judge_error).__name__}: {judge_error}"
            progress(f"judging failed: {results['judge_error']}")
        try:
            import ray

            ray.shutdown()
        except Exception:  # noqa: BLE001, S110 - leaving a cluster that is gone already
            pass
        PROCS.stop_all()
        try:
            env.down(log=lambda line: progress(f"  [env] {line}"))
        except Exception as down_error:  # noqa: BLE001 - reported with the leftovers below
            results["down_error"] = str(down_error)
        results["leftovers"] = leftovers()
        os.environ.clear()
        os.environ.update(saved_environ)
        results["error"] = error
        results["elapsed_s"] = round(time.monotonic() - record.started, 1)
        results["timeline"] = [(round(t - record.started, 2), what) for t, what in record.timeline]
        results["command"] = " ".join([Path(sys.executable).name, *sys.argv])
        print_report(results)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"chaos-{stamp}.json"
        path.write_text(json.dumps(relative_times(results, record.started), indent=2, default=str))
        print(f"\nresults: {path.relative_to(REPO)}")
        if args.keep_state:
            print(f"state and logs kept in {scratch}")
        else:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
            shutil.rmtree(env.ray_temp_dir, ignore_errors=True)
    return 0


def windows(starts: list[tuple[str, float, float, str]], end: float) -> list[Phase]:
    """Back-to-back phases: each runs until the next one starts, the last until ``end``."""
    ends = [start for _, start, _, _ in starts[1:]] + [end]
    return [
        Phase(name, start, fault, stop, note)
        for (name, start, fault, note), stop in zip(starts, ends, strict=True)
    ]


def judge(
    env: LocalEnvironment,
    load: Any,
    samples: list[tuple[float, int]],
    phases: list[Phase],
    events_path: Path,
    record: Record,
    results: dict[str, Any],
) -> dict[str, Any]:
    """Per phase failures and recovery; captures against answers; events; the final aliases and weight."""
    from pipeline.events import read_events
    from serving.capture import read_captured

    judged: dict[str, Any] = {}
    if load is None:
        return judged
    outcomes = load.outcomes()
    judged["load"] = {
        "attempts": load.attempts,
        "answered": sum(load.answers.values()),
        "failed": load.failed,
        "no_router": load.unavailable,
        "answers_by_version": dict(load.answers),
    }
    judged["phases"] = [phase_figures(phase, outcomes, samples) for phase in phases]
    # The routers write a batch every 50 rows or 2 s, a quiet one from Serve's health check (every 10 s):
    # wait until the captured count has stayed the same over 12 s (at most 90 s).
    counts: list[int] = []
    captured = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        captured = read_captured(str(env.capture_dir))
        counts.append(len(captured))
        if len(counts) >= 4 and len(set(counts[-4:])) == 1:
            break
        time.sleep(4)
    ids = [] if captured is None else [str(i) for i in captured["request_id"]]
    judged["captures"] = capture_check(outcomes, ids, phases)
    logged = [e.model_dump(mode="json") for e in read_events(events_path)] if events_path.exists() else []
    judged["events"] = {
        rollout: events_check(
            [e for _, name, e in record.events if name == rollout],
            [e for e in logged if e["stage"] == rollout],
        )
        for rollout in ("A", "B", "C")
    }
    try:
        name = next(iter({e["model_name"] for e in logged}), None)
        if name is not None and env.is_healthy(attempts=1):
            from serving.desired import read_rollout_state

            judged["final"] = {
                "aliases": aliases_now(name),
                "rollout_weight": read_rollout_state(
                    env.state_dir / "rollout" / f"{name}.json"
                ).candidate_weight,
                "served": served_config(env),
            }
    except Exception as error:  # noqa: BLE001 - reported
        judged["final"] = {"error": f"{type(error).__name__}: {error}"}
    return judged


def leftovers() -> dict[str, Any]:
    """Processes of this run's sessions still alive, and listeners on its ports (both should be empty)."""
    alive = sorted(pid for leader in SESSIONS.all() for pid in session_members(leader) if pid_alive(pid))
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, timeout=10).stdout
    listening = [
        line.split()[3]
        for line in out.splitlines()
        if len(line.split()) > 3 and line.split()[3].rsplit(":", 1)[-1] in {str(p) for p in OWN_PORTS}
    ]
    return {"processes": alive, "listeners_on_own_ports": listening}


def relative_times(results: dict[str, Any], origin: float) -> dict[str, Any]:
    """Fault times as seconds since the run started (monotonic clock values mean nothing elsewhere)."""
    faults = {
        name: {k: (round(v - origin, 2) if k == "at" else v) for k, v in fault.items()}
        for name, fault in results.get("faults", {}).items()
    }
    return {**results, "faults": faults}


def print_report(results: dict[str, Any]) -> None:
    """The per-fault table, then captures, events, and the aliases and weight after each rollout."""
    print("\nphase     failed  no-router  recovery_s  longest-gap_s  answered  note")
    for row in results.get("phases", []):
        print(
            f"{row['phase']:<9} {row['failed_with_status']:>6} {row['no_router']:>10} "
            f"{row['recovery_s']!s:>11} {row['longest_without_answer_s']!s:>14} {row['answered']:>9}  "
            f"{row['note']} {row['failure_kinds'] or ''}"
        )
    for name, fault in results.get("faults", {}).items():
        print(f"fault {name}: { ({k: v for k, v in fault.items() if k != 'at'}) }")
    captures = results.get("captures")
    if captures:
        print(
            f"\ncaptures: {captures['answered']} answered, {captures['captured_rows']} captured, "
            f"{captures['lost']} lost {captures['lost_by_phase']}, "
            f"{captures['captured_twice']} captured twice, "
            f"{captures['captured_not_answered']} captured but not answered to the client"
        )
    for rollout, check in (results.get("events") or {}).items():
        print(
            f"events {rollout}: {check['types']}; lost {len(check['lost'])}, duplicated "
            f"{len(check['duplicated'])}, one ending: {check['one_ending']}"
        )
    for key in ("rollout_A", "rollout_B", "rollout_C"):
        rollout = results.get(key)
        if rollout:
            end = rollout["end"]
            print(
                f"{key}: {rollout['outcome']} ({(rollout['reason'] or '')[:160]}) error={rollout['error']} "
                f"hung={rollout['hung']}; aliases {end['aliases']} weight {end['weight']:g} "
                f"tag {end['candidate_tag']} consistent={end['consistent']} cleaned_up={end['cleaned_up']}; "
                f"served {rollout['served']}"
            )
    print(f"final: {results.get('final')}")
    print(f"leftovers: {results.get('leftovers')}  error: {results.get('error')}")


if __name__ == "__main__":
    sys.exit(main())
