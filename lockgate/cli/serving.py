"""What is served and its rollout: apply, and rollout status, set-weight, run, promote, rollback, pause, resume.

The rollout commands read and write the live rollout state (serving/livestate.py) the router follows:
the local environment's (its state directory) when one is up or nothing else is named, else the store
``LOCKGATE_LIVE_STATE_URI`` names in the user's shell, a stack's over its artefact store (stack mode).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from contracts.settings import EnvVar, Settings, rollout_state_dir
from contracts.vocabulary import Alias, RolloutOutcome
from lockgate.cli.common import (
    BACKEND_CAUSES,
    PIPELINE_FILE,
    SERVING_FILE,
    USAGE,
    CommandError,
    ConfigFile,
    JsonOption,
    ServingFileOption,
    StateDir,
    exits_on_error,
    progress_echo,
    show,
    stdout_is_tty,
)
from lockgate.localenv import LocalEnvironment
from lockgate.runtime import connect_ray, connected, local_environment, rollout_context
from serving.desired import APPLIED_WAIT_S, apply_desired, describe, load_serving_file, registry_aliases
from serving.livestate import ENDED, LiveState, LiveStateStore, LocalStateStore, open_store

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from serving.rollout import StepProgress

Emit = Callable[[str, str, dict[str, Any]], None]

commands = typer.Typer()
rollout_app = typer.Typer(no_args_is_help=True, help="Inspect and steer the candidate's traffic share.")

ENDED_WELL = frozenset({RolloutOutcome.promoted, RolloutOutcome.pinned})
NOT_PROMOTED = 3
"""``rollout run``'s exit code when the candidate was rolled back or stalled (a pipeline run's "blocked")."""


def live_store(state_dir: Path | None) -> tuple[LiveStateStore, LocalEnvironment | None]:
    """The live state store a rollout command works on, and the local environment when it is that one's.

    A local environment that is up wins; else ``LOCKGATE_LIVE_STATE_URI`` when set (a stack's store); else
    the state directory's (an environment that is down: its state is still read and written there).
    """
    env = local_environment(state_dir)
    uri = Settings.from_environ().live_state_uri
    if uri and (env.read_state() is None or not env.is_healthy()):
        return open_store(uri), None
    return LocalStateStore(rollout_state_dir(env.state_dir)), env


def _apply(env: LocalEnvironment, serving_file: Path) -> tuple[dict[str, Any], str]:
    """Deploy the desired serving state in place; returns what is now served (as data, and as a line).

    Returns once the router reports the live state applied (or after ``APPLIED_WAIT_S``).
    """
    file = load_serving_file(serving_file)
    store = LocalStateStore(rollout_state_dir(env.state_dir))
    with connected(env):
        router = apply_desired(
            env.dashboard_url, env.ray_auth_header(), file, (store, file.model_name), wait_s=APPLIED_WAIT_S
        )
    served = {
        "model_name": file.model_name,
        "champion": router.champion.uri,
        "candidate": router.candidate.uri if router.candidate else None,
        "traffic_mode": router.traffic.mode.value,
        "candidate_weight": router.traffic.candidate_weight,
        "url": f"http://{file.serving.http_host}:{file.serving.http_port}{file.serving.route_prefix}",
    }
    return served, describe(file, router)


def _show_applied(env: LocalEnvironment, serving_file: Path, as_json: bool, **result: Any) -> None:
    served, line = _apply(env, serving_file)
    show({**result, "served": served}, line, as_json)


def _update_live(store: LiveStateStore, model_name: str, **changes: Any) -> LiveState:
    """Change some fields of a model's live state, keeping the others (compare-and-set, retried)."""
    return store.update(model_name, lambda state: state.model_copy(update=changes))


@commands.command()
@exits_on_error(causes=BACKEND_CAUSES)
def apply(
    serving_file: ServingFileOption = SERVING_FILE, state_dir: StateDir = None, as_json: JsonOption = False
) -> None:
    """Render the desired serving state (file + rollout state + registry aliases) and deploy it in place."""
    _show_applied(local_environment(state_dir), serving_file, as_json)


@rollout_app.command("status")
@exits_on_error(causes=BACKEND_CAUSES)
def rollout_status(
    serving_file: ServingFileOption = SERVING_FILE, state_dir: StateDir = None, as_json: JsonOption = False
) -> None:
    """Show the live rollout state (candidate, weight, paused, lease) and whether the serving file pins the weight."""
    file = load_serving_file(serving_file)
    store, env = live_store(state_dir)
    state = store.read(file.model_name)[0]
    pinned = file.traffic.candidate_weight
    lease = state.lease
    result = {
        "model_name": file.model_name,
        "candidate_weight": state.candidate_weight,
        "paused": state.paused,
        "pinned_weight": pinned,
        "candidate": state.candidate,
        "champion": state.champion,
        "lease": lease.model_dump(mode="json") if lease is not None else None,
        "generation": state.generation,
        "store": store.location(file.model_name),
    }
    rollout = (
        f" of candidate v{state.candidate} against v{state.champion}"
        + (
            f", run by {lease.owner} (lease until {lease.expires_at.isoformat()})"
            if lease
            else ", no controller"
        )
        if state.candidate
        else ""
    )
    show(
        result,
        f"model {file.model_name}: rollout weight {state.candidate_weight:g}%"
        f"{' (paused)' if state.paused else ''}{rollout}; "
        + (f"pinned to {pinned:g}% by {serving_file}" if pinned is not None else "not pinned"),
        as_json,
    )


@rollout_app.command("set-weight")
@exits_on_error(causes=BACKEND_CAUSES)
def rollout_set_weight(
    weight: Annotated[float, typer.Argument(min=0, max=100, help="candidate share in percent")],
    serving_file: ServingFileOption = SERVING_FILE,
    state_dir: StateDir = None,
    as_json: JsonOption = False,
) -> None:
    """Write the candidate's share to the live state (a pin in the serving file still wins).

    Locally the registry's candidate is named live when no rollout holds one, and the command returns once
    the router serves the weight. On a stack only the store is written: the router follows it.
    """
    file = load_serving_file(serving_file)
    store, env = live_store(state_dir)
    if env is None:
        state = store.read(file.model_name)[0]
        if state.candidate is None:
            raise CommandError(
                f"model {file.model_name}: no candidate under rollout in {store.location(file.model_name)}; "
                "a weight needs one (start a rollout first)"
            )
        written = _update_live(store, file.model_name, candidate_weight=weight)
        show(
            {"model_name": file.model_name, "candidate_weight": weight, "generation": written.generation},
            f"model {file.model_name}: candidate v{written.candidate} weight {weight:g}% written to "
            f"{store.location(file.model_name)}; the stack's router follows it",
            as_json,
        )
        return
    _update_live(store, file.model_name, candidate_weight=weight)
    _show_applied(env, serving_file, as_json)


def _event_sender(
    config: PipelineConfig, config_dir: Path, model_name: str, candidate: str, echo: Callable[[str], None]
) -> Emit:
    """Print each rollout event with ``echo`` and emit it to the pipeline's event sinks, as the candidate's."""
    from pipeline.events import Event, EventType, emit

    def send(kind: str, message: str, details: dict[str, Any]) -> None:
        echo(f"[{kind}] {message}")
        event = Event(
            type=EventType(kind),
            pipeline=config.name,
            model_name=model_name,
            model_version=candidate,
            message=message,
            details=details,
        )
        emit(event, config.events, config_dir)

    return send


Progress = Callable[["StepProgress"], None]


@contextmanager
def _rollout_display(opening: str, as_json: bool) -> Iterator[tuple[Callable[[str], None], Progress]]:
    """Where ``rollout run`` shows its events and a holding step's live numbers; yields (echo, progress).

    On a terminal: a Rich status line the numbers update in place, events printed above it. Elsewhere (a
    pipe, CI) plain lines, one per report the controller's throttle lets through; under ``--json`` those go
    to stderr, so stdout carries the final result alone.
    """
    from serving.rollout import describe_progress

    if as_json or not stdout_is_tty():
        echo = progress_echo(as_json)
        yield echo, lambda progress: echo(f"[progress] {describe_progress(progress)}")
        return
    from rich.console import Console  # only on a terminal: the CLI's start-up stays light
    from rich.text import Text

    console = Console()
    # Text, not a markup string: a line holds "[0.000, 0.080]", which Rich would read as a style tag.
    with console.status(Text(opening), spinner="dots") as status:
        yield (
            lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True),
            lambda progress: status.update(Text(describe_progress(progress))),
        )


@rollout_app.command("run")
@exits_on_error(causes=BACKEND_CAUSES)
def rollout_run(
    config: ConfigFile = PIPELINE_FILE, state_dir: StateDir = None, as_json: JsonOption = False
) -> None:
    """Roll the current candidate out step by step: promote at 100%, roll back on the first breach."""
    from serving.live import rollout_controller

    with rollout_context(config, state_dir) as context:
        if context.remote:
            raise CommandError(
                "rollout run steers a local environment's traffic; on a stack traffic moves through stack "
                "config (README: 'Serve a model and shift canary traffic')",
                USAGE,
            )
        model_name = context.serving.model_name
        aliases = registry_aliases(model_name)
        if Alias.candidate not in aliases or Alias.champion not in aliases:
            raise CommandError(
                f"model {model_name} needs a champion and a candidate to roll out, has {aliases}"
            )
        champion, candidate = aliases[Alias.champion], aliases[Alias.candidate]
        opening = f"rolling out {model_name} v{candidate} against champion v{champion}"
        with _rollout_display(opening, as_json) as (echo, progress):
            send = _event_sender(context.config, config.resolve().parent, model_name, candidate, echo)
            connect_ray(context.env)
            target = context.env.serving_target()
            versions = (champion, candidate)
            controller = rollout_controller(
                context.config.rollout, target, context.serving_file, versions, send
            )
            # serving.live builds the effects without a progress sink: the display is this command's.
            controller.effects = replace(controller.effects, progress=progress)
            result = controller.run()
    outcome = {"outcome": result.outcome, "reason": result.reason, "steps": result.steps}
    show(outcome, "ROLLOUT_RESULT " + json.dumps(outcome, default=str), as_json)
    raise typer.Exit(0 if result.outcome in ENDED_WELL else NOT_PROMOTED)


@rollout_app.command("promote")
@exits_on_error(causes=BACKEND_CAUSES)
def rollout_promote(
    config: ConfigFile = PIPELINE_FILE, state_dir: StateDir = None, as_json: JsonOption = False
) -> None:
    """Promote the candidate now (compare-and-set on the aliases), then serve it as champion.

    On a stack (MLFLOW_TRACKING_URI and RAY_ADDRESS, no local environment up) the registry's aliases move and
    the stack's router follows the champion alias (unless `lockgate:models.champion` pins a version).
    """
    with rollout_context(config, state_dir) as context:
        # Ray reads its auth and loopback settings when it is imported: only once connected() has set them.
        from serving import promotion

        model_name = context.serving.model_name
        aliases = registry_aliases(model_name)
        if Alias.candidate not in aliases:
            raise CommandError(f"model {model_name} has no candidate to promote")
        connect_ray(None if context.remote else context.env)
        change = promotion.promote(model_name, aliases[Alias.candidate], aliases.get(Alias.champion))
        if not change.ok:
            raise CommandError(f"promotion refused: {change.reason}")
        if context.remote:
            _show_stack_aliases(model_name, change.aliases, as_json)
            return
        # The rollout (if any) ends: the router serves the new champion alone; a pause a person set stays.
        LocalStateStore(rollout_state_dir(context.env.state_dir)).update(
            model_name, lambda state: state.model_copy(update=ENDED)
        )
        _show_applied(context.env, context.serving_file, as_json, aliases=change.aliases)


def _show_stack_aliases(model_name: str, aliases: dict[str, str], as_json: bool) -> None:
    """On a stack: the registry's aliases now, and when the stack serves them.

    The stack's router follows the ``champion`` alias unless its config pins a version (README, "Who decides
    what serves"), so nothing is left to do. Pinning is not the advice: a pin would hold back every later
    promotion.
    """
    champion = aliases.get(Alias.champion)
    show(
        {"model_name": model_name, "aliases": aliases, "served": None},
        f"model {model_name}: aliases now {aliases}; the stack's router serves v{champion} at its next registry "
        "poll (it follows the champion alias; a stack that pins lockgate:models.champion serves its pin)",
        as_json,
    )


@rollout_app.command("rollback")
@exits_on_error(causes=BACKEND_CAUSES)
def rollout_rollback(
    config: ConfigFile = PIPELINE_FILE, state_dir: StateDir = None, as_json: JsonOption = False
) -> None:
    """Restore the previous champion (compare-and-set), then serve it (on a stack: the aliases only)."""
    with rollout_context(config, state_dir) as context:
        # Ray reads its auth and loopback settings when it is imported: only once connected() has set them.
        from serving import promotion

        model_name = context.serving.model_name
        store = _context_store(context.remote, context.env)
        live = store.read(model_name)[0]
        if live.candidate is not None:
            # A rollout in progress is what is rolled back: its candidate leaves traffic, the champion stays.
            store.update(model_name, lambda state: state.model_copy(update=ENDED))
            line = f"model {model_name}: rollout of candidate v{live.candidate} stopped, weight 0"
            if context.remote:
                show({"model_name": model_name, "stopped_candidate": live.candidate}, line, as_json)
                return
            _show_applied(context.env, context.serving_file, as_json, stopped_candidate=live.candidate)
            return
        connect_ray(None if context.remote else context.env)
        change = promotion.restore_previous(model_name)
        if not change.ok:
            raise CommandError(f"rollback refused: {change.reason}")
        if context.remote:
            _show_stack_aliases(model_name, change.aliases, as_json)
            return
        _show_applied(context.env, context.serving_file, as_json, aliases=change.aliases)


@rollout_app.command("pause")
@exits_on_error()
def rollout_pause(
    serving_file: ServingFileOption = SERVING_FILE, state_dir: StateDir = None, as_json: JsonOption = False
) -> None:
    """Stop automation at its next step; the current weight stays."""
    _set_paused(serving_file, state_dir, True, as_json)


@rollout_app.command("resume")
@exits_on_error()
def rollout_resume(
    serving_file: ServingFileOption = SERVING_FILE, state_dir: StateDir = None, as_json: JsonOption = False
) -> None:
    """Allow automation again (start it with `lockgate rollout run`)."""
    _set_paused(serving_file, state_dir, False, as_json)


def _set_paused(serving_file: Path, state_dir: Path | None, paused: bool, as_json: bool) -> None:
    file = load_serving_file(serving_file)
    store, _ = live_store(state_dir)
    _update_live(store, file.model_name, paused=paused)
    show(
        {"model_name": file.model_name, "paused": paused, "store": store.location(file.model_name)},
        f"rollout of {file.model_name} {'paused' if paused else 'resumed'}",
        as_json,
    )


def _context_store(remote: bool, env: LocalEnvironment) -> LiveStateStore:
    """The live state store of a rollout command's context: the stack's (``LOCKGATE_LIVE_STATE_URI``) or local."""
    if not remote:
        return LocalStateStore(rollout_state_dir(env.state_dir))
    uri = Settings.from_environ().live_state_uri
    if not uri:
        raise CommandError(
            f"{EnvVar.live_state_uri.value}: not set; on a stack this command needs the live rollout state's "
            "store (the artefact store's, e.g. s3://<bucket>/rollout)",
            USAGE,
        )
    return open_store(uri)
