"""Train many seeds / hyperparameter settings as tasks, locally or on Ray (see agents/sweep.py)."""

import sys

from servegym.agents.sweep import main

if __name__ == "__main__":
    sys.exit(main())
