"""Desired serving state: the version-controlled serving file (shape and pin) and the live rollout state.

What is deployed (the rendered serve config, ``serveConfigV2`` in a cluster) is the shape and the pin only:
the router follows the champion alias, and a weight written in the serving file is a pin that always wins.
The live rollout state (candidate, weight, paused: serving/livestate.py) is written to its store by the
rollout controller and ``lockgate rollout``, and the router follows it without a redeploy, so the rendered
config is byte-identical before and after a rollout.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from contracts.settings import Settings
from contracts.strict import StrictModel, format_problems
from contracts.vocabulary import Alias
from serving.livestate import LiveState, LiveStateStore, LocalStateStore, follow_live_state
from serving.spec import (
    AliasRef,
    CaptureFields,
    CaptureSpec,
    ModelRef,
    RouterConfig,
    ServingSpec,
    TrafficFields,
    TrafficMode,
    TrafficSpec,
)


class TrafficIntent(TrafficFields):
    """Traffic as the serving file states it; ``candidate_weight`` set means pinned."""

    candidate_weight: float | None = Field(default=None, ge=0.0, le=100.0)


class ServingFile(StrictModel):
    """The local serving file (serving.yaml): which registered model, how it is deployed, its traffic."""

    model_name: str = Field(min_length=1)
    serving: ServingSpec = ServingSpec()
    traffic: TrafficIntent = TrafficIntent()
    capture: CaptureFields = CaptureFields()


RolloutState = LiveState
"""The live rollout state under the name the local file had (old files with only weight and paused parse)."""


class ServingFileError(ValueError):
    """A serving file that cannot be read or does not validate; every problem with its field path."""


def load_serving_file(path: str | Path) -> ServingFile:
    """Read and validate the serving file."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
        return ServingFile.model_validate(raw)
    except OSError as error:
        raise ServingFileError(f"{path}: cannot read file: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ServingFileError(f"{path}: invalid YAML: {error}") from None
    except ValidationError as error:
        raise ServingFileError(f"{path}: " + "; ".join(format_problems(error))) from None


APPLIED_WAIT_S = 10.0
"""How long a local command waits for the router to report a live state change served (best effort)."""

StateRef = Path | tuple[LiveStateStore, str]
"""A model's live state: its local file (``<dir>/<model>.json``), or a store and the model's name in it."""


def state_document(state: StateRef) -> tuple[LiveStateStore, str]:
    """The store and document name a StateRef names (a file ``<dir>/<name>.json`` is document ``name``)."""
    if isinstance(state, Path):
        return LocalStateStore(state.parent), state.stem
    return state


def read_rollout_state(state: StateRef) -> LiveState:
    """The live rollout state (defaults when none was written yet)."""
    store, name = state_document(state)
    return store.read(name)[0]


def write_rollout_state(state: StateRef, value: LiveState) -> None:
    """Replace the live rollout state whole (compare-and-set against what is there now)."""
    store, name = state_document(state)
    store.update(name, lambda _: value)


def update_rollout_state(state: StateRef, **changes: Any) -> LiveState:
    """Change some fields of the live rollout state and keep the others, as one step among concurrent writers.

    The controller, the CLI (`rollout set-weight|pause|resume`) and a pipeline run all write it: each
    read-modify-write is a compare-and-set retried on conflict, so a pause is never lost to a weight change,
    and a bad value is refused, never written.
    """
    store, name = state_document(state)
    return store.update(name, lambda current: current.model_copy(update=changes))


def resolve_capture(file: ServingFile, default_uri: str | None) -> CaptureSpec:
    """The capture settings: the file's, with the environment's capture location unless the file names one."""
    intent = file.capture
    uri = intent.uri or default_uri
    if intent.sample_percent > 0 and not uri:
        raise ServingFileError(
            f"capture.uri: capture.sample_percent is {intent.sample_percent:g} but no location is given "
            "and this environment has no default one"
        )
    return CaptureSpec(**{**intent.model_dump(), "uri": uri if intent.sample_percent > 0 else intent.uri})


def resolve_router_config(
    file: ServingFile, state: RolloutState, aliases: dict[str, str], capture_uri: str | None = None
) -> RouterConfig:
    """The router's user_config from the file, the rollout state, the registry's aliases and capture."""
    if Alias.champion not in aliases:
        raise ServingFileError(
            f"model '{file.model_name}' has no '{Alias.champion}' alias: nothing to serve yet"
        )
    champion = ModelRef(name=file.model_name, version=aliases[Alias.champion])
    candidate_version = aliases.get(Alias.candidate)
    candidate = None
    if candidate_version is not None and candidate_version != champion.version:
        candidate = ModelRef(name=file.model_name, version=candidate_version)
    intent = file.traffic
    weight = intent.candidate_weight if intent.candidate_weight is not None else state.candidate_weight
    traffic: dict[str, Any] = {"mode": intent.mode, "sticky_header": intent.sticky_header}
    if candidate is not None:
        traffic["shadow_percent"] = intent.shadow_percent if intent.mode == TrafficMode.shadow else 0.0
        traffic["candidate_weight"] = 0.0 if intent.mode == TrafficMode.shadow else weight
    elif intent.candidate_weight is not None and intent.mode != TrafficMode.shadow:
        traffic["candidate_weight"] = intent.candidate_weight  # a pin holds for a candidate named later
    return RouterConfig(
        champion=champion,
        candidate=candidate,
        traffic=TrafficSpec.model_validate(traffic),
        capture=resolve_capture(file, capture_uri),
        registry_poll_s=file.serving.registry_poll_s,
        batch_max_rows=file.serving.batch_max_rows,
        weight_pinned=intent.candidate_weight is not None,
    )


def following_router_config(file: ServingFile, capture_uri: str | None = None) -> RouterConfig:
    """The shape and pin only: the router serves whatever version holds the ``champion`` alias, when one does.

    What local mode deploys, and a cluster that pins no version: the router starts, answers 503 until the
    registry names a champion, then serves it (and each later champion) without a redeploy; the candidate
    and its weight come from the live rollout state. A weight in the file is a pin (``weight_pinned``)
    and a shadow share is shape: both apply to whichever candidate the live state names.
    """
    intent = file.traffic
    pinned = intent.candidate_weight is not None
    shadow = intent.mode == TrafficMode.shadow
    return RouterConfig(
        champion=AliasRef(name=file.model_name, alias=Alias.champion),
        traffic=TrafficSpec(
            mode=intent.mode,
            sticky_header=intent.sticky_header,
            shadow_percent=intent.shadow_percent if shadow else 0.0,
            candidate_weight=(intent.candidate_weight or 0.0) if not shadow else 0.0,
        ),
        capture=resolve_capture(file, capture_uri),
        registry_poll_s=file.serving.registry_poll_s,
        batch_max_rows=file.serving.batch_max_rows,
        weight_pinned=pinned,
    )


def aliases_of(client: Any, model_name: str) -> dict[str, str]:
    """A registered model's aliases as alias → version, read through ``client`` (an ``MlflowClient``)."""
    return {alias: str(v) for alias, v in client.get_registered_model(model_name).aliases.items()}


def registry_aliases(model_name: str) -> dict[str, str]:
    """The registered model's aliases as alias → version."""
    from mlflow.tracking import MlflowClient

    return aliases_of(MlflowClient(), model_name)


def apply_desired(
    dashboard_url: str,
    headers: dict[str, str],
    file: ServingFile,
    state: StateRef,
    capture_uri: str | None = None,
    wait_s: float = 0.0,
) -> RouterConfig:
    """Deploy the shape (file and pin: the champion alias followed), and name the registry's candidate live.

    The deployed config never names a candidate or a live weight: a redeploy of an unchanged shape changes
    nothing. A candidate the registry names that no rollout holds yet is written to the live state (at its
    current weight) so the router serves it; it is first loaded and scored here (:func:`preflight`) and
    nothing is written or deployed when it fails. Should the application still fail to deploy, the router's
    previous ``user_config`` is deployed again, and the error says so. ``wait_s`` > 0: wait that long for the
    router to report the live state written (:func:`wait_live_applied`). Returns what is served now.
    """
    from serving.deploy import DeployError, deploy_config, router_user_config, wait_running
    from serving.render import ROUTER_DEPLOYMENT_NAME, render_serve_config

    store, name = state_document(state)
    aliases = registry_aliases(file.model_name)
    if Alias.champion not in aliases:
        raise ServingFileError(
            f"model '{file.model_name}' has no '{Alias.champion}' alias: nothing to serve yet"
        )
    shape = following_router_config(file, capture_uri or Settings.from_environ().capture_uri)
    app_name = file.serving.app_name
    previous = router_user_config(dashboard_url, headers, app_name)
    live = adopt_registry_candidate(store, name, file.model_name, aliases, previous)
    rendered = render_serve_config(file.serving, shape)
    deploy_config(dashboard_url, headers, rendered)
    try:
        wait_running(dashboard_url, headers, app_name)
    except DeployError as error:
        if previous is None:
            raise
        rendered = copy.deepcopy(rendered)  # the same shape, with what served before
        for application in rendered["applications"]:
            for deployment in application["deployments"]:
                if application["name"] == app_name and deployment["name"] == ROUTER_DEPLOYMENT_NAME:
                    deployment["user_config"] = previous
        deploy_config(dashboard_url, headers, rendered)
        wait_running(dashboard_url, headers, app_name)
        raise DeployError(
            f"{error}; {describe_previous(previous)} was deployed again and keeps serving"
        ) from None
    if wait_s > 0:
        wait_live_applied(file.serving, live.generation, wait_s)
    return served_config(shape, live, aliases)


def describe_previous(previous: dict[str, Any]) -> str:
    """The configuration that served before, in a few words (its champion version or alias)."""
    champion = previous.get("champion") or {}
    which = f"v{champion['version']}" if "version" in champion else f"@{champion.get('alias', '?')}"
    return f"the previous configuration (champion {which})"


def adopt_registry_candidate(
    store: LiveStateStore,
    name: str,
    model_name: str,
    aliases: dict[str, str],
    previous: dict[str, Any] | None = None,
) -> LiveState:
    """Name the registry's candidate in the live state (document ``name``) when no rollout holds one.

    What ``lockgate apply`` / ``rollout set-weight`` did when the deployed config carried the candidate:
    the candidate alias's version serves at the live weight. It is loaded and scored first unless the router
    serves it already (``previous``: its user_config; DeployError naming it, nothing written). A rollout in
    progress (a lease, or a candidate already named) is left as it is. Returns the live state now.
    """
    live = store.read(name)[0]
    champion, candidate = aliases[Alias.champion], aliases.get(Alias.candidate)
    if live.candidate is not None or live.lease is not None or candidate is None or candidate == champion:
        return live
    preflight(
        RouterConfig(
            champion=ModelRef(name=model_name, version=champion),
            candidate=ModelRef(name=model_name, version=candidate),
        ),
        previous,
        skip_champion=True,
    )

    def adopt(current: LiveState) -> LiveState:
        if current.candidate is not None or current.lease is not None:
            return current  # a rollout started meanwhile: it decides
        return current.model_copy(update={"candidate": candidate, "champion": champion})

    return store.update(name, adopt)


def served_config(shape: RouterConfig, live: LiveState, aliases: dict[str, str]) -> RouterConfig:
    """What the router serves once it applied ``live``: the followed alias shown as the version it names."""
    config = follow_live_state(shape, live)
    if isinstance(config.champion, AliasRef) and Alias.champion in aliases:
        champion = ModelRef(name=config.champion.name, version=aliases[Alias.champion])
        config = RouterConfig.model_validate({**config.model_dump(), "champion": champion})
    return config


def wait_live_applied(spec: ServingSpec, generation: int, timeout_s: float) -> bool:
    """Wait until the router (its health endpoint) reports live state ``generation`` or later applied.

    Local mode only: the router's HTTP address is the serving file's. True when seen; False on timeout or
    when the router does not follow a live state (it then reports none).
    """
    import requests

    url = f"http://{spec.http_host}:{spec.http_port}{spec.route_prefix.rstrip('/')}/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            report = requests.get(url, timeout=2).json().get("live_state")
        except (requests.RequestException, ValueError):
            report = None
        if isinstance(report, dict) and (report.get("generation") or 0) >= generation:
            return True
        time.sleep(0.1)
    return False


SMOKE_ATTEMPTS = 20
"""A version is refused when it fails its input example this many times in a row: it cannot answer at all.
One that fails only sometimes is the rollout's to judge, on live traffic against its error-rate bound."""


def preflight(router: RouterConfig, previous: dict[str, Any] | None, skip_champion: bool = False) -> None:
    """Load and score every version the router does not serve yet, before anything is deployed.

    It is scored on its own input example (or another version's, same model name, when it logged none).
    A version that does not load, or fails every one of ``SMOKE_ATTEMPTS`` tries, raises ``DeployError``
    naming it; the running router is untouched.
    """
    from serving.deploy import DeployError
    from serving.scoring import LoadedModel

    served = {
        (ref.get("name"), ref.get("version"))
        for ref in ((previous or {}).get("champion"), (previous or {}).get("candidate"))
        if isinstance(ref, dict)
    }
    # A followed alias is resolved by the router itself, on its own schedule: nothing to check ahead of it.
    refs = [ref for ref in (router.champion, router.candidate) if isinstance(ref, ModelRef)]
    if skip_champion:  # the router serves the champion already: only what is new to it is checked here
        refs = refs[1:]
    loaded: dict[str, Any] = {}
    for ref in refs:
        if (ref.name, ref.version) in served:
            continue
        try:
            loaded[ref.uri] = LoadedModel.load(ref)
        except Exception as error:  # any failure to load is this version's: it must not reach the router
            raise DeployError(f"model {ref.uri} cannot be served: it does not load: {error}") from None
    smoke_score(loaded)


def smoke_score(loaded: dict[str, Any], others: list[Any] | None = None) -> None:
    """Score each loaded version (URI → ``LoadedModel``) on its input example; DeployError naming a failure.

    A version that logged no example is scored on another one's (``loaded`` or ``others``, same model
    name); with none at all it is not scored. It fails only when all ``SMOKE_ATTEMPTS`` tries fail.
    """
    from serving.deploy import DeployError

    pool = [*loaded.values(), *(others or [])]
    examples = [m.model.input_example for m in pool if m.model.input_example is not None]
    for uri, model in loaded.items():
        example = (
            model.model.input_example if model.model.input_example is not None else next(iter(examples), None)
        )
        if example is None:
            continue
        rows = example.to_dict("records") if hasattr(example, "to_dict") else list(example)
        failure: Exception | None = None
        for _ in range(SMOKE_ATTEMPTS):
            try:
                model.predict(rows)
            except Exception as error:  # any failure to answer is this version's
                failure = error
            else:
                failure = None
                break
        if failure is not None:
            raise DeployError(
                f"model {uri} cannot be served: it fails on its input example "
                f"({SMOKE_ATTEMPTS} attempts): {failure}"
            ) from None


def describe(file: ServingFile, router: RouterConfig) -> str:
    """One line saying what is served, how, and where."""
    candidate = router.candidate.uri if router.candidate else "none"
    spec = file.serving
    return (
        f"serving {router.champion.uri} (champion) and {candidate} (candidate), {router.traffic.mode.value} "
        f"split, candidate weight {router.traffic.candidate_weight:g}% at "
        f"http://{spec.http_host}:{spec.http_port}{spec.route_prefix}"
    )
