"""Thin wrapper around `python -m envs.data` (list / fetch NAME / verify) that works from a checkout
without installing the package."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs.data import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
