"""Compare the SageServe controller with reactive-only and static allocation on a fleet scenario.

    python scripts/sageserve.py [--scenario sageserve_global_day] [--seeds 1 2] [--set horizon_s=21600]

Every policy drives the same Scale env (servegym/Scale-v0) on the same workload seeds. Prints, per policy and
seed, the GPU-hours billed, the IW and NIW SLO attainment, and the GPU-hours of each region's fleet left idle
(donated to spot, accounted as in baselines/sageserve.py ``fleet_accounting``). docs/sageserve.md.
"""

from __future__ import annotations

import argparse
import time

from servegym.baselines.env_runner import run_env_episode
from servegym.baselines.sageserve import fleet_accounting
from servegym.envs.cli import parse_overrides
from servegym.envs.scenario import load_scenario

POLICIES = ("static", "reactive", "sageserve")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="sageserve_global_day")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--policy", action="append", help=f"default: {', '.join(POLICIES)}")
    ap.add_argument("--set", action="append", default=[], help="scenario override key=value (dotted keys)")
    ap.add_argument(
        "--scale-step", type=int, default=2, help="the Scale env's largest delta per pool and tick"
    )
    args = ap.parse_args()
    sc = load_scenario(args.scenario, parse_overrides(args.set))
    print("| policy | seed | GPU-hours | IW attainment | NIW attainment | donated GPU-hours | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for pol in args.policy or POLICIES:
        for seed in args.seeds:
            t0 = time.perf_counter()
            m, _ = run_env_episode(pol, "servegym/Scale-v0", sc, seed, {"scale_step": args.scale_step})
            acc = fleet_accounting(m, sc)
            print(
                f"| {pol} | {seed} | {m['cost/gpu_hours']:.1f} | {m['slo_attainment/interactive']:.4f} | "
                f"{m['slo_attainment/batch']:.4f} | {acc['donated_gpu_hours']:.1f} | "
                f"{time.perf_counter() - t0:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
