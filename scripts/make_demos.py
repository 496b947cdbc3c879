"""Write Minari demonstration datasets of the heuristics and the oracle (see agents/demos.py).

    python scripts/make_demos.py --suite v1 --episodes 2 --out demos            # every suite scenario
    python scripts/make_demos.py --suite v1 --scenarios chat_bursty --policies jsq,oracle_route --out demos

Reading a leaderboard suite lives here, not in agents/demos.py: imports point config -> ... -> policy ->
leaderboard, so the policy layer does not read suites.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence

from servegym.agents.demos import DemoSource, config_source, oracle_for, write_dataset
from servegym.baselines.leaderboard.suite import heuristics_for, load_suite


def suite_sources(suite: str, scenarios: Sequence[str] | None = None) -> list[DemoSource]:
    s = load_suite(suite)
    picked = [s.scenario(n) for n in scenarios] if scenarios else list(s.scenarios)
    return [
        DemoSource(c.name, c.env_id, str(c.path("twin")), dict(c.env_config), c.train_seeds) for c in picked
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src_arg = ap.add_mutually_exclusive_group()
    src_arg.add_argument("--suite", default=None, help="record on every scenario of this suite (default v1)")
    src_arg.add_argument("--config", default=None, help="record on this agent config's training env instead")
    ap.add_argument("--scenarios", default=None, help="comma-separated suite scenarios (default: all)")
    ap.add_argument(
        "--policies",
        default=None,
        help="comma-separated policies (default: every heuristic of the env's decision and its oracle)",
    )
    ap.add_argument("--no-oracle", action="store_true", help="skip the oracle in the default policies")
    ap.add_argument("--episodes", type=int, default=2, help="episodes (training seeds) per dataset")
    ap.add_argument("--seed", type=int, default=0, help="index of the first training seed to use")
    ap.add_argument("--horizon-s", type=float, default=None, help="override the scenarios' horizon")
    ap.add_argument("--out", default=None, help="datasets root (default: MINARI_DATASETS_PATH or ~/.minari)")
    ap.add_argument("--overwrite", action="store_true", help="replace datasets that exist")
    args = ap.parse_args(argv)

    if args.config:
        sources = [config_source(args.config)]
    else:
        sources = suite_sources(args.suite or "v1", args.scenarios.split(",") if args.scenarios else None)
    if args.horizon_s is not None:
        sources = [
            dataclasses.replace(s, env_config={**s.env_config, "horizon_s": args.horizon_s}) for s in sources
        ]
    suite = load_suite(args.suite or "v1")
    for src in sources:
        if args.policies:
            policies = args.policies.split(",")
        else:
            policies = heuristics_for(suite, src.env_id) + ([] if args.no_oracle else [oracle_for(src)])
        seeds = src.seeds[args.seed : args.seed + args.episodes]
        if len(seeds) < args.episodes:
            raise SystemExit(
                f"{src.name}: only {len(src.seeds)} training seeds; --seed/--episodes ask for more"
            )
        for pol in policies:
            t0 = time.perf_counter()
            ds = write_dataset(pol, src, seeds, args.out, args.overwrite)
            print(
                f"{ds.id}: {ds.total_episodes} episodes, {ds.total_steps} steps ({time.perf_counter() - t0:.1f} s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
