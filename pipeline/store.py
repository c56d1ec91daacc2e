"""Small JSON state and JSON-lines histories under a local directory or an object-store URI.

The trigger checker keeps its memory here (guardrail state, how far traffic has been judged) and the history
the report draws (drift scores, serving samples): locally under the state directory, in a cluster under the
artefact store (``s3://…``), so a checker that runs as a fresh pod each time still remembers. One writer at a
time is assumed (a local ``lockgate watch``, or a CronJob that forbids concurrent runs): a document is
replaced whole (renamed into place locally, one PUT on an object store), and an append to a history on an
object store rewrites the object. Concurrent writers of one document never break each other's write
(each writes its own temporary file); the last rename wins.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pyarrow.fs as pafs

from serving.capture import filesystem


class StateStore:
    """JSON documents and JSON-lines files under ``uri`` (a path or any ``pyarrow.fs`` URI)."""

    def __init__(self, uri: str):
        self.uri = uri
        self._fs, self._root = filesystem(uri)
        self._local = isinstance(self._fs, pafs.LocalFileSystem)

    def child(self, *parts: str) -> StateStore:
        """The store under a sub-path of this one."""
        return StateStore("/".join([self.uri.rstrip("/"), *parts]))

    def _path(self, name: str) -> str:
        return f"{self._root.rstrip('/')}/{name}"

    def names(self) -> list[str]:
        """Every document below this store, as names relative to it, sorted (none when it does not exist)."""
        if self._fs.get_file_info(self._root).type == pafs.FileType.NotFound:
            return []
        root = self._root.rstrip("/") + "/"
        infos = self._fs.get_file_info(pafs.FileSelector(self._root, recursive=True))
        return sorted(
            info.path.removeprefix(root)
            for info in infos
            if info.is_file and not info.base_name.startswith(".") and not info.path.endswith(".partial")
        )

    def read_text(self, name: str) -> str | None:
        """A document's text, or None when there is none."""
        path = self._path(name)
        if self._fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self._fs.open_input_stream(path) as stream:
            return bytes(stream.read()).decode()

    def write_text(self, name: str, text: str) -> None:
        """Replace a document whole (``name`` may hold sub-directories)."""
        path = self._path(name)
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        # A temporary name of its own per write: two checkers (``watch`` and ``triggers check``) may replace the
        # same document at once, and a shared name would let one rename the other's file away.
        target = f"{path}.{uuid.uuid4().hex}.partial" if self._local else path
        with self._fs.open_output_stream(target) as stream:
            stream.write(text.encode())
        if self._local:
            self._fs.move(target, path)

    def read(self, name: str, default: Any = None) -> Any:
        """A JSON document, or ``default`` when there is none yet."""
        text = self.read_text(name)
        if text is None:
            return default
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{self._path(name)}: not JSON: {error}") from None

    def write(self, name: str, value: Any) -> None:
        """Replace a JSON document whole."""
        self.write_text(name, json.dumps(value, sort_keys=True))

    def append(self, name: str, row: dict[str, Any]) -> None:
        """Add one row to a JSON-lines history."""
        line = json.dumps(row, sort_keys=True) + "\n"
        if self._local:
            self._fs.create_dir(self._root, recursive=True)
            with open(self._path(name), "a") as handle:
                handle.write(line)
            return
        self.write_text(name, (self.read_text(name) or "") + line)

    def rows(self, name: str) -> list[dict[str, Any]]:
        """The rows of a JSON-lines history (none when it does not exist)."""
        text = self.read_text(name) or ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]
