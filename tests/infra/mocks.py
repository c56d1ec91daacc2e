"""One mocks class for every infra test: plausible provider outputs keyed on type tokens, and a record of
every resource the program registers (type, name, parent, inputs with Pulumi secrets unwrapped and marked).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockMonitor

SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
ACCOUNT = "123456789012"
REGION = "eu-west-1"


@dataclass
class Recorded:
    """One registered resource: its inputs as plain data, and the dotted paths that were Pulumi secrets."""

    type: str
    name: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    secret_paths: list[str] = field(default_factory=list)
    # URNs of the resources it waits for (depends_on, and those whose outputs its inputs use).
    dependencies: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "parent": self.parent,
            "custom": self.custom,
            "inputs": self.inputs,
            "secret_paths": self.secret_paths,
            "dependencies": self.dependencies,
        }


def plain(value: Any, path: str, secrets: list[str]) -> Any:
    """Unwrap secret envelopes (noting where they were); integral floats back to ints (the wire has only floats)."""
    if isinstance(value, dict):
        if value.get(SECRET_SIG_KEY) == SECRET_SIG:
            secrets.append(path)
            return plain(value.get("value"), path, secrets)
        return {key: plain(item, f"{path}.{key}" if path else key, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item, f"{path}.{index}", secrets) for index, item in enumerate(value)]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def outputs_for(typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """What a provider would return for this resource, beyond its inputs."""
    arn = f"arn:aws:{typ.split(':')[1].split('/')[0]}:{REGION}:{ACCOUNT}:{name}"
    if typ == "random:index/randomPassword:RandomPassword":
        return {"result": f"generated-{name}"}
    if typ == "random:index/randomId:RandomId":
        return {"hex": "0a1b2c3d", "b64Url": "ChssPQ", "dec": "169552957"}
    if typ == "aws:s3/bucket:Bucket":
        return {"bucket": f"{name}-bucket", "arn": f"arn:aws:s3:::{name}-bucket"}
    if typ == "aws:eks/cluster:Cluster":
        issuer = f"https://oidc.eks.{REGION}.amazonaws.com/id/EXAMPLE"
        return {
            "name": name,
            "arn": arn,
            "endpoint": f"https://{name}.eks.amazonaws.com",
            "certificateAuthority": {"data": "Q0EtREFUQQ=="},
            "identities": [{"oidcs": [{"issuer": issuer}]}],
            "vpcConfig": {**inputs.get("vpcConfig", {}), "clusterSecurityGroupId": f"sg-{name}"},
        }
    if typ == "aws:ecr/repository:Repository":
        return {
            "arn": arn,
            "name": name,
            "registryId": ACCOUNT,
            "repositoryUrl": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{name}",
        }
    if typ == "aws:rds/instance:Instance":
        return {"address": f"{name}.rds.amazonaws.com", "port": 5432, "arn": arn}
    if typ == "docker-build:index:Image":
        tag = inputs.get("tags", ["image:latest"])[0]
        return {"ref": f"{tag}@sha256:{'0' * 64}", "digest": f"sha256:{'0' * 64}"}
    if typ.startswith("kubernetes:") and isinstance(inputs.get("metadata"), dict):
        metadata = dict(inputs["metadata"])
        metadata.setdefault("name", f"{name}-generated")
        return {"metadata": metadata}
    if typ.startswith("aws:"):
        return {"arn": arn, "name": inputs.get("name", name)}
    return {}


class LockgateMocks(pulumi.runtime.Mocks):
    """Answers the engine's calls with plausible outputs and records every registration."""

    def __init__(self) -> None:
        self.recorded: list[Recorded] = []
        self.local = threading.local()

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        secrets: list[str] = []
        inputs = plain(dict(args.inputs), "", secrets)
        self.recorded.append(
            Recorded(
                args.typ,
                args.name,
                getattr(self.local, "parent", ""),
                bool(args.custom),
                inputs,
                secrets,
                list(getattr(self.local, "dependencies", [])),
            )
        )
        state = {**dict(args.inputs), **outputs_for(args.typ, args.name, inputs)}
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            zones = [f"{REGION}{letter}" for letter in "abc"]
            return {"names": zones, "zoneIds": zones, "id": REGION}, []
        if args.token == "aws:index/getRegion:getRegion":
            return {
                "region": REGION,
                "name": REGION,
                "id": REGION,
                "endpoint": f"ec2.{REGION}.amazonaws.com",
            }, []
        if args.token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            return {
                "userName": "AWS",
                "password": "ecr-token",
                "authorizationToken": "QVdTOmVjci10b2tlbg==",
                "proxyEndpoint": f"https://{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com",
                "id": REGION,
            }, []
        return {}, []

    def reset(self) -> None:
        self.recorded.clear()


class RecordingMonitor(MockMonitor):
    """The mock monitor, telling the mocks each registration's parent URN."""

    def __init__(self, mocks: LockgateMocks):
        super().__init__(mocks)
        self.lockgate_mocks = mocks

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - the gRPC method name
        self.lockgate_mocks.local.parent = request.parent
        self.lockgate_mocks.local.dependencies = sorted(
            {*request.dependencies, *(u for deps in request.propertyDependencies.values() for u in deps.urns)}
        )
        return super().RegisterResource(request)


def install(project: str = "lockgate", stack: str = "test") -> LockgateMocks:
    """Install the mocks process-wide (Pulumi's runtime is global) and return them."""
    mocks = LockgateMocks()
    # Pulumi's runtime takes the main thread's event loop; an earlier asyncio.run() in the same test process
    # (the e2e tests' job log streaming) leaves none set, so give it a fresh one.
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(
        mocks, project=project, stack=stack, preview=False, monitor=RecordingMonitor(mocks)
    )
    return mocks
