"""The contract between the bench and a method, and what every method shares.

    contract.py         the data of one iteration (Plan, contexts, rollout records, items, Batch, Terms)
    algorithm.py        Algorithm: config, plan, advantages; the algorithm registry
    objective.py        Objective: items and loss; the objective registry; PPO-clip (the default)
    forward_process.py  the base of objectives on re-noised clean samples (DiffusionNFT, AWM)
    advantages.py       group-relative advantages
    loss.py             the clipped loss, the Gaussian KL, weight normalisation
    ema.py              averaged and trailing copies of the weights
    registry.py         discovery of in-tree algorithms (algorithms/) and plugins
A method's own code lives whole in its file under algorithms/."""
