"""Train a PPO agent on a servegym env (see agents/train.py, which reads top to bottom)."""

import sys

from servegym.agents.train import main

if __name__ == "__main__":
    sys.exit(main())
