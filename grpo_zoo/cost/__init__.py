"""What a run costs before it runs: FLOPs per transformer pass (flops.py), forwards and
backwards per iteration from the algorithm's own plans (counts.py), and per-GPU memory by
phase (memory.py). `python -m grpo_zoo.estimate` prints them; the trainer's meter and the
GPU check use the same counts."""
