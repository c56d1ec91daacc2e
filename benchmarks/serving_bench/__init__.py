"""The serving benchmark's parts; ``benchmarks/bench_serving.py`` is the entry point."""
