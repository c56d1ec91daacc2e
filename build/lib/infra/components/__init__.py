"""One ComponentResource per part of the environment; the composition root (infra/__main__.py) wires them."""
