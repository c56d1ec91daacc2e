"""AWS KMS keys the components encrypt their data with."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws


def rotating_key(resource_name: str, description: str, opts: pulumi.ResourceOptions) -> aws.kms.Key:
    """A customer-managed key, rotated yearly, recoverable for 30 days after it is scheduled for deletion."""
    return aws.kms.Key(
        resource_name,
        description=description,
        enable_key_rotation=True,
        deletion_window_in_days=30,
        opts=opts,
    )
