"""The directions the disaggregation papers report, as tests (issue 18). Magnitudes are in docs/disaggregation.md.

1. DistServe (OSDI'24): on long prompts with short outputs under a tight TPOT SLO, prefill/decode instances
   reach more goodput per GPU than colocated serving on the same GPUs (no prefill chunk ever lengthens a
   decode iteration).
2. DistServe's placement for clusters with slow cross-node links (25 Gbps between its nodes): the KV
   transfer of long contexts over such a link eats the advantage, here it reverses it.
3. Splitwise (ISCA'24) Splitwise-HA: H100 prefill with A100 decode costs less per request than an all-H100
   fleet at the same attainment, on the Azure 2023 conversation workload Splitwise characterises.
"""

from __future__ import annotations

from typing import Any

from servegym.baselines.placement import cheapest, search_placement
from servegym.envs.metrics import compute_metrics
from servegym.envs.scenario import Scenario, scenario_from_dict
from servegym.envs.sim.simulator import Simulator


def fleet(
    pools: list[tuple[str, str, int]], rate: float, tpot: float, lengths: dict, link: str, **pool_kw: Any
) -> Scenario:
    """Fixed-size pools (name = role) of one model; Splitwise routing when any pool has a role."""
    disagg = any(role != "mixed" for role, _, _ in pools)
    return scenario_from_dict(
        {
            "name": "fact",
            "horizon_s": 300.0,
            "pools": [
                {
                    "name": f"{role}-{gpu}",
                    "gpu": gpu,
                    "role": role,
                    "min_replicas": n,
                    "max_replicas": n,
                    "initial_replicas": n,
                    **pool_kw,
                }
                for role, gpu, n in pools
            ],
            "tenants": [{"name": "t", "ttft_slo_s": 2.0, "tpot_slo_s": tpot}],
            "sources": [{"tenant": "t", "arrival": {"rate_per_s": rate}, "lengths": lengths}],
            "kv_transfer": {"link": link},
            "policies": {"routing": "splitwise" if disagg else "jsq"},
        }
    )


LONG_PROMPTS = {"prompt_mean": 2000, "prompt_cv": 0.5, "output_mean": 64, "output_cv": 0.5}
LONGER = {"prompt_mean": 3000, "prompt_cv": 0.3, "prompt_max": 3900, "output_mean": 64, "output_cv": 0.5}
A100_7B = {"model": "llama-2-7b", "tp": 1}


def goodput_per_gpu(sc: Scenario) -> tuple[float, float]:
    m = compute_metrics(Simulator(sc, seed=0).run())
    return m["goodput/req_per_s_per_gpu"], m["slo_attainment"]


def test_disaggregation_raises_goodput_per_gpu_on_long_prompts_under_tight_tpot():
    # Llama-2-7B on four A100s, 2000-token prompts, 64-token outputs, TPOT 25 ms, 12 requests/s
    colocated = fleet([("mixed", "a100-80gb", 4)], 12.0, 0.025, LONG_PROMPTS, "infiniband-hdr", **A100_7B)
    split = fleet(
        [("prefill", "a100-80gb", 2), ("decode", "a100-80gb", 2)],
        12.0,
        0.025,
        LONG_PROMPTS,
        "infiniband-hdr",
        **A100_7B,
    )
    g_col, a_col = goodput_per_gpu(colocated)
    g_dis, a_dis = goodput_per_gpu(split)
    assert a_col < 0.9 <= a_dis  # DistServe's 90% attainment: only the disaggregated fleet carries this rate
    assert g_dis > 1.15 * g_col  # measured 2.87 vs 2.28 req/s per GPU (docs/disaggregation.md)


def test_slow_cross_node_link_and_long_contexts_reverse_the_advantage():
    args = (6.0, 0.025, LONGER)
    col = goodput_per_gpu(fleet([("mixed", "a100-80gb", 4)], *args, "infiniband-hdr", **A100_7B))[0]
    roles = [("prefill", "a100-80gb", 2), ("decode", "a100-80gb", 2)]
    fast = goodput_per_gpu(fleet(roles, *args, "infiniband-hdr", **A100_7B))[0]
    slow = goodput_per_gpu(fleet(roles, *args, "ethernet-25g", **A100_7B))[0]
    assert fast > col  # over 25 GB/s per GPU the split still wins at 3000-token prompts ...
    assert slow < 0.5 * col  # ... over a shared 25 Gb/s link each 1.5 GB KV cache takes ~0.5 s: it loses


def test_h100_prefill_with_a100_decode_costs_less_per_request_than_all_h100():
    # Llama-2-70B at tp 4 on the Azure 2023 conversation lengths, 30 requests/s, TTFT 2 s, TPOT 60 ms; each
    # design at its cheapest size reaching 90% attainment (baselines/placement.py)
    conv = {"dist": "empirical", "table": "azure_conv_2023"}
    kw = {"model": "llama-2-70b", "tp": 4}
    designs = {
        "h100": fleet([("mixed", "h100-80gb", 1)], 30.0, 0.06, conv, "infiniband-ndr", **kw),
        "hh": fleet(
            [("prefill", "h100-80gb", 1), ("decode", "h100-80gb", 1)],
            30.0,
            0.06,
            conv,
            "infiniband-ndr",
            **kw,
        ),
        "ha": fleet(
            [("prefill", "h100-80gb", 1), ("decode", "a100-80gb", 1)],
            30.0,
            0.06,
            conv,
            "infiniband-hdr",
            **kw,
        ),
    }
    cost = {}
    for name, sc in designs.items():
        pools = tuple(p.name for p in sc.pools)
        c = cheapest(search_placement(sc, pools, max_gpus=20, min_each=2 if len(pools) == 1 else 1))
        assert c is not None, name
        cost[name] = c.usd_per_met_request
    assert cost["ha"] < 0.97 * min(cost["h100"], cost["hh"])  # measured ~10% lower (docs/disaggregation.md)
