"""The live rollout state of a model (candidate, weight, paused, the rollout's lease) in a compare-and-set store.

One of the three inputs that decide what serves (README "Who decides what serves"): the *shape* comes from
version control (serving file / stack config), an optional *pin* from the same place, and this *live state*
from the rollout controller and the ``lockgate rollout`` commands. The router follows it by polling, so a
weight change needs no Serve redeploy and the rendered ``serveConfigV2`` never changes during a rollout.

The store is a directory URI holding ``<model name>.json`` per model: a local directory (the path layout of
``contracts.settings.rollout_state_path``) or ``s3://bucket/prefix``. Every write is conditional on what the
writer read (a token: the content's hash locally, the object's ETag on S3), so two writers never lose each
other's change and one rollout at a time per model is enforced by a lease written through the same
compare-and-set, not by hope.

S3 semantics relied on (AWS S3 User Guide, "How to prevent object overwrites with conditional writes",
https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html, and the PutObject reference):
``put_object(IfNoneMatch="*")`` fails with 412 when the key exists, ``put_object(IfMatch=etag)`` fails with 412
when the ETag differs, 404 ``NoSuchKey`` when the key is gone, and a concurrent conditional write may get
409 ``ConditionalRequestConflict`` (retry after reading again). MinIO honours both headers (minio/minio
PR #19681 for ``If-None-Match: *``, issue #21526 fixed ``If-Match`` on a missing key). moto 5.2.5 (the
dev lock) checks both in ``moto/s3/responses.py`` ``put_object`` (412 ``PreconditionFailed``, 404 for
``If-Match`` on a missing key); its check-then-put is not atomic across threads of its server, real S3's is.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from contracts.strict import StrictModel, format_problems
from serving.spec import (
    MODEL_NAME_PATTERN,
    MODEL_VERSION_PATTERN,
    AliasRef,
    ModelRef,
    RouterConfig,
    TrafficMode,
)

Token = str | None
"""What a read saw: the content's hash (local) or the object's ETag (S3); None when there was no document."""

DEFAULT_LEASE_TTL_S = 60.0
"""How long a rollout's lease lasts without a heartbeat: a controller that died is taken over after this."""
UPDATE_ATTEMPTS = 20


class RolloutLease(StrictModel):
    """Who runs the rollout of a model now, since when, and until when without a heartbeat."""

    owner: str = Field(min_length=1, max_length=200)
    started_at: datetime
    expires_at: datetime

    def expired(self, now: datetime) -> bool:
        """Whether its controller stopped heartbeating long enough ago to be taken over."""
        return now >= self.expires_at


class LiveState(StrictModel):
    """The live rollout state of one model; an old file with only candidate_weight/paused still parses."""

    # The version under rollout and the champion it is judged against (both None: no rollout).
    candidate: str | None = Field(default=None, pattern=MODEL_VERSION_PATTERN)
    champion: str | None = Field(default=None, pattern=MODEL_VERSION_PATTERN)
    candidate_weight: float = Field(default=0.0, ge=0.0, le=100.0)
    paused: bool = False
    lease: RolloutLease | None = None
    # Bumped by every write: the router reports the generation it applies (bench_live_state.py measures it).
    generation: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _candidate_judged_against_champion(self) -> LiveState:
        if self.candidate is not None and self.candidate == self.champion:
            raise ValueError(f"candidate must differ from champion, both are version {self.candidate}")
        return self


class LiveStateError(RuntimeError):
    """The store cannot be read or written, or holds a document that does not validate."""


class StateConflict(LiveStateError):
    """A conditional write lost: the document changed since it was read."""


class RolloutBusy(LiveStateError):
    """Another rollout of the same model holds an unexpired lease."""


class LeaseLost(LiveStateError):
    """The lease this controller holds is gone or belongs to another owner (it expired and was reclaimed)."""


def parse_state(text: str, where: str) -> LiveState:
    """A stored document as a LiveState; LiveStateError naming ``where`` and each bad field otherwise."""
    try:
        return LiveState.model_validate_json(text)
    except ValidationError as error:
        raise LiveStateError(f"{where}: " + "; ".join(format_problems(error))) from None


def dump_state(state: LiveState) -> str:
    """The document's text: sorted keys, so identical states are identical bytes."""
    return state.model_dump_json(indent=2) + "\n"


class LiveStateStore(ABC):
    """``<model>.json`` documents under one directory URI, each written only if unchanged since read."""

    uri: str

    @abstractmethod
    def read(self, model: str) -> tuple[LiveState, Token]:
        """The model's state and the token of what was read (defaults and None when there is none yet)."""

    @abstractmethod
    def write(self, model: str, state: LiveState, token: Token) -> Token:
        """Replace the document only if it is still what ``token`` saw; StateConflict otherwise."""

    def read_if_changed(self, model: str, token: Token) -> tuple[LiveState, Token] | None:
        """The state when it differs from what ``token`` saw, else None (S3: a conditional GET)."""
        state, seen = self.read(model)
        return None if seen == token else (state, seen)

    def update(
        self, model: str, change: Callable[[LiveState], LiveState], attempts: int = UPDATE_ATTEMPTS
    ) -> LiveState:
        """Read, change, write conditionally; on a conflict read again and retry. Returns what was written.

        ``change`` may raise to refuse (a lease held by another rollout): nothing is written then; when it
        returns the state unchanged nothing is written either.
        """
        for attempt in range(attempts):
            state, token = self.read(model)
            changed = change(state)
            if changed == state:
                return state  # nothing to change: no write, the generation stays
            # Validated again: model_copy(update=...) does not validate.
            new = LiveState.model_validate({**changed.model_dump(), "generation": state.generation + 1})
            try:
                self.write(model, new, token)
            except StateConflict:
                time.sleep(min(0.01 * 2**attempt, 0.2))
                continue
            return new
        raise StateConflict(f"{self.location(model)}: still changing after {attempts} attempts")

    @abstractmethod
    def location(self, model: str) -> str:
        """Where the model's document lives, for messages."""


def check_model_name(model: str) -> str:
    """The model name, refused when it could name a path outside the store (a slash, a leading dot)."""
    import re

    if re.fullmatch(MODEL_NAME_PATTERN, model) is None:
        raise ValueError(f"model name {model!r} does not match {MODEL_NAME_PATTERN}")
    return model


class LocalStateStore(LiveStateStore):
    """A local directory: a lock beside each document, a unique temporary file, then a rename."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.uri = str(self.directory)

    def path(self, model: str) -> Path:
        """The model's document (the layout of ``contracts.settings.rollout_state_path``)."""
        return self.directory / f"{check_model_name(model)}.json"

    def location(self, model: str) -> str:
        """The document's path."""
        return str(self.path(model))

    def read(self, model: str) -> tuple[LiveState, Token]:
        """The state and the hash of its bytes (defaults and None when there is no file yet)."""
        path = self.path(model)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return LiveState(), None
        except OSError as error:
            raise LiveStateError(f"{path}: cannot read: {error.strerror}") from None
        return parse_state(data.decode(), str(path)), hashlib.sha256(data).hexdigest()

    def write(self, model: str, state: LiveState, token: Token) -> Token:
        """Under the lock: compare what is there with ``token``, then replace it by a rename."""
        from filelock import FileLock

        path = self.path(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = dump_state(state).encode()
        with FileLock(str(path.with_name(f".{path.name}.lock")), timeout=30):
            try:
                current: Token = hashlib.sha256(path.read_bytes()).hexdigest()
            except FileNotFoundError:
                current = None
            if current != token:
                raise StateConflict(f"{path}: changed since it was read")
            # A name no other writer uses, then an atomic rename: a reader sees the old or the new file whole.
            descriptor, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(data)
                os.replace(staging, path)
            except BaseException:
                Path(staging).unlink(missing_ok=True)
                raise
        return hashlib.sha256(data).hexdigest()


CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409"})
"""S3 answers that mean "changed since read" to a conditional PUT (412, 409, and 404 for a deleted key)."""
NOT_MODIFIED_CODES = frozenset({"304", "NotModified"})


class S3StateStore(LiveStateStore):
    """``s3://bucket/prefix``: conditional PUTs on the object's ETag, conditional GETs to poll cheaply.

    Credentials come from boto3's standard chain (environment, IRSA web identity, instance profile); the
    endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when set (MinIO, moto), as for every other
    S3 client of the project (pyarrow reads the same variables).
    """

    def __init__(self, uri: str, client: Any = None):
        from urllib.parse import urlsplit

        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"live state URI {uri!r}: expected s3://bucket[/prefix]")
        self.uri, self.bucket, self.prefix = uri, parts.netloc, parts.path.strip("/")
        self._client = client

    @property
    def client(self) -> Any:
        """The S3 client, made on first use (nothing is opened when the store is built)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Short timeouts and few retries: the router polls every second and keeps its state on failure.
            config = Config(
                connect_timeout=2, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"}
            )
            self._client = boto3.client("s3", config=config)
        return self._client

    def key(self, model: str) -> str:
        """The model's object key."""
        name = f"{check_model_name(model)}.json"
        return f"{self.prefix}/{name}" if self.prefix else name

    def location(self, model: str) -> str:
        """The object's URI."""
        return f"s3://{self.bucket}/{self.key(model)}"

    def _get(self, model: str, **conditions: Any) -> tuple[LiveState, Token] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key(model), **conditions)
            data = answer["Body"].read()
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in NOT_MODIFIED_CODES:
                return None
            if code in ("NoSuchKey", "404"):
                return LiveState(), None
            raise LiveStateError(f"{self.location(model)}: cannot read: {code}: {error}") from None
        except BotoCoreError as error:
            raise LiveStateError(f"{self.location(model)}: cannot read: {error}") from None
        return parse_state(data.decode(), self.location(model)), str(answer["ETag"])

    def read(self, model: str) -> tuple[LiveState, Token]:
        """The state and the object's ETag (defaults and None when there is no object yet)."""
        result = self._get(model)
        assert result is not None, "an unconditional GET is never 'not modified'"  # noqa: S101 - invariant
        return result

    def read_if_changed(self, model: str, token: Token) -> tuple[LiveState, Token] | None:
        """A conditional GET (If-None-Match: ETag): 304 costs no body when nothing changed."""
        if token is None:
            state, seen = self.read(model)
            return None if seen is None else (state, seen)
        return self._get(model, IfNoneMatch=token)

    def write(self, model: str, state: LiveState, token: Token) -> Token:
        """PUT with If-Match: ETag (or If-None-Match: * when there was no object); StateConflict when refused."""
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {"IfNoneMatch": "*"} if token is None else {"IfMatch": token}
        try:
            answer = self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(model),
                Body=dump_state(state).encode(),
                ContentType="application/json",
                **condition,
            )
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in CONFLICT_CODES:
                raise StateConflict(f"{self.location(model)}: changed since it was read ({code})") from None
            raise LiveStateError(f"{self.location(model)}: cannot write: {code}: {error}") from None
        except BotoCoreError as error:
            raise LiveStateError(f"{self.location(model)}: cannot write: {error}") from None
        return str(answer["ETag"])


def open_store(uri: str) -> LiveStateStore:
    """The store a live state URI names: ``s3://bucket/prefix``, or a local directory (a path or file://)."""
    if uri.startswith("s3://"):
        return S3StateStore(uri)
    if uri.startswith("file://"):
        return LocalStateStore(uri.removeprefix("file://"))
    if "://" in uri:
        raise ValueError(f"live state URI {uri!r}: expected a local directory or s3://bucket/prefix")
    return LocalStateStore(uri)


ENDED: dict[str, Any] = {"lease": None, "candidate": None, "champion": None, "candidate_weight": 0.0}
"""The fields a finished (or reclaimed) rollout resets; ``paused`` is a person's and stays."""


def utc_now() -> datetime:
    """Now, timezone-aware (leases compare against it)."""
    return datetime.now(UTC)


def acquire(
    store: LiveStateStore,
    model: str,
    owner: str,
    champion: str,
    candidate: str,
    ttl_s: float = DEFAULT_LEASE_TTL_S,
    now: Callable[[], datetime] = utc_now,
) -> LiveState:
    """Start a rollout of ``candidate`` against ``champion``: only if no unexpired lease of another owner exists.

    A new candidate starts at weight 0; ``paused`` is kept (a person's pause outlives pipeline runs).
    Raises RolloutBusy naming the model and the running candidate otherwise.
    """

    def take(state: LiveState) -> LiveState:
        moment = now()
        lease = state.lease
        if lease is not None and lease.owner != owner and not lease.expired(moment):
            raise RolloutBusy(
                f"model {model}: a rollout of candidate version {state.candidate} (against champion "
                f"{state.champion}) is running, owner {lease.owner}, lease until {lease.expires_at.isoformat()}; "
                f"refusing to start candidate version {candidate}"
            )
        weight = state.candidate_weight if state.candidate == candidate else 0.0
        return state.model_copy(
            update={
                "candidate": candidate,
                "champion": champion,
                "candidate_weight": weight,
                "lease": RolloutLease(
                    owner=owner, started_at=moment, expires_at=moment + timedelta(seconds=ttl_s)
                ),
            }
        )

    return store.update(model, take)


def held_lease(state: LiveState, model: str, owner: str) -> RolloutLease:
    """The lease ``owner`` holds in ``state``; LeaseLost when it holds none (it expired and was reclaimed)."""
    if state.lease is None or state.lease.owner != owner:
        holder = state.lease.owner if state.lease is not None else "nobody"
        raise LeaseLost(f"model {model}: the rollout lease of {owner} is gone (held by {holder})")
    return state.lease


def heartbeat(
    store: LiveStateStore,
    model: str,
    owner: str,
    ttl_s: float = DEFAULT_LEASE_TTL_S,
    now: Callable[[], datetime] = utc_now,
) -> LiveState:
    """Extend the lease ``owner`` holds by ``ttl_s`` from now; LeaseLost when it holds none any more."""

    def extend(state: LiveState) -> LiveState:
        lease = held_lease(state, model, owner)
        renewed = lease.model_copy(update={"expires_at": now() + timedelta(seconds=ttl_s)})
        return state.model_copy(update={"lease": renewed})

    return store.update(model, extend)


def release(store: LiveStateStore, model: str, owner: str) -> LiveState:
    """End the rollout ``owner`` runs: lease, candidate, champion go and the weight is 0; ``paused`` is kept.

    What serves afterwards is the shape's: the registry's champion alias (moved first by a promotion). Releasing
    a lease that is already gone is not an error (it expired and was reclaimed): the state is left as it is.
    """

    def drop(state: LiveState) -> LiveState:
        if state.lease is None or state.lease.owner != owner:
            return state
        return state.model_copy(update=ENDED)

    return store.update(model, drop)


def reclaim_orphan(
    store: LiveStateStore, model: str, now: Callable[[], datetime] = utc_now
) -> LiveState | None:
    """Take over a rollout whose lease expired (its controller died): weight 0, no candidate, no lease.

    The registry's champion serves alone again (a promotion moves the aliases before it ends, so a controller
    that died before that leaves them unmoved). Returns the safe state written, or None when there was nothing
    to reclaim (no lease, or one still alive).
    """
    reclaimed: list[LiveState] = []

    def reset(state: LiveState) -> LiveState:
        reclaimed.clear()
        if state.lease is None or not state.lease.expired(now()):
            return state
        reclaimed.append(state)
        return state.model_copy(update=ENDED)

    written = store.update(model, reset)
    return written if reclaimed else None


def follow_live_state(shape: RouterConfig, live: LiveState | None) -> RouterConfig:
    """What the router serves: the deployed ``user_config`` (shape and pins) with the live rollout state applied.

    A pin always wins: a champion or candidate version in the config, and a pinned weight
    (``weight_pinned``). Otherwise the live state names the champion a rollout is judged against (instead
    of the followed alias), the candidate and its weight. A live candidate is taken only when the champion
    served is the one it is judged against; shadow mode never gives the candidate a weight.
    """
    if live is None:
        return shape
    name = shape.champion.name
    champion = shape.champion
    if isinstance(champion, AliasRef) and live.champion is not None and live.candidate is not None:
        champion = ModelRef(name=name, version=live.champion)
    candidate = shape.candidate
    if (
        candidate is None
        and live.candidate is not None
        and isinstance(champion, ModelRef)
        and champion.version == live.champion
    ):
        candidate = ModelRef(name=name, version=live.candidate)
    traffic = shape.traffic
    if candidate is not None and not shape.weight_pinned and traffic.mode != TrafficMode.shadow:
        weight = live.candidate_weight if candidate.version == live.candidate else traffic.candidate_weight
        traffic = traffic.model_copy(update={"candidate_weight": weight})
    return RouterConfig.model_validate(
        {**shape.model_dump(), "champion": champion, "candidate": candidate, "traffic": traffic.model_dump()}
    )
