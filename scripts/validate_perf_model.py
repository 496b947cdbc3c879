"""Compare the performance model with measurements: one table over every source, then Splitwise in detail.

    python scripts/validate_perf_model.py --data-dir ../shared/data [--engine vllm] [--overhead splitwise]

The table covers the independent public sources of envs/perf/validation/*.csv (each predicted with the engine
profile matching what it measured, envs/perf/external.py SOURCE_ENGINES, or with ``--engine`` for all) and
Splitwise's Llama2-70B measurements (the fit source of the "splitwise" profile that timing v0 pins; its
held-out rows). Then the per-split MAPE report of Splitwise with ``--overhead`` (envs/perf/validate.py).

Data: the public sources ship with the package. Splitwise's measurements (splitwise_sim/perf_model.csv,
Mutinifni/splitwise-sim, MIT) are read from the data directory ($SERVEGYM_DATA_DIR, else
$XDG_CACHE_HOME/servegym/data); download them with ``python -m servegym.envs.data fetch splitwise_perf_model``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from servegym.envs.data import data_dir
from servegym.envs.perf import external, validate
from servegym.envs.perf.model import OVERHEAD_PROFILES, load_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data-dir", type=Path, default=None, help="reference data folder (default: the data directory)"
    )
    ap.add_argument("--coefficients", type=Path, default=None, help="coefficient JSON (default: shipped)")
    ap.add_argument("--overhead", choices=OVERHEAD_PROFILES, default="splitwise")
    ap.add_argument(
        "--engine",
        choices=OVERHEAD_PROFILES,
        default=None,
        help="engine for every public source (default: each source's own, external.SOURCE_ENGINES)",
    )
    args = ap.parse_args(argv)
    if args.data_dir is None:
        args.data_dir = data_dir()
    rows = external.summarize(external.load_cells(), args.engine) + external.splitwise_summary(args.data_dir)
    print(external.format_table(rows))
    print()
    res = validate.run(args.data_dir, load_table(args.coefficients), args.overhead)
    print(validate.format_report(res))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
