"""SageServe (Jaiswal et al., 2025): the integer program, the seasonal forecast, and the fleet fact.

Fact: on a diurnal global day (configs/scenarios/sageserve_global_day.yaml compressed to two hours), the
forecast + ILP controller spends fewer GPU-hours than reactive-only scaling at better IW attainment, and far
fewer than static allocation at the same attainment (docs/sageserve.md has the full-day numbers).
"""

from __future__ import annotations

import numpy as np
import pytest

from servegym.baselines import list_policies, make_policy
from servegym.baselines.env_runner import run_env_episode, scenario_policy_kwargs
from servegym.baselines.sageserve import (
    FleetModel,
    SageServeScaler,
    SeasonalForecaster,
    fleet_accounting,
    plan_instances,
)
from servegym.envs.scenario import load_scenario

DAY_S = 86400.0


def _fleet(region_gpus: float) -> FleetModel:
    # one region, two models: a TP-1 model (cap 3 req/s) and a TP-4 model (cap 2 req/s)
    return FleetModel(
        model=np.array([0, 1]),
        region=np.array([0, 0]),
        tp=np.array([1.0, 4.0]),
        price=np.array([2.0, 2.0]),
        capacity=np.array([3.0, 2.0]),
        cold_start_s=np.array([215.0, 215.0]),
        n_min=np.array([1.0, 1.0]),
        n_max=np.array([16.0, 4.0]),
        region_gpus=np.array([region_gpus]),
    )


def test_plan_meets_the_forecast_at_least_gpus():
    plan = plan_instances(_fleet(64), np.array([1, 1]), np.array([[7.0], [3.0]]), np.zeros(2), 1.0)
    assert plan.tolist() == [3, 2]  # ceil(7/3), ceil(3/2)
    # NIW may be served anywhere: its mean rate adds to the model's total, not to a region
    plan = plan_instances(_fleet(64), np.array([3, 2]), np.array([[7.0], [3.0]]), np.array([2.0, 0.0]), 1.0)
    assert plan.tolist() == [3, 2]  # 3 x 3 = 9 >= 7 + 2 already
    plan = plan_instances(_fleet(64), np.array([3, 2]), np.array([[7.0], [3.0]]), np.array([3.0, 0.0]), 1.0)
    assert plan.tolist() == [4, 2]


def test_region_budget_repurposes_instances_between_models():
    fleet = _fleet(12)  # 12 GPUs: 4 TP-1 + 2 TP-4 instances, or 8 + 1
    plan = plan_instances(fleet, np.array([4, 2]), np.array([[12.0], [3.0]]), np.zeros(2), 1.0)
    assert plan.tolist() == [4, 2]
    # the TP-1 model's demand doubles while the TP-4 model's falls: one TP-4 instance becomes four TP-1
    plan = plan_instances(fleet, np.array([4, 2]), np.array([[24.0], [1.5]]), np.zeros(2), 1.0)
    assert plan.tolist() == [8, 1]
    assert float(fleet.tp @ plan) <= 12


def test_plan_keeps_running_instances_rather_than_start_new_ones():
    # one model in two regions; NIW (3 req/s, served anywhere) needs one instance beyond the regional IW
    # plans. One already runs in region 1: keeping it saves a start (model load) over one in region 0.
    fleet = FleetModel(
        model=np.array([0, 0]),
        region=np.array([0, 1]),
        tp=np.array([1.0, 1.0]),
        price=np.array([2.0, 2.0]),
        capacity=np.array([3.0, 3.0]),
        cold_start_s=np.array([215.0, 215.0]),
        n_min=np.array([0.0, 0.0]),
        n_max=np.array([8.0, 8.0]),
        region_gpus=np.array([8.0, 8.0]),
    )
    iw = np.array([[6.0, 6.0]])
    assert plan_instances(fleet, np.array([2, 3]), iw, np.array([3.0]), 1.0).tolist() == [2, 3]
    assert plan_instances(fleet, np.array([3, 2]), iw, np.array([3.0]), 1.0).tolist() == [3, 2]
    # a surplus instance with nothing to serve is released
    assert plan_instances(fleet, np.array([3, 3]), iw, np.array([0.0]), 1.0).tolist() == [2, 2]


def test_seasonal_forecast_finds_the_daily_peak_from_half_a_day():
    fc = SeasonalForecaster(1, 60.0, DAY_S)
    rng = np.random.default_rng(0)
    peak_t = 0.8 * DAY_S
    for k in range(1, 721):  # 12 hours of one-minute counts, before the peak
        t = k * 60.0
        rate = 10.0 * (1 + 0.5 * np.cos(2 * np.pi * (t - 30 - peak_t) / DAY_S))
        fc.observe(t, np.array([rng.poisson(rate * 60)]))
    ahead = fc.rates(np.array([peak_t]))[0, 0]
    assert ahead == pytest.approx(15.0, rel=0.1)


def test_sageserve_is_registered_but_not_swept():
    assert "sageserve" not in list_policies("scale")
    assert "sageserve" in list_policies("scale", planners=True)
    assert isinstance(make_policy("sageserve", replica_capacity_rps=3.4), SageServeScaler)


def _compressed_day(period_s: float) -> object:
    """sageserve_global_day with its day compressed to ``period_s`` (rates kept)."""
    base = load_scenario("sageserve_global_day")
    sources = []
    for src in base.sources:
        d = src.model_dump(mode="json")
        diurnal = d["arrival"].get("diurnal")
        if diurnal:
            diurnal["period_s"] = period_s
            diurnal["peak_time_s"] *= period_s / DAY_S
        sources.append(d)
    return load_scenario("sageserve_global_day", overrides={"horizon_s": period_s, "sources": sources})


@pytest.mark.parametrize("seed", [1, 2])
def test_forecast_ilp_spends_fewer_gpu_hours_than_reactive_at_better_iw_attainment(seed):
    period = 7200.0
    sc = _compressed_day(period)
    kw = scenario_policy_kwargs(sc)
    # the controller's clock compressed as the day: a plan every 1/24 of the period, the season = period
    ilp = SageServeScaler(
        replica_capacity_rps=kw["replica_capacity_rps"],
        control_interval_s=kw["control_interval_s"],
        plan_interval_s=period / 24,
        season_s=period,
    )
    res = {}
    for name, pol in (("static", "static"), ("reactive", "reactive"), ("ilp", ilp)):
        m, _ = run_env_episode(pol, "servegym/Scale-v0", sc, seed)
        res[name] = (m["cost/gpu_hours"], m["slo_attainment/interactive"], fleet_accounting(m, sc))
    (g_ilp, a_ilp, acc), (g_re, a_re, _), (g_st, a_st, _) = res["ilp"], res["reactive"], res["static"]
    # measured (seeds 1, 2): ILP 40.1 / 40.3 GPU-h at 0.9994 / 0.9993; reactive 42.5 / 41.7 at 0.76 / 0.81;
    # static 64 at 0.9999 / 0.9998
    assert g_ilp < 0.98 * g_re
    assert a_ilp >= a_re + 0.05
    assert a_ilp >= 0.99
    assert g_ilp < 0.75 * g_st and a_ilp >= a_st - 0.005
    assert acc["donated_gpu_hours"] == pytest.approx(g_st - g_ilp)
    assert ilp.plans and ilp.plans[0][0] == pytest.approx(kw["control_interval_s"])


class _FutureScrambled(SageServeScaler):
    """The controller with every not-yet-arrived request relabelled and delayed before each decision."""

    def decide(self, obs, info, st):
        if not st["ready"]:
            self._setup(st)
        if "true" not in st:
            st["true"] = (st["arrival"].copy(), st["series"].copy(), st["niw_model"].copy())
        arrival, series, niw_model = (a.copy() for a in st["true"])
        now = float(st["sim"].now)
        hi = int(np.searchsorted(arrival, now, side="right"))
        series[hi:] = (series[hi:] + 1) % (st["n_model"] * st["n_region"])  # wrong (model, region)
        niw_model[hi:] = -1
        arrival[hi:] += 7.0  # later, still sorted, still in the future
        st["arrival"], st["series"], st["niw_model"] = arrival, series, niw_model
        return super().decide(obs, info, st)


def test_controller_reads_no_future_arrival():
    sc = _compressed_day(3600.0)
    kw = scenario_policy_kwargs(sc)
    args = dict(replica_capacity_rps=kw["replica_capacity_rps"], plan_interval_s=150.0, season_s=3600.0)
    honest, scrambled = SageServeScaler(**args), _FutureScrambled(**args)
    m1, a1 = run_env_episode(honest, "servegym/Scale-v0", sc, 3, record=True)
    m2, a2 = run_env_episode(scrambled, "servegym/Scale-v0", sc, 3, record=True)
    assert len(honest.plans) == len(scrambled.plans) >= 20
    for (t1, p1), (t2, p2) in zip(honest.plans, scrambled.plans, strict=True):
        assert t1 == t2 and p1.tolist() == p2.tolist()
    assert np.array_equal(a1, a2) and m1["cost/gpu_hours"] == m2["cost/gpu_hours"]
    # and the plans do follow the load: they are not all the same
    assert len({tuple(p.tolist()) for _, p in honest.plans}) > 1


def test_harness_runs_it_and_bad_input_is_named():
    from servegym.baselines.harness import evaluate
    from servegym.baselines.policy import PolicyError

    res = evaluate("sageserve", "sageserve_global_day", seeds=[1], overrides={"horizon_s": 300})
    assert res.records[0]["slo_attainment/interactive"] > 0.9
    with pytest.raises(PolicyError, match="replica_capacity_rps"):
        run_env_episode("sageserve", "servegym/Scale-v0", "chat_azure", 0, {"horizon_s": 120})
    sc = load_scenario("sageserve_global_day", overrides={"horizon_s": 120})
    bad = SageServeScaler(replica_capacity_rps=3.4, region_gpus={"mars": 8})
    with pytest.raises(PolicyError, match="unknown regions \\['mars'\\]"):
        run_env_episode(bad, "servegym/Scale-v0", sc, 0)
    with pytest.raises(PolicyError, match="not a vector env"):
        SageServeScaler(replica_capacity_rps=3.4).state(1)  # a second sub-env
