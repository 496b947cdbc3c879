"""Reading the raw public profiles (Vidur, Splitwise) that the perf model is fitted on and validated against.

Both ``fit.py`` and ``validate.py`` read them; this module is their shared reader, so neither imports the other
for it. Files live under the data dir ($SERVEGYM_DATA_DIR, see envs/data.py).
"""

from __future__ import annotations

import csv
from pathlib import Path

from servegym.envs.data import REGISTRY


def require(path: Path) -> Path:
    """``path`` if it is a file, else FileNotFoundError saying where the data directory comes from and how
    to get the file (a registered download, or Vidur's profiling folder)."""
    if not path.is_file():
        names = [s.name for s in REGISTRY.values() if Path(path).as_posix().endswith("/" + s.rel_path)]
        how = (
            f"download it with: python -m servegym.envs.data fetch {names[0]}"
            if names
            else "Vidur's profiles come from microsoft/vidur's data/profiling folder (docs/perf_model.md, Fitting)"
        )
        raise FileNotFoundError(
            f"missing profile file {path} (set --data-dir or SERVEGYM_DATA_DIR to the reference data folder; {how})"
        )
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with require(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"profile file {path} has no rows")
    return rows
