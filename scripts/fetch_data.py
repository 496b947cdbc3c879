"""Thin wrapper around `python -m servegym.envs.data` (list / fetch NAME / verify) that works from a checkout
without installing the package."""

from servegym.envs.data import main

if __name__ == "__main__":
    raise SystemExit(main())
