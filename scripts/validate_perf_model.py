"""Compare the shipped performance model with Splitwise's measured Llama2-70B prompt/token times.

    python scripts/validate_perf_model.py --data-dir ../shared/data [--overhead splitwise|vidur|none]

Prints MAPE per hardware (prompt, token, both) for the held-out validation measurements, the training
measurements and all of them, then one JSON line with the validation figures. Logic: envs/perf/validate.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from servegym.envs.perf import validate
from servegym.envs.perf.fit import default_data_dir
from servegym.envs.perf.model import OVERHEAD_PROFILES, load_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=default_data_dir(), help="reference data folder")
    ap.add_argument("--coefficients", type=Path, default=None, help="coefficient JSON (default: shipped)")
    ap.add_argument("--overhead", choices=OVERHEAD_PROFILES, default="splitwise")
    args = ap.parse_args(argv)
    res = validate.run(args.data_dir, load_table(args.coefficients), args.overhead)
    print(validate.format_report(res))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
