"""The policy pack: every rule in policy/rules.py, mandatory. Run by the Pulumi CLI, never imported by tests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

# The CLI runs this file with policy/ as its directory: make the repository root importable for policy.rules.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policy.rules import RESOURCE_RULES, STACK_RULES, ResourceRule, StackResource, StackRule  # noqa: E402


def resource_validator(rule: ResourceRule) -> Any:
    """Adapt a rule function to pulumi-policy's resource validation callback."""

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for problem in rule(args.resource_type, args.props):
            report_violation(problem, None)

    return validate


def stack_validator(rule: StackRule) -> Any:
    """Adapt a stack rule function to pulumi-policy's stack validation callback."""

    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = [
            StackResource(
                resource.resource_type,
                resource.name,
                resource.props,
                resource.parent.urn if resource.parent is not None else "",
            )
            for resource in args.resources
        ]
        for problem in rule(resources):
            report_violation(problem, None)

    return validate


def policies() -> list[Policy]:
    """Every rule as a mandatory policy."""
    found: list[Policy] = [
        ResourceValidationPolicy(
            name=name,
            description=description,
            validate=resource_validator(rule),
            enforcement_level=EnforcementLevel.MANDATORY,
        )
        for name, (description, rule) in RESOURCE_RULES.items()
    ]
    found.extend(
        StackValidationPolicy(
            name=name,
            description=description,
            validate=stack_validator(rule),
            enforcement_level=EnforcementLevel.MANDATORY,
        )
        for name, (description, rule) in STACK_RULES.items()
    )
    return found


if __name__ == "__main__":
    PolicyPack(name="lockgate-policies", enforcement_level=EnforcementLevel.MANDATORY, policies=policies())
