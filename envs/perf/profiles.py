"""Reading the raw public profiles (Vidur, Splitwise) that the perf model is fitted on and validated against.

Both ``fit.py`` and ``validate.py`` read them; this module is their shared reader, so neither imports the other
for it. Files live under the data dir ($SERVEGYM_DATA_DIR, see envs/data.py).
"""

from __future__ import annotations

import csv
from pathlib import Path


def require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"missing profile file {path} (set --data-dir or SERVEGYM_DATA_DIR to the reference data folder)"
        )
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with require(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"profile file {path} has no rows")
    return rows
