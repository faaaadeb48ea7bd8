"""GPU benchmarks run on a lent GPU machine (see docs/serving.md)."""
