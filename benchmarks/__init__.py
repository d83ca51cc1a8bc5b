"""Scripts that measure the product: replays of real trainings, timings, the cluster benchmark and the tables behind docs/benchmarks.md (run as `python -m benchmarks.NAME`)."""
