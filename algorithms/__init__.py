"""Algorithm families, one file each, registered by name.

Adding an algorithm is adding a file here: a Config dataclass (subclass of
grpo_zoo.core.algorithm.AlgorithmConfig), and an Algorithm subclass decorated with
@register("name") that returns a rollout plan with per-transition weights.
Every module in this package is imported when an algorithm is looked up.
"""
