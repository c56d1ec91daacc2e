"""The directory the local Ray head puts first on its ``PYTHONPATH``: see ``sitecustomize``."""
