"""DistServe-style placement: search the prefill:decode instance counts over the simulator (issue 18).

DistServe (Zhong et al., OSDI'24, section 4) chooses, for a given arrival rate and TTFT/TPOT SLOs, the
parallelism and the number of instances of each phase that maximise goodput per GPU: the highest request
rate served with at least a target share (90% in the paper) of requests meeting both SLOs, divided by the
GPUs used. Its algorithm for high-bandwidth clusters simulates each phase on its own (prefill as an M/D/1
queue fitted to profiles, decode by simulation), picks the best parallelism per phase, then replicates
each phase's instance to carry the rate.

``search_placement`` is the small offline version this simulator allows: parallelism is fixed by the
scenario's two pools, and every (prefill instances, decode instances) pair up to a GPU budget is simulated
as a whole, with the KV transfers, the prefill memory that buffers a decode backlog, and the routing rule
in the loop. It costs one simulation per pair (seconds each at test sizes) instead of DistServe's
per-phase decomposition, and it sees the coupling the decomposition assumes away. ``best`` follows
DistServe's objective (goodput per GPU among the placements that meet the attainment target at the given
rate); ``cheapest`` takes the lowest cost per SLO-met request instead (Splitwise's cost-oriented designs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from servegym.envs.metrics import compute_metrics
from servegym.envs.scenario import Scenario, scenario_from_dict
from servegym.envs.sim.simulator import Simulator


@dataclass(frozen=True)
class Placement:
    counts: tuple[int, ...]  # replicas per searched pool, in the order given
    gpus: int
    attainment: float
    goodput_per_gpu: float  # SLO-met requests per second per billed GPU
    usd_per_met_request: float


def with_counts(scenario: Scenario, counts: dict[str, int]) -> Scenario:
    """The scenario with each named pool fixed at the given replica count (min = max = initial); a pool at 0
    is removed."""
    raw: dict[str, Any] = scenario.model_dump(mode="json")
    pools = []
    for p in raw["pools"]:
        n = counts.get(p["name"], None)
        if n is None:
            pools.append(p)
        elif n > 0:
            pools.append({**p, "min_replicas": n, "max_replicas": n, "initial_replicas": n})
    raw["pools"] = pools
    return scenario_from_dict(raw, source=f"{scenario.name} placement {counts}")


def evaluate(scenario: Scenario, counts: dict[str, int], seeds: tuple[int, ...] = (0,)) -> Placement:
    met = judged = 0
    billed = usd = now = 0.0
    sc = with_counts(scenario, counts)
    for seed in seeds:
        m = compute_metrics(Simulator(sc, seed=seed).run())
        met += m["slo_met"]
        judged += m["judged"]
        billed += m["gpus/mean_billed"] * m["now_s"]
        usd += m["cost/usd"]
        now += m["now_s"]
    gpus = sum(n * p.tp for p in sc.pools for name, n in counts.items() if p.name == name)
    return Placement(
        counts=tuple(counts.values()),
        gpus=gpus,
        attainment=met / judged if judged else float("nan"),
        goodput_per_gpu=met / billed if billed else float("nan"),
        usd_per_met_request=usd / met if met else float("inf"),
    )


def search_placement(
    scenario: Scenario,
    pools: tuple[str, ...],
    max_gpus: int,
    seeds: tuple[int, ...] = (0,),
    min_each: int = 1,
) -> list[Placement]:
    """Simulate every replica count of the named pools (each >= ``min_each``) whose GPUs fit ``max_gpus``."""
    tp = {p.name: p.tp for p in scenario.pools}
    unknown = [n for n in pools if n not in tp]
    if unknown:
        raise ValueError(f"search_placement: unknown pools {unknown}; the scenario has {sorted(tp)}")
    out = []

    def rec(k: int, counts: dict[str, int], used: int) -> None:
        if k == len(pools):
            out.append(evaluate(scenario, dict(counts), seeds))
            return
        n = min_each
        while used + n * tp[pools[k]] <= max_gpus:
            counts[pools[k]] = n
            rec(k + 1, counts, used + n * tp[pools[k]])
            n += 1
        counts.pop(pools[k], None)

    rec(0, {}, 0)
    return out


def best(placements: list[Placement], target: float = 0.9) -> Placement | None:
    """DistServe's choice: the highest goodput per GPU among placements meeting the attainment target."""
    ok = [p for p in placements if p.attainment >= target]
    return max(ok, key=lambda p: (p.goodput_per_gpu, -p.gpus)) if ok else None


def cheapest(placements: list[Placement], target: float = 0.9) -> Placement | None:
    """The lowest cost per SLO-met request among placements meeting the attainment target."""
    ok = [p for p in placements if p.attainment >= target]
    return min(ok, key=lambda p: (p.usd_per_met_request, p.gpus)) if ok else None
