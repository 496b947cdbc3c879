"""Refit envs/perf/perf_coefficients.json from the raw public profiles.

    python scripts/fit_perf_model.py --data-dir ../shared/data --out envs/perf/perf_coefficients.json

The data dir defaults to $SERVEGYM_DATA_DIR, else ~/.cache/servegym/data. Logic lives in envs/perf/fit.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from servegym.envs.perf import fit
from servegym.envs.perf.model import COEF_JSON
from servegym.envs.perf.validate import format_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=fit.default_data_dir(), help="reference data folder")
    ap.add_argument("--out", type=Path, default=COEF_JSON, help="output JSON (default: the shipped file)")
    args = ap.parse_args(argv)
    table = fit.fit_all(args.data_dir)
    fit.write_json(table, args.out)
    print(f"wrote {args.out} ({len(table['entries'])} entries, {args.out.stat().st_size} bytes)")
    print(format_report(table["validation"]))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
