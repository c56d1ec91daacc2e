"""The Ray Serve application: router, model deployments, rollout controller, serve-config renderer (issue #3)."""
