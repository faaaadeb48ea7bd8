"""Benchmark data sets, fetched as files from package registries and cached."""
