"""Write Minari demonstration datasets of the heuristics and the oracle (see agents/demos.py)."""

import sys

from servegym.agents.demos import main

if __name__ == "__main__":
    sys.exit(main())
