"""Benchmarks of optax_tfrmsprop against its peers; see docs/benchmarks.md."""
