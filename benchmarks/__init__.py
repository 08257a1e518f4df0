"""Speed and memory measurements (not tests): run each from the repository root with `python -m benchmarks.NAME`."""
