"""The chaos benchmark's parts (benchmarks/bench_chaos.py is its entry point)."""
