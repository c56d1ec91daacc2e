"""Run the whole Pulumi program (infra/__main__.py) under mocks for one stack file; write what it declared.

Pulumi's mocks and config are process-global, so each stack configuration runs in its own process:

    python -m tests.infra.driver Pulumi.dev.yaml --set lockgate:canaryWeight=25 --out result.json

Values set with ``secure:`` in the stack file are replaced by a test value and marked secret, as the engine
would pass them after decryption.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEST_SECRET = "test-secret-value"


def engine_config(stack_file: Path, overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    """The stack file's config as the engine passes it: strings, objects as JSON, secrets decrypted."""
    document = yaml.safe_load(stack_file.read_text()) or {}
    raw: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in (document.get("config") or {}).items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            raw[key] = TEST_SECRET
            secret_keys.append(key)
        elif isinstance(value, dict | list):
            raw[key] = json.dumps(value)
        elif isinstance(value, bool):
            raw[key] = "true" if value else "false"
        else:
            raw[key] = str(value)
    for override in overrides:
        key, _, value = override.partition("=")
        if key.startswith("secret:"):  # as `pulumi config set --secret` stores it
            key = key.removeprefix("secret:")
            secret_keys.append(key)
        raw[key] = value
    return raw, secret_keys


def run(stack_file: Path, overrides: list[str]) -> dict[str, Any]:
    """Run the program once; the declared resources and the resolved stack outputs."""
    import pulumi

    from tests.infra.mocks import install

    stack = stack_file.name.removeprefix("Pulumi.").removesuffix(".yaml")
    mocks = install(stack=stack)
    raw, secret_keys = engine_config(stack_file, overrides)
    pulumi.runtime.set_all_config(raw, secret_keys)
    exported: dict[str, Any] = {}
    resolved: dict[str, Any] = {}
    secret_flags: dict[str, Any] = {}

    def record_export(key: str, value: Any) -> None:
        exported[key] = value

    # The program's exports are what the tests compare; the mock engine would only keep them on the stack.
    pulumi.export = record_export  # type: ignore[assignment]

    @pulumi.runtime.test
    def program() -> Any:
        runpy.run_path(str(ROOT / "infra" / "__main__.py"), run_name="__main__")
        # Which outputs are Pulumi secrets (`pulumi stack output` hides them without --show-secrets).
        flags: dict[str, Any] = {k: pulumi.Output.from_input(v).is_secret() for k, v in exported.items()}
        return pulumi.Output.all(
            pulumi.Output.all(**exported).apply(resolved.update),
            pulumi.Output.all(**{k: pulumi.Output.from_input(f) for k, f in flags.items()}).apply(
                secret_flags.update
            ),
        )

    program()
    return {
        "stack": stack,
        "resources": [item.to_json() for item in mocks.recorded],
        "exports": resolved,
        "secret_exports": sorted(key for key, secret in secret_flags.items() if secret),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stack_file", type=Path)
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        result = run(args.stack_file, args.overrides)
    except Exception as error:  # the test reads the message from the output file
        args.out.write_text(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return 1
    args.out.write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
