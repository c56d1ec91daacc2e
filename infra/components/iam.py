"""WorkloadRole: an IAM role one Kubernetes service account assumes through IRSA, with only the listed rights."""

from __future__ import annotations

import json
from typing import Any, TypedDict

import pulumi
import pulumi_aws as aws


class WorkloadRoleArgs(TypedDict):
    """Who may assume the role (one service account) and what it may do (policy statements)."""

    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]
    namespace: pulumi.Input[str]
    service_account: pulumi.Input[str]
    statements: pulumi.Input[list[dict[str, Any]]]


def irsa_trust_policy(provider_arn: str, issuer: str, namespace: str, service_account: str) -> str:
    """Trust exactly one service account of one namespace, for the STS audience only."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Federated": provider_arn},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": {
                        "StringEquals": {
                            f"{issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                            f"{issuer}:aud": "sts.amazonaws.com",
                        }
                    },
                }
            ],
        }
    )


def bucket_prefix_statements(
    bucket_arn: str,
    key_arn: str | None,
    read_write: tuple[str, ...] | list[str],
    read_only: tuple[str, ...] | list[str] = (),
    get_put: tuple[str, ...] | list[str] = (),
) -> list[dict[str, Any]]:
    """Objects under these prefixes of one bucket only (by access), listing only them, its key.

    ``get_put``: read and overwrite, never delete.

    ``key_arn`` None: no KMS grant (MinIO's policies use the same statements without one).
    """
    statements: list[dict[str, Any]] = []
    if read_write:
        statements.append(
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                "Resource": [f"{bucket_arn}/{prefix}/*" for prefix in read_write],
            }
        )
    if read_only:
        statements.append(
            {
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": [f"{bucket_arn}/{p}/*" for p in read_only],
            }
        )
    if get_put:
        # Read and overwrite, never delete: a store written with conditional PUTs (If-Match / If-None-Match)
        # needs only these two, and nothing written there can be removed.
        statements.append(
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": [f"{bucket_arn}/{p}/*" for p in get_put],
            }
        )
    prefixes = [*read_write, *get_put, *read_only]
    statements.append(
        {
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [form for p in prefixes for form in (f"{p}/*", p)]}},
        }
    )
    if key_arn is not None:
        statements.append(
            {"Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": key_arn}
        )
    return statements


class WorkloadRole(pulumi.ComponentResource):
    """An IRSA role plus its inline policy; annotate the service account with ``role_arn``."""

    role_arn: pulumi.Output[str]

    def __init__(self, name: str, args: WorkloadRoleArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("lockgate:iam:WorkloadRole", name, None, opts)
        trust = pulumi.Output.all(
            args["oidc_provider_arn"], args["oidc_issuer"], args["namespace"], args["service_account"]
        ).apply(lambda values: irsa_trust_policy(*values))
        role = aws.iam.Role(
            f"{name}-role", assume_role_policy=trust, opts=pulumi.ResourceOptions(parent=self)
        )
        aws.iam.RolePolicy(
            f"{name}-policy",
            role=role.id,
            policy=pulumi.Output.from_input(args["statements"]).apply(
                lambda statements: json.dumps({"Version": "2012-10-17", "Statement": statements})
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.role_arn = role.arn
        self.register_outputs({"role_arn": self.role_arn})
