"""kmemdump's benchmarks: ``python -m benchmarks`` prints every target as a ratio measured in one run."""
