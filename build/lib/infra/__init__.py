"""The environment as Pulumi ComponentResources, wired by one composition root (infra/__main__.py)."""
