"""Ephemeral test stacks with Pulumi's Automation API: create one from the template, bring it up, tear it down.

    .venv/bin/python scripts/ephemeral_stack.py up [--suffix pr-42]     # prints the stack outputs
    .venv/bin/python scripts/ephemeral_stack.py down --suffix pr-42     # destroy + remove the stack
    .venv/bin/python scripts/ephemeral_stack.py cycle                   # up, check the outputs, down

The stack is named ``ephemeral-<suffix>``; its config is ``infra/stacks/ephemeral.yaml`` with the suffix
filled in (its own namespace, so several live side by side on one cluster). Needs the Pulumi CLI and a
logged-in backend (``pulumi login`` or ``PULUMI_BACKEND_URL``); without the CLI it says so and exits 3.
"""

from __future__ import annotations

import argparse
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "stacks" / "ephemeral.yaml"
EXIT_SKIPPED = 3
SUFFIX_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,18}[a-z0-9])?$"
# Outputs a healthy ephemeral stack must have (infra/exports.py names them).
REQUIRED_OUTPUTS = ("namespace", "mlflowTrackingUri", "serveUrl", "rayService")


def stack_name(suffix: str) -> str:
    """The stack's name for a suffix; the suffix must fit a Kubernetes namespace name."""
    if re.fullmatch(SUFFIX_PATTERN, suffix) is None:
        raise ValueError(
            f"suffix {suffix!r} must be 1-20 lowercase letters, digits or '-', not starting or ending with '-'"
        )
    return f"ephemeral-{suffix}"


def render_stack_file(template: str, suffix: str) -> str:
    """The stack config file for one ephemeral stack."""
    stack_name(suffix)
    return template.replace("{suffix}", suffix)


def missing_outputs(outputs: dict[str, Any]) -> list[str]:
    """Required outputs that are absent or empty."""
    return [key for key in REQUIRED_OUTPUTS if not outputs.get(key)]


def pulumi_cli_missing() -> str | None:
    """Why the Automation API cannot run here, or None when it can."""
    if shutil.which("pulumi") is None:
        return (
            "the Pulumi CLI is not installed (the Automation API drives it); see the README's deploy section"
        )
    return None


def select_stack(suffix: str) -> Any:
    """Write the stack's config file and create or select the stack on the logged-in backend."""
    from pulumi import automation as auto

    name = stack_name(suffix)
    (ROOT / f"Pulumi.{name}.yaml").write_text(render_stack_file(TEMPLATE.read_text(), suffix))
    return auto.create_or_select_stack(stack_name=name, work_dir=str(ROOT))


def up(suffix: str) -> dict[str, Any]:
    """Create or update the stack; its outputs (secrets masked)."""
    stack = select_stack(suffix)
    result = stack.up(on_output=print, color="never")
    return {key: ("[secret]" if value.secret else value.value) for key, value in result.outputs.items()}


def down(suffix: str) -> None:
    """Destroy everything the stack made, remove the stack and its config file."""
    stack = select_stack(suffix)
    stack.destroy(on_output=print, color="never")
    stack.workspace.remove_stack(stack.name)
    (ROOT / f"Pulumi.{stack.name}.yaml").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Run one action; 0 done, 1 the stack came up incomplete, 3 skipped (no Pulumi CLI)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=("up", "down", "cycle"))
    parser.add_argument(
        "--suffix", default=None, help="stack suffix (default: a random one; required for down)"
    )
    args = parser.parse_args(argv)
    if args.action == "down" and args.suffix is None:
        parser.error("down needs --suffix")
    suffix = args.suffix or secrets.token_hex(3)
    try:
        stack_name(suffix)
    except ValueError as error:
        parser.error(str(error))
    reason = pulumi_cli_missing()
    if reason is not None:
        print(f"skipped: {reason}")
        return EXIT_SKIPPED
    if args.action == "down":
        down(suffix)
        return 0
    try:
        outputs = up(suffix)
        print({key: outputs[key] for key in sorted(outputs)})
        missing = missing_outputs(outputs)
        if missing:
            print(f"stack {stack_name(suffix)} is missing outputs: {', '.join(missing)}")
            return 1
    finally:
        if args.action == "cycle":
            down(suffix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
