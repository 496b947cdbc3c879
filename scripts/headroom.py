"""Headroom of every scenario of a suite: oracle vs best heuristic on train seeds, with the MPC planner.

    python scripts/headroom.py --suite v1 --seeds 3
    python scripts/headroom.py --suite v1 --scenario chat_bursty --horizons 10,30,60 --breadths 2,4 --depths 1,2

Prints (and with --out writes) two markdown tables: per scenario the best constraint-meeting heuristic, the
oracle's best score over the search grid, headroom = (oracle - best) / best, the MPC planner's score and
paired differences with 95% CIs; and the oracle's score at every search setting (how the bound moves as
search grows). Seeds are the suite's first --seeds TRAIN seeds. See baselines/leaderboard/headroom.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

from servegym.baselines.leaderboard.headroom import Search, measure, search_table, table
from servegym.baselines.leaderboard.suite import load_suite


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def report(rows: list, suite, args) -> str:
    return (
        f"Suite {suite.version}, score {suite.score_metric}, train seeds (first {args.seeds}); "
        f"paired differences to the best heuristic, mean +- 95% CI.\n\n"
        f"{table(rows, args.threshold)}\n\nOracle score by search setting (horizon s / breadth / depth):\n\n"
        f"{search_table(rows)}\n"
    )


def write(out: Path, rows: list, suite, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "headroom.md").write_text(report(rows, suite, args))
    (out / "headroom.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1, default=list))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="v1")
    ap.add_argument("--scenario", action="append", default=None, help="only these (repeatable)")
    ap.add_argument("--seeds", type=int, default=3, help="the first N train seeds")
    ap.add_argument("--horizons", type=_floats, default=[10.0, 30.0], help="oracle lookahead, seconds")
    ap.add_argument(
        "--scale-horizons",
        type=_floats,
        default=[150.0, 300.0],
        help="lookahead on Scale-v0, seconds: beyond a cold start (Cluster-v0 uses --horizons)",
    )
    ap.add_argument("--breadths", type=_ints, default=[4], help="candidates per decision")
    ap.add_argument("--depths", type=_ints, default=[1], help="decisions searched per rollout")
    ap.add_argument(
        "--cost-weights",
        type=_floats,
        default=[],
        help="on scenarios with a cost constraint, also search the planners' reward per USD (a multiplier)",
    )
    ap.add_argument("--mpc-samples", type=int, default=4, help="sampled futures per MPC candidate")
    ap.add_argument("--threshold", type=float, default=0.10, help="headroom a scenario needs for admission")
    ap.add_argument("--out", default=None, help="folder for headroom.md and headroom.json")
    ap.add_argument(
        "--base",
        choices=["best", "scenario"],
        default="best",
        help="the rollouts' base policy: the best heuristic on these seeds (default), or the scenario's rules",
    )
    args = ap.parse_args(argv)
    suite = load_suite(args.suite)
    names = args.scenario or [s.name for s in suite.scenarios]
    grid = itertools.product
    searches = [Search(h, b, d) for h, b, d in grid(args.horizons, args.breadths, args.depths)]
    scale_searches = [Search(h, b, d) for h, b, d in grid(args.scale_horizons, args.breadths, args.depths)]
    costs = [None, *args.cost_weights]
    rows = []
    t0 = time.perf_counter()
    out = Path(args.out) if args.out else None
    for name in names:
        sc = suite.scenario(name)
        seeds = sc.train_seeds[: args.seeds]
        grid_here = scale_searches if sc.env_id.split("/")[1].startswith("Scale") else searches
        if any(c.metric == "cost/usd" for c in sc.constraints):
            grid_here = [Search(s.horizon_s, s.breadth, s.depth, c) for s in grid_here for c in costs]
        rows.append(
            measure(
                suite,
                sc,
                seeds,
                grid_here,
                args.mpc_samples,
                log=lambda m: print(m, flush=True),
                base_best=args.base == "best",
            )
        )
        print(f"# {name} done at {time.perf_counter() - t0:.0f}s", flush=True)
        if out is not None:  # after every scenario: a long run that stops keeps what it measured
            write(out, rows, suite, args)
    print(report(rows, suite, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
