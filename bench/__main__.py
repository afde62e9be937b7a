"""Benchmarks for Pigeon, run with ``make bench`` (never part of the test suite)."""

print("no benchmarks yet")
