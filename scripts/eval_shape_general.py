"""A learned router against every routing heuristic on scenarios of other cluster sizes, paired over seeds.

    python scripts/eval_shape_general.py --policy runs/route_chat_bursty_native/best/best_model.pt \\
        --scenario configs/suite/v0/chat_bursty.yaml --scenario configs/suite/v0/prefix_cache.yaml \\
        --scenario configs/suite/v0/multi_region.yaml --seeds 10 --seed-start 2000

For each scenario: mean goodput, SLO attainment and cost of the policy (batched over the vector env with
the policy's padding, baselines/vec_runner.py) and of each heuristic (inside the core, the harness's
exact rule), and the policy's paired goodput gain over the best heuristic by mean goodput, with a 95%
t interval over the seeds. A scenario the policy was not trained on shows its generalisation gap.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from servegym.baselines.harness import EpisodeSpec, builtin_episode, mean_ci
    from servegym.baselines.registry import list_policies, make_policy
    from servegym.baselines.vec_runner import run_vec_episodes

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", required=True, help="a native .pt (its env config gives the padding)")
    ap.add_argument("--scenario", action="append", required=True)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--seed-start", type=int, default=2000)
    args = ap.parse_args(argv)
    import torch

    pol = make_policy(args.policy)
    cfg = torch.load(args.policy, weights_only=False)["config"]
    env_cfg = {k: v for k, v in cfg["env_config"].items() if k in ("max_replicas", "max_pools")}
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    keys = ("goodput/req_per_s", "slo_attainment", "cost/usd")
    print("| scenario | policy | goodput req/s | SLO attainment | cost $ |")
    print("|---|---|---|---|---|")
    for sc in args.scenario:
        runs = {"learned": run_vec_episodes(pol, cfg["env_id"], sc, seeds, env_cfg)}
        for h in list_policies("route"):
            try:
                runs[h] = [builtin_episode(EpisodeSpec(h, sc, s)) for s in seeds]
            except Exception as e:  # a rule the scenario cannot run (say, session rules without sessions)
                print(f"<!-- {h} skipped on {sc}: {e} -->")
        means = {p: {k: float(np.mean([r[k] for r in rs])) for k in keys} for p, rs in runs.items()}
        best = max((p for p in runs if p != "learned"), key=lambda p: means[p][keys[0]])
        for p in ["learned", *sorted((p for p in runs if p != "learned"), key=lambda p: -means[p][keys[0]])]:
            m = means[p]
            print(f"| {sc} | {p} | {m[keys[0]]:.3f} | {m[keys[1]]:.3f} | {m[keys[2]]:.3f} |")
        gain = [a[keys[0]] / b[keys[0]] - 1 for a, b in zip(runs["learned"], runs[best], strict=True)]
        ci = mean_ci(gain)
        print(
            f"<!-- {sc}: learned vs best heuristic {best}: goodput {100 * ci['mean']:+.1f}% "
            f"(95% CI {100 * ci['lo']:+.1f}% .. {100 * ci['hi']:+.1f}%, n={ci['n']}) -->"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
