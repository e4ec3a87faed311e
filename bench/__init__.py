"""Benchmarks of medgrpo's hot paths: each module is runnable (``python -m bench.<name> [--quick] [--json PATH]``)
and compares the code under test side by side with a baseline in the same run (see docs/benchmarks.md)."""
