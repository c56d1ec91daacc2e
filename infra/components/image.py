"""CodeImage: how code reaches the cluster — `pulumi up` builds the code image and pushes it, tagged by content.

The build context is exactly the files the Dockerfile copies (``IMAGE_INPUTS``, enforced by the allowlist
``infra/image/Dockerfile.dockerignore``, which both BuildKit and the docker-build provider's context hash
prefer over a root .dockerignore: pulumi-docker-build v0.0.22 provider/internal/context.go). Stack files
(``Pulumi.<stack>.yaml``, which `pulumi config set` rewrites), infra/, tests/ and the rest never enter it,
so a canary-weight or model-version change neither rebuilds nor re-pushes the image, and the Ray cluster
keeps its image. The tag is a hash of those files, the build arguments and the platforms, so an unchanged
input is an unchanged tag (never re-pushed with another digest to ECR's immutable tags) and pods run the
pushed digest. Images build on `pulumi up` only, never on preview (no Docker needed to preview).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TypedDict

import pulumi
import pulumi_docker_build as docker_build

DOCKERFILE = Path("infra/image/Dockerfile")
DOCKERIGNORE = Path("infra/image/Dockerfile.dockerignore")
# Exactly what the Dockerfile copies into the image, relative to the repository root (the Dockerfile itself
# is read apart from the context).
IMAGE_INPUTS: tuple[str, ...] = (
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


def dockerignore_text(inputs: tuple[str, ...] = IMAGE_INPUTS) -> str:
    """The allowlist .dockerignore for ``inputs``: everything is excluded, then each input re-included."""
    lines = [
        "# Generated from IMAGE_INPUTS (infra/components/image.py); tests/infra fail when the two differ.",
        "# An allowlist: the build context is exactly what the Dockerfile copies, nothing else.",
        "*",
        *(f"!{entry}" for entry in inputs),
        "**/__pycache__",
        "**/*.pyc",
    ]
    return "\n".join(lines) + "\n"


def context_files(root: Path, inputs: tuple[str, ...] = IMAGE_INPUTS) -> list[Path]:
    """Every file of the build context, relative to ``root``, in a stable order."""
    files: list[Path] = []
    for entry in inputs:
        path = root / entry
        if not path.exists():
            raise FileNotFoundError(f"image input {entry} is missing under {root}")
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files += [
            file.relative_to(root)
            for file in found
            if not SKIPPED_PARTS & set(file.relative_to(root).parts) and file.suffix != ".pyc"
        ]
    return files


def code_fingerprint(
    root: Path,
    inputs: tuple[str, ...] = IMAGE_INPUTS,
    build_args: dict[str, str] | None = None,
    platforms: tuple[str, ...] = (),
) -> str:
    """A short hash of everything the image is built from, stable across machines and checkouts.

    The Dockerfile, the context's files (paths and bytes), the build arguments and the platforms.
    """
    digest = hashlib.sha256()
    dockerfile = root / DOCKERFILE
    for relative, path in [(DOCKERFILE, dockerfile)] if dockerfile.is_file() else []:
        digest.update(relative.as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    for file in context_files(root, inputs):
        digest.update(file.as_posix().encode() + b"\0")
        digest.update(hashlib.sha256((root / file).read_bytes()).digest())
    for key, value in sorted((build_args or {}).items()):
        digest.update(f"arg:{key}={value}\0".encode())
    for platform in sorted(platforms):
        digest.update(f"platform:{platform}\0".encode())
    return digest.hexdigest()[:16]


class RegistryLogin(TypedDict):
    """Credentials for pushing (a Pulumi secret password); None for a registry the local Docker already trusts."""

    address: pulumi.Input[str]
    username: pulumi.Input[str]
    password: pulumi.Input[str]


class CodeImageArgs(TypedDict):
    """Where the repository is, where to push, and for which platforms (one image per platform, one tag)."""

    root: Path
    repository: pulumi.Input[str]
    login: RegistryLogin | None
    platforms: list[str]
    ray_version: str


class CodeImage(pulumi.ComponentResource):
    """The code image, built with BuildKit and pushed; ``ref`` is the pushed digest reference."""

    ref: pulumi.Output[str]
    tag: pulumi.Output[str]

    def __init__(self, name: str, args: CodeImageArgs, opts: pulumi.ResourceOptions | None = None):
        root = args["root"]
        if not (root / DOCKERFILE).is_file():
            raise ValueError(f"root: {root} has no {DOCKERFILE}")
        if (root / DOCKERIGNORE).read_text() != dockerignore_text():
            raise ValueError(
                f"root: {DOCKERIGNORE} is not the allowlist of IMAGE_INPUTS (dockerignore_text())"
            )
        if not args["platforms"]:
            raise ValueError("platforms: at least one platform to build")
        super().__init__("lockgate:build:CodeImage", name, None, opts)
        build_args = {"RAY_VERSION": args["ray_version"]}
        fingerprint = code_fingerprint(root, build_args=build_args, platforms=tuple(args["platforms"]))
        tag = pulumi.Output.concat(args["repository"], ":", fingerprint)
        login = args["login"]
        image = docker_build.Image(
            f"{name}-image",
            context=docker_build.BuildContextArgs(location=str(root)),
            dockerfile=docker_build.DockerfileArgs(location=str(root / DOCKERFILE)),
            build_args=build_args,
            platforms=[docker_build.Platform(platform) for platform in args["platforms"]],
            tags=[tag],
            push=True,
            # Preview shows the new tag without building: previews need no Docker, and nothing is pushed.
            build_on_preview=False,
            # ECR's token changes every run; the provider ignores registry password changes in its diff
            # (pulumi-docker-build v0.0.22 provider/internal/image.go), so a new token rebuilds nothing.
            registries=[docker_build.RegistryArgs(**login)] if login is not None else None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.ref = image.ref
        self.tag = tag
        self.register_outputs({"ref": self.ref, "tag": self.tag})
