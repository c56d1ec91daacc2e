"""Lockgate's Pulumi policy pack: mandatory rules (rules.py) and the pack that enforces them (__main__.py)."""
