"""CodeImage: how code reaches the cluster — `pulumi up` builds the code image and pushes it, tagged by content.

The tag is a hash of every file the Dockerfile copies, so an unchanged tree is an unchanged image (no
rollout), a changed one is a new immutable tag, and pods run the pushed digest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TypedDict

import pulumi
import pulumi_docker_build as docker_build

DOCKERFILE = Path("infra/image/Dockerfile")
# Exactly what the Dockerfile copies into the image, relative to the repository root.
IMAGE_INPUTS: tuple[str, ...] = (
    "infra/image/Dockerfile",
    "requirements.lock",
    "pyproject.toml",
    "README.md",
    "pipeline.yaml",
    "serving.yaml",
    "contracts",
    "lockgate",
    "pipeline",
    "serving",
    "data",
)
SKIPPED_PARTS = frozenset({"__pycache__"})


def code_fingerprint(root: Path, inputs: tuple[str, ...] = IMAGE_INPUTS) -> str:
    """A short hash of the image's inputs (paths and bytes), stable across machines and checkouts."""
    digest = hashlib.sha256()
    for entry in inputs:
        path = root / entry
        if not path.exists():
            raise FileNotFoundError(f"image input {entry} is missing under {root}")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if SKIPPED_PARTS & set(file.relative_to(root).parts) or file.suffix == ".pyc":
                continue
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]


class RegistryLogin(TypedDict):
    """Credentials for pushing (a Pulumi secret password); None for a registry the local Docker already trusts."""

    address: pulumi.Input[str]
    username: pulumi.Input[str]
    password: pulumi.Input[str]


class CodeImageArgs(TypedDict):
    """Where the repository is, where to push, and for which platform."""

    root: Path
    repository: pulumi.Input[str]
    login: RegistryLogin | None
    platform: str
    ray_version: str


class CodeImage(pulumi.ComponentResource):
    """The code image, built with BuildKit and pushed; ``ref`` is the pushed digest reference."""

    ref: pulumi.Output[str]
    tag: pulumi.Output[str]

    def __init__(self, name: str, args: CodeImageArgs, opts: pulumi.ResourceOptions | None = None):
        if not (args["root"] / DOCKERFILE).is_file():
            raise ValueError(f"root: {args['root']} has no {DOCKERFILE}")
        super().__init__("lockgate:build:CodeImage", name, None, opts)
        fingerprint = code_fingerprint(args["root"])
        tag = pulumi.Output.concat(args["repository"], ":", fingerprint)
        login = args["login"]
        image = docker_build.Image(
            f"{name}-image",
            context=docker_build.BuildContextArgs(location=str(args["root"])),
            dockerfile=docker_build.DockerfileArgs(location=str(args["root"] / DOCKERFILE)),
            build_args={"RAY_VERSION": args["ray_version"]},
            platforms=[docker_build.Platform(args["platform"])],
            tags=[tag],
            push=True,
            registries=[docker_build.RegistryArgs(**login)] if login is not None else None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.ref = image.ref
        self.tag = tag
        self.register_outputs({"ref": self.ref, "tag": self.tag})
