"""Replica failures and spot capacity: conservation under fuzzing, recompute of evicted work, and the facts
the issue asks for (spot is cheaper but loses attainment under reclaims), plus agent/core agreement of the
replacing and spot-mix scalers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from servegym.baselines import make_policy
from servegym.envs.metrics import compute_metrics
from servegym.envs.scenario import ScenarioError
from servegym.envs.sim import state as S
from servegym.envs.sim.simulator import Simulator
from tests.conftest import examples, tiny_scenario
from tests.test_baselines import drive_with_agent
from tests.test_sim_core import drive

A100 = {"gpu": "a100-80gb", "model": "llama-2-7b", "cold_start_s": 3.0}


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=hs.integers(0, 2**31 - 1),
    rate=hs.floats(0.5, 30.0),
    routing=hs.sampled_from(["round_robin", "p2c", "lor", "prefix_affinity"]),
    scaling=hs.sampled_from(["static", "reactive", "reactive_replace", "spot_mix"]),
    mtbf=hs.sampled_from([None, 3.0, 15.0]),
    repair=hs.sampled_from([None, 0.0, 4.0]),
    reclaim=hs.sampled_from([None, 2.0, 10.0]),
    warning=hs.sampled_from([0.0, 1.0, 65.0]),
    mem_util=hs.sampled_from([0.9, 0.19]),
    control=hs.sets(hs.sampled_from(["route", "batch", "scale"])),
)
def test_conservation_fuzz_with_failures_and_spot(
    seed, rate, routing, scaling, mtbf, repair, reclaim, warning, mem_util, control
):
    """Failures and reclaims at rates far above any fleet's: audit every aggregate at every stop."""
    sc = tiny_scenario(
        horizon_s=25.0,
        max_wait_s=8.0,
        queue_capacity=64,
        control_interval_s=2.0,
        pools=[
            {
                **A100,
                "name": "od",
                "min_replicas": 0,
                "max_replicas": 3,
                "initial_replicas": 2,
                "prefix_cache": True,
                "gpu_memory_utilization": mem_util,
                "mtbf_s": mtbf,
                "repair_s": repair,
            },
            {
                **A100,
                "name": "spot",
                "gpu": "h100-80gb",
                "spot": True,
                "price_per_gpu_hour": 1.0,
                "min_replicas": 0,
                "max_replicas": 3,
                "initial_replicas": 2,
                "mtbf_s": mtbf,
                "reclaim_mtbr_s": reclaim,
                "reclaim_warning_s": warning,
            },
        ],
        tenants=[
            {"name": "chat", "ttft_slo_s": 0.5, "tpot_slo_s": 0.1},
            {"name": "batch", "tier": "batch", "deadline_s": 20.0},
        ],
        sources=[
            {
                "tenant": "chat",
                "arrival": {"process": "gamma", "rate_per_s": rate, "cv": 2.0},
                "lengths": {"dist": "empirical", "table": "mooncake_synthetic"},
            },
            {"tenant": "batch", "arrival": {"process": "poisson", "rate_per_s": 2.0}},
        ],
        policies={"routing": routing, "scaling": scaling, "replica_capacity_rps": 2.0},
    )
    sim = Simulator(sc, seed=seed, control=tuple(sorted(control)))
    drive(sim, np.random.default_rng(seed), step_s=0.9)
    c = sim.counts()
    assert c["arrived"] == c["finished"] + c["dropped"] + c["in_flight"]
    m = compute_metrics(sim.outcome(final=True))
    assert m["evicted"] == c["evicted"]
    assert m["failures"] == c["failures"] and m["reclaims"] == c["reclaims"]


def failing_sim(mtbf_s: float | None, seed: int = 3) -> Simulator:
    sc = tiny_scenario(
        horizon_s=300.0,
        pools=[
            {
                **A100,
                "name": "a",
                "min_replicas": 3,
                "max_replicas": 4,
                "initial_replicas": 3,
                "mtbf_s": mtbf_s,
            }
        ],
        sources=[
            {
                "tenant": "chat",
                "arrival": {"process": "poisson", "rate_per_s": 6.0},
                "lengths": {"dist": "lognormal", "prompt_mean": 1500, "output_mean": 300, "prompt_max": 6000},
            }
        ],
        policies={"scaling": "reactive_replace"},
    )
    return Simulator(sc, seed=seed)


def test_failures_conserve_requests_and_evicted_ones_are_recomputed():
    sim = failing_sim(mtbf_s=150.0)
    for t in np.arange(5.0, 305.0, 5.0):
        sim.advance(float(t))
        assert sim.audit() == ""
        c = sim.counts()
        assert c["arrived"] == c["finished"] + c["dropped"] + c["in_flight"], c
    c = sim.counts()
    assert c["failures"] >= 3, c  # the scenario must actually fail replicas for the checks below to bite
    st = sim.state
    evicted = st.rqi[S.RI_EVICT] > 0
    assert int(st.rqi[S.RI_EVICT].sum()) == c["evicted"] > 0
    # evicted requests that had started lost their KV state and prefilled it again
    started = evicted & ~np.isnan(st.rqf[S.RF_FIRST])
    assert started.any()
    assert (st.rqi[S.RI_RECOMPUTED][started] > 0).all()
    # nothing silently lost: every evicted request finished, was dropped (counted) or is still in flight
    status = st.rqi[S.RI_STATUS][evicted]
    assert np.isin(status, [S.ST_FINISHED, S.ST_DROPPED, S.ST_INFLIGHT]).all()
    assert (status == S.ST_FINISHED).mean() > 0.8
    # the same workload without failures: no evictions, and (at this load) no recompute at all
    ref = failing_sim(mtbf_s=None)
    m_ref = compute_metrics(ref.run())
    m = compute_metrics(sim.outcome(final=True))
    assert m_ref["evicted"] == m_ref["failures"] == 0
    assert m["recomputed_tokens"] > m_ref["recomputed_tokens"]


def spot_fleet(on_demand: int, spot: int, reclaim_mtbr_s: float | None, scaling: str = "static") -> dict:
    pool = {"gpu": "a100-80gb", "model": "llama-2-7b", "min_replicas": 0, "max_replicas": 8}
    pools = [
        {**pool, "name": "od", "price_per_gpu_hour": 2.21, "initial_replicas": on_demand},
        {
            **pool,
            "name": "sp",
            "spot": True,
            "price_per_gpu_hour": 0.884,
            "initial_replicas": spot,
            "reclaim_mtbr_s": reclaim_mtbr_s,
        },
    ]
    m = compute_metrics(
        Simulator("spot_failures", seed=0, overrides={"pools": pools, "policies": {"scaling": scaling}}).run()
    )
    return m


def test_spot_heavy_static_fleet_is_cheaper_but_loses_attainment_to_reclaims():
    on_demand = spot_fleet(6, 0, None)
    spot_heavy = spot_fleet(1, 5, 1800.0)
    assert spot_heavy["reclaims"] >= 3
    assert spot_heavy["cost/usd"] < 0.5 * on_demand["cost/usd"]
    assert spot_heavy["cost/usd/spot"] > 0 and on_demand["cost/usd/spot"] == 0
    assert spot_heavy["slo_attainment"] < on_demand["slo_attainment"] - 0.2
    # the reclaims are the cause: the same spot-heavy fleet that is never reclaimed serves as well
    never = spot_fleet(1, 5, None)
    assert never["reclaims"] == 0
    assert never["slo_attainment"] == pytest.approx(on_demand["slo_attainment"], abs=0.02)


def test_spot_mix_beats_reactive_on_the_spot_failures_scenario():
    """The mix rule keeps interactive traffic on on-demand capacity and buys the rest cheaply on spot."""
    m = {
        s: compute_metrics(
            Simulator("spot_failures", seed=0, overrides={"policies": {"scaling": s}}, timing="v0").run()
        )  # a fact measured under timing v0 (the scenario's load was set for it)
        for s in ("reactive", "spot_mix")
    }
    assert m["spot_mix"]["slo_attainment"] > m["reactive"]["slo_attainment"]
    assert m["spot_mix"]["cost/usd"] < m["reactive"]["cost/usd"]
    assert m["spot_mix"]["cost/usd/spot"] > m["reactive"]["cost/usd/spot"]


@pytest.mark.parametrize("rule", ["reactive_replace", "spot_mix"])
def test_scaling_agents_match_the_builtin_rules_under_failures(rule: str):
    # timing v0: the scenario's failure and load rates were set for it (v1 serves it with fewer replicas)
    over: dict[str, Any] = {"policies": {"scaling": rule}, "timing": "v0"}
    builtin = compute_metrics(Simulator("spot_failures", seed=0, overrides=over).run())
    assert builtin["failures"] + builtin["reclaims"] > 0
    sim = Simulator("spot_failures", seed=0, overrides=over, control=("scale",))
    kw: dict[str, Any] = {"control_interval_s": sim.scenario.control_interval_s}
    if rule == "spot_mix":
        kw["replica_capacity_rps"] = sim.scenario.policies.replica_capacity_rps
    agent = make_policy(rule, **kw)
    agent.reset(0)
    assert drive_with_agent(sim, agent) == builtin


def test_fault_config_errors_name_the_key():
    with pytest.raises(ScenarioError, match=r"pools\.0.*spot pool needs price_per_gpu_hour"):
        tiny_scenario(pools=[{**A100, "name": "s", "max_replicas": 1, "initial_replicas": 1, "spot": True}])
    with pytest.raises(ScenarioError, match=r"pools\.0.*reclaim_mtbr_s applies to spot pools"):
        tiny_scenario(
            pools=[{**A100, "name": "s", "max_replicas": 1, "initial_replicas": 1, "reclaim_mtbr_s": 9}]
        )
    with pytest.raises(ScenarioError, match=r"pools\.0\.mtbf_s"):
        tiny_scenario(pools=[{**A100, "name": "s", "max_replicas": 1, "initial_replicas": 1, "mtbf_s": -1}])


def test_features_off_draw_nothing_from_the_core_stream():
    """Without failures or reclaims no fault is armed and the build draws nothing from the core stream."""
    sim = Simulator("chat_azure", seed=5, overrides={"horizon_s": 60})
    assert sim.state.clock[S.C_NEXT_FAULT] == np.inf and (sim.state.repf[S.XF_FAULT] == np.inf).all()
    seeded = int(np.random.default_rng(5).integers(1, 2**63 - 1)) | 1
    assert int(sim.state.rng[0]) == seeded
    m = compute_metrics(sim.run())
    assert m["failures"] == m["reclaims"] == m["evicted"] == 0


def test_scale_env_sees_spot_and_lost_capacity():
    """The Scale env chooses spot or on-demand capacity by scaling one pool or the other; it observes both."""
    import gymnasium as gym

    import servegym.envs  # noqa: F401  (registers the ids)

    env = gym.make("servegym/Scale-v0", scenario="spot_failures", horizon_s=1800)
    obs, info = env.reset(seed=0)
    names = env.unwrapped.obs_features["pools"]
    spot = np.array([obs["pools"][names.index(f"{p}/spot")] for p in range(2)])
    assert spot.tolist() == [0.0, 1.0]
    assert info["scale"]["spot"].tolist() == [0, 1]
    hold = np.full(2, env.unwrapped.layout.scale_step)  # delta 0 for both pools
    lost = 0
    while True:
        obs, _, term, trunc, info = env.step(hold)
        assert all(env.observation_space[k].contains(v) for k, v in obs.items())
        if term or trunc:
            break
        lost += int(info["scale"]["lost_last_interval"].sum())
    m = info["metrics"]
    assert 0 < lost <= m["failures"] + m["reclaims"]  # losses after the last tick are not reported
