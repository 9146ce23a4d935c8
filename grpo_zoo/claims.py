"""`python -m grpo_zoo.claims`: the command line of grpo_zoo.reports.paper_claims (see there)."""

import sys

from grpo_zoo.reports.paper_claims import main

if __name__ == "__main__":
    sys.exit(main())
