"""Lockgate's command line and the embedded local environment (Ray + MLflow on 127.0.0.1)."""
