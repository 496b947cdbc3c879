"""Goodput sweep (DistServe) and Sarathi-Serve capacity of policies on a scenario, with a PNG of the curves.

    python scripts/goodput_sweep.py --scenario chat_azure --policy fcfs+lor --policy edf+jsq \\
        --factors 0.5,0.75,1,1.25,1.5 --seeds 2 --out results/goodput

The offered rate is the scenario's (synthetic ``rate_per_s``, trace ``time_scale``) times each factor.
Reports the highest rate (and rate per billed GPU) with >= 90% SLO attainment, interpolated between swept
rates, and the highest rate with P99 TBT <= SLO and median scheduling delay <= 2 s (definitions in
baselines/goodput.py and docs/baselines.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from servegym.baselines.goodput import ATTAINMENT_TARGET, goodput_sweeps
from servegym.baselines.harness import nan_to_none, write_csv
from servegym.baselines.policy import PolicyError
from servegym.envs.cli import parse_overrides
from servegym.envs.scenario import ScenarioError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", required=True, help="scenario name or YAML path")
    ap.add_argument("--policy", action="append", default=[], help="built-in policy or combination")
    ap.add_argument("--factors", default="0.5,0.75,1,1.25,1.5,2", help="comma-separated rate factors")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per rate")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario key")
    ap.add_argument("--target", type=float, default=ATTAINMENT_TARGET, help="SLO attainment target")
    ap.add_argument(
        "--tbt-slo", type=float, default=None, help="TBT limit (default: strictest tenant TPOT SLO)"
    )
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default=None, help="directory for sweep.csv, summary.json and attainment.png")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    policies = args.policy or ["fcfs"]
    try:
        factors = [float(f) for f in args.factors.split(",")]
        results = goodput_sweeps(
            policies,
            args.scenario,
            factors,
            seeds=range(args.seeds),
            overrides=parse_overrides(args.set),
            workers=args.workers,
            progress=not args.quiet,
            target=args.target,
            tbt_slo_s=args.tbt_slo,
        )
    except (ScenarioError, PolicyError, NotImplementedError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    for r in results:
        print(f"\n## {r.policy} on {r.scenario}")
        print("| factor | rate (req/s) | attainment | billed GPUs | P99 TPOT (s) | median sched. delay (s) |")
        print("|-------:|-------------:|-----------:|------------:|-------------:|------------------------:|")
        for i, f in enumerate(r.factors):
            print(
                f"| {f:g} | {r.rates[i]:.3g} | {r.attainment[i]:.3f} | {r.gpus[i]:.3g} | "
                f"{r.tpot_p99[i]:.3g} | {r.sched_delay_p50[i]:.3g} |"
            )
        g, c = r.goodput, r.sarathi
        print(
            f"goodput ({r.target:.0%} attainment): {_fmt(g.rate)} req/s [{g.status}], "
            f"{_fmt(r.goodput_per_gpu)} req/s per GPU"
        )
        print(
            f"Sarathi capacity (P99 TBT <= {r.tbt_slo_s:g} s, median delay <= 2 s): {_fmt(c.rate)} req/s "
            f"[{c.status}]"
        )
    if args.out:
        from servegym.baselines.plots import plot_attainment_curves

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "sweep.csv", [rec for r in results for rec in r.records])
        (out / "summary.json").write_text(json.dumps(nan_to_none([r.summary() for r in results]), indent=1))
        png = plot_attainment_curves(
            {r.policy: (r.rates, r.attainment) for r in results},
            out / "attainment.png",
            args.target,
            {r.policy: r.goodput.rate for r in results},
            title=f"{Path(args.scenario).stem}: SLO attainment vs offered rate",
        )
        print(f"\nwrote {out / 'sweep.csv'}, {out / 'summary.json'}, {png}")
    return 0


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3g}"


if __name__ == "__main__":
    sys.exit(main())
