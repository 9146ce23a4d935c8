"""`python -m grpo_zoo.sweep`: the command line of grpo_zoo.launch.sweep (see there)."""

import sys

from grpo_zoo.launch.sweep import main

if __name__ == "__main__":
    sys.exit(main())
