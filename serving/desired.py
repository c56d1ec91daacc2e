"""Desired serving state: the version-controlled serving file plus the rollout state, resolved to a RouterConfig.

A weight written in the serving file is a pin and always wins; without one, the rollout state (what
`lockgate rollout set-weight` and, later, the rollout controller write) decides the candidate's share.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from contracts.settings import Settings
from contracts.strict import StrictModel, format_problems
from contracts.vocabulary import Alias
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


class RolloutState(StrictModel):
    """What automation and `lockgate rollout` commands last decided."""

    candidate_weight: float = Field(default=0.0, ge=0.0, le=100.0)
    paused: bool = False


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


def read_rollout_state(path: Path) -> RolloutState:
    """The last decided rollout state (defaults when none was written yet)."""
    return RolloutState.model_validate_json(path.read_text()) if path.exists() else RolloutState()


def write_rollout_state(path: Path, state: RolloutState) -> None:
    """Replace the rollout state atomically: a sibling file of a name no other writer uses, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(state.model_dump(mode="json"), indent=2, sort_keys=True))
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def update_rollout_state(path: Path, **changes: Any) -> RolloutState:
    """Change some fields of the rollout state and keep the others, as one step among concurrent writers.

    The controller, the CLI (`rollout set-weight|pause|resume`) and a pipeline run all write this file: a
    lock beside it makes each read-modify-write whole, so a pause is never lost to a weight change.
    """
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(f".{path.name}.lock")), timeout=30):
        state = read_rollout_state(path).model_copy(update=changes)
        RolloutState.model_validate(state.model_dump())  # a bad value is refused, never written
        write_rollout_state(path, state)
    return state


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
    return RouterConfig(
        champion=champion,
        candidate=candidate,
        traffic=TrafficSpec.model_validate(traffic),
        capture=resolve_capture(file, capture_uri),
        registry_poll_s=file.serving.registry_poll_s,
        batch_max_rows=file.serving.batch_max_rows,
    )


def following_router_config(file: ServingFile, capture_uri: str | None = None) -> RouterConfig:
    """A router that pins no version: it serves whatever version holds the ``champion`` alias, when one does.

    What a cluster deploys before its first model is registered: the router starts, answers 503 until the
    registry names a champion, then serves it (and each later champion) without a redeploy.
    """
    intent = file.traffic
    return RouterConfig(
        champion=AliasRef(name=file.model_name, alias=Alias.champion),
        traffic=TrafficSpec(mode=intent.mode, sticky_header=intent.sticky_header),
        capture=resolve_capture(file, capture_uri),
        registry_poll_s=file.serving.registry_poll_s,
        batch_max_rows=file.serving.batch_max_rows,
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
    state_path: Path,
    capture_uri: str | None = None,
    judged: tuple[str, str] | None = None,
) -> RouterConfig:
    """Resolve file + rollout state + aliases, render, deploy declaratively, wait until RUNNING.

    ``judged``: (champion, candidate) of a rollout in progress. They are served whatever the aliases say
    meanwhile, so the weights always move the version the rollout judges (a run that registers the next
    candidate mid-rollout waits for this one to end).

    Serving never goes down for a bad model: a version that is not served yet is first loaded and scored
    here (:func:`preflight`), and nothing is deployed when it fails. Should the application still fail to
    deploy, the router's previous ``user_config`` is deployed again, and the error says so.
    """
    from serving.deploy import DeployError, deploy_config, router_user_config, wait_running
    from serving.render import ROUTER_DEPLOYMENT_NAME, render_serve_config

    aliases = (
        registry_aliases(file.model_name)
        if judged is None
        else {Alias.champion.value: judged[0], Alias.candidate.value: judged[1]}
    )
    router = resolve_router_config(
        file, read_rollout_state(state_path), aliases, capture_uri or Settings.from_environ().capture_uri
    )
    app_name = file.serving.app_name
    previous = router_user_config(dashboard_url, headers, app_name)
    preflight(router, previous)
    rendered = render_serve_config(file.serving, router)
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
            f"{error}; the previous configuration (champion v{previous['champion']['version']}) was deployed "
            "again and keeps serving"
        ) from None
    return router


SMOKE_ATTEMPTS = 20
"""A version is refused when it fails its input example this many times in a row: it cannot answer at all.
One that fails only sometimes is the rollout's to judge, on live traffic against its error-rate bound."""


def preflight(router: RouterConfig, previous: dict[str, Any] | None) -> None:
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
    loaded: dict[str, Any] = {}
    for ref in refs:
        if (ref.name, ref.version) in served:
            continue
        try:
            loaded[ref.uri] = LoadedModel.load(ref)
        except Exception as error:  # any failure to load is this version's: it must not reach the router
            raise DeployError(f"model {ref.uri} cannot be served: it does not load: {error}") from None
    examples = [m.model.input_example for m in loaded.values() if m.model.input_example is not None]
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
