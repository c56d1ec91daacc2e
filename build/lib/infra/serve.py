"""The RayService's serve config: serving's own resolver and renderer, fed from the stack config.

Local mode turns serving.yaml + rollout state + registry aliases into a RouterConfig and renders it; a
cluster does the same with the stack's ``serve`` block, its pinned versions (``models``) in place of the
aliases, and ``canaryWeight`` as the pin. Nothing here writes a serve setting of its own.
"""

from __future__ import annotations

from typing import Any

from contracts.vocabulary import Alias
from serving.desired import RolloutState, ServingFile, resolve_router_config
from serving.render import render_serve_config, render_serve_yaml
from serving.spec import RouterConfig


def stack_serving_file(serve: ServingFile, canary_weight: float | None) -> ServingFile:
    """The serving file this stack deploys: ``canaryWeight``, when set, is the traffic pin."""
    if canary_weight is None:
        return serve
    traffic = serve.traffic.model_copy(update={"candidate_weight": canary_weight})
    return serve.model_copy(update={"traffic": traffic})


def stack_aliases(champion: str, candidate: str | None) -> dict[str, str]:
    """The stack's pinned versions in the shape the registry's aliases have."""
    aliases = {Alias.champion.value: champion}
    if candidate is not None:
        aliases[Alias.candidate.value] = candidate
    return aliases


def stack_router_config(
    serve: ServingFile, canary_weight: float | None, champion: str, candidate: str | None, capture_uri: str
) -> RouterConfig:
    """The router's user_config exactly as local mode resolves it (a config pin and no rollout state).

    ``capture_uri``: the artefact store's capture location, the default where the file names none.
    """
    file = stack_serving_file(serve, canary_weight)
    return resolve_router_config(file, RolloutState(), stack_aliases(champion, candidate), capture_uri)


def stack_serve_config(
    serve: ServingFile, canary_weight: float | None, champion: str, candidate: str | None, capture_uri: str
) -> dict[str, Any]:
    """The rendered, validated serve config for the RayService."""
    router = stack_router_config(serve, canary_weight, champion, candidate, capture_uri)
    return render_serve_config(stack_serving_file(serve, canary_weight).serving, router)


def stack_serve_yaml(
    serve: ServingFile, canary_weight: float | None, champion: str, candidate: str | None, capture_uri: str
) -> str:
    """``serveConfigV2`` text from serving's renderer: sorted keys, so an unchanged config never diffs."""
    router = stack_router_config(serve, canary_weight, champion, candidate, capture_uri)
    return render_serve_yaml(stack_serving_file(serve, canary_weight).serving, router)
