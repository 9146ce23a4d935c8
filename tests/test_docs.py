"""README's algorithm table is generated from the registry and must match it."""

from grpo_zoo import docs


def test_readme_algorithm_table_matches_the_registry():
    text = docs.README.read_text()
    assert text == docs.readme_with_table(text), (
        "README's algorithm table is stale: run `python -m grpo_zoo.docs --write`"
    )


def test_every_algorithm_names_its_paper_and_reference():
    from grpo_zoo.core import algorithm

    for name in algorithm.names(plugins=False):
        cls = algorithm.get(name)
        assert cls.paper and cls.reference, f"{name}: set `paper` and `reference` on the class"
        assert cls.__module__.startswith("grpo_zoo.algorithms.") or cls.__module__.count("."), name
