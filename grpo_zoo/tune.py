"""`python -m grpo_zoo.tune`: the command line of grpo_zoo.launch.tune (see there)."""

import sys

from grpo_zoo.launch.tune import main

if __name__ == "__main__":
    sys.exit(main())
