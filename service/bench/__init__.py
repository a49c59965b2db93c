"""Benchmarks and the soak run of a real ``samplerd serve`` (``samplerd bench ...``)."""
