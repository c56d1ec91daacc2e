"""The environment as Pulumi ComponentResources; the composition root (infra/__main__.py) arrives with issue #4."""
