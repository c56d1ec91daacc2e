"""Tests that run locally what a Kubernetes cluster would run: KubeRay's submitter command, the serve config."""
