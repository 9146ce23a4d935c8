"""grpo-zoo's benchmarks: `python -m benchmarks [--quick] [--format json|md]` (see BENCHMARKS.md)."""
