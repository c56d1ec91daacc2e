"""Contracts between the planes: one vocabulary, the environment's settings, the strict config base.

The bottom of the import graph: it imports only the standard library and pydantic, so infra, pipeline,
serving and the CLI can all use it without an arrow pointing upward.
"""
