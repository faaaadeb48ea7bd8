"""Data sets, routing and serving benchmarks, reports. Callers of coe, never called by it."""
