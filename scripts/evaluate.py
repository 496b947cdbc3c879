"""Evaluate policies on scenarios over N seeds: per-episode records, mean ± 95% CI, and optional plots.

    python scripts/evaluate.py --policy edf+jsq+reactive --policy fcfs+lor+static --scenario chat_azure --seeds 5
    python scripts/evaluate.py --policy vtc --scenario multi_tenant_tiers --seeds 3 --set horizon_s=300 \\
        --out results/vtc --plots results/vtc/plots
    python scripts/evaluate.py --list

    python scripts/evaluate.py --policy agents/pretrained/route_chat_azure/model.zip --policy round_robin \\
        --scenario chat_azure --set horizon_s=300 --timing v0 --seeds 10 --seed-start 2000

A policy is a registered name, a ``+`` combination (one rule per decision kind; parts not given keep the
scenario's own), or a checkpoint path (a ``model.zip`` from scripts/train.py or a native ``model.pt``),
which plays through its env (the env id its run config names) with the agent's own spaces. ``--set
horizon_s=S`` sets the episode length (default: the scenario's). On a trace scenario each seed replays its
own window of the trace (the windows tile the trace in steps of one episode; seed s takes window s mod the
number that fit; the records' ``window_start_s``), so N seeds are N workloads. Results go to ``--out``
(records.csv/json, aggregate.csv/json); the Markdown table goes to the terminal.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from servegym.baselines.harness import SUMMARY_KEYS, evaluate_many, markdown_table, write_results
from servegym.baselines.policy import PolicyError
from servegym.baselines.registry import list_policies, policy_spec
from servegym.envs.cli import parse_overrides
from servegym.envs.scenario import ScenarioError, list_scenarios


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", action="append", default=[], help="policy name, combination or checkpoint")
    ap.add_argument("--scenario", action="append", default=[], help="scenario name or YAML path")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (episodes per policy x scenario)")
    ap.add_argument("--seed-start", type=int, default=0, help="first seed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario key")
    ap.add_argument("--workers", type=int, default=None, help="processes (default min(2, cpu count))")
    ap.add_argument("--out", default=None, help="directory for CSV/JSON results")
    ap.add_argument("--keys", nargs="*", default=list(SUMMARY_KEYS), help="metrics in the terminal table")
    ap.add_argument("--plots", default=None, help="directory for timeline and latency-CDF PNGs (first seed)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument(
        "--timing",
        choices=("v0", "v1"),
        default="v1",
        help="timing version for every policy, heuristics and agents alike (v0: the README's earlier tables)",
    )
    ap.add_argument("--list", action="store_true", help="list policies and scenarios, then exit")
    args = ap.parse_args(argv)

    if args.list:
        for kind in ("batch", "route", "scale"):
            print(f"{kind}:")
            for name in list_policies(kind):
                print(f"  {name:16s} {policy_spec(name).description}")
        print("scenarios:", ", ".join(list_scenarios()))
        return 0
    if not args.policy or not args.scenario:
        ap.error("need at least one --policy and one --scenario (or --list)")
    try:
        overrides = parse_overrides(args.set)
        seeds = list(range(args.seed_start, args.seed_start + args.seeds))
        t0 = time.perf_counter()
        results = evaluate_many(
            args.policy,
            args.scenario,
            seeds,
            overrides,
            args.workers,
            progress=not args.quiet,
            timing=args.timing,
        )
        wall = time.perf_counter() - t0
    except (ScenarioError, PolicyError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\n{len(results)} policy x scenario, {len(seeds)} seeds each, {wall:.1f} s wall")
    for res in results[: len(args.scenario)]:  # the same windows for every policy
        starts = [r["window_start_s"] for r in res.records if "window_start_s" in r]
        if starts:
            distinct = sorted(set(starts))
            print(
                f"{res.scenario}: trace windows start at {', '.join(f'{w:g}' for w in distinct)} s"
                + (
                    f" ({len(seeds)} seeds share {len(distinct)} windows)"
                    if len(distinct) < len(seeds)
                    else ""
                )
            )
    print()
    print(markdown_table(results, args.keys))
    if args.out:
        paths = write_results(results, args.out)
        print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    if args.plots:
        write_plots(args.policy, args.scenario, seeds[0], overrides, Path(args.plots), results)
    return 0


def write_plots(
    policies: list[str], scenarios: list[str], seed: int, overrides: dict, out: Path, results: list
) -> None:
    from servegym.baselines.plots import plot_latency_cdfs, plot_timeline, timeline
    from servegym.envs.scenario import load_scenario, merge_overrides

    for sc in scenarios:
        scen = load_scenario(sc, overrides)
        over = overrides
        first = next(r for res in results if res.scenario == sc for r in res.records if r["seed"] == seed)
        if "window_start_s" in first:  # the seed's trace window, as its records ran it
            window = {
                i: {"window_start_s": first["window_start_s"]}
                for i, s in enumerate(scen.sources)
                if s.kind == "trace"
            }
            over = merge_overrides(overrides, {"sources": window})
        outcomes = {}
        for pol in policies:
            series, outcome = timeline(sc, seed, pol, over)
            outcomes[pol] = outcome
            stem = f"{Path(sc).stem}__{pol.replace('+', '_')}__seed{seed}"
            print(
                "wrote",
                plot_timeline(series, out / f"timeline__{stem}.png", f"{scen.name} | {pol} | seed {seed}"),
            )
        interactive = [t for t in scen.tenants if t.tier == "interactive"]
        ttft = min((t.ttft_slo_s for t in interactive), default=None)
        tpot = min((t.tpot_slo_s for t in interactive), default=None)
        path = out / f"latency_cdf__{Path(sc).stem}__seed{seed}.png"
        print("wrote", plot_latency_cdfs(outcomes, path, ttft, tpot, f"{scen.name} | seed {seed}"))


if __name__ == "__main__":
    sys.exit(main())
