"""The shared training loop and what it runs on: trainer.py (the iteration in named steps),
rollout.py, update.py, engine.py (DeepSpeed), preflight.py, evaluation.py, checkpoint.py,
seeding.py, prompts.py, hooks.py, ending.py (status on every way out)."""
