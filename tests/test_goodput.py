"""Goodput sweep: crossings on known curves, the rate scaling, the scheduling delay, and a real small sweep."""

from __future__ import annotations

import math

import numpy as np
import pytest

from servegym.baselines.goodput import (
    goodput_crossing,
    goodput_sweep,
    goodput_sweeps,
    limit_crossing,
    nominal_rate,
    sarathi_capacity,
    scheduling_delays,
)
from servegym.envs.scenario import load_scenario, scaled_sources
from servegym.envs.sim.simulator import Simulator
from servegym.envs.workloads.requests import RequestTable
from tests.conftest import tiny_scenario


def test_crossing_of_a_known_linear_curve():
    rates = np.linspace(1.0, 10.0, 10)
    att = 1.0 - 0.03 * rates  # 0.9 exactly at rate 10/3
    c = goodput_crossing(rates, att)
    assert c.status == "interpolated" and c.rate == pytest.approx(10.0 / 3.0)


def test_crossing_of_a_smooth_curve_is_the_linear_interpolation_between_brackets():
    rates = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    att = 1.0 / (1.0 + np.exp(2.0 * (rates - 4.0)))  # logistic: 0.88, 0.5, ... below 0.9 from rate 3
    c = goodput_crossing(rates, att)
    w = (0.9 - att[1]) / (att[2] - att[1])
    assert att[1] >= 0.9 > att[2]
    assert c.rate == pytest.approx(2.0 + w)
    exact = 4.0 - math.log(1 / 0.9 - 1) / -2.0  # where the logistic itself is 0.9
    assert 2.0 < c.rate < 3.0 and abs(c.rate - exact) < 0.5


def test_crossing_edge_cases():
    rates = [1.0, 2.0, 3.0]
    assert goodput_crossing(rates, [0.95, 0.93, 0.91]).status == "above_range"
    assert goodput_crossing(rates, [0.95, 0.93, 0.91]).rate == 3.0  # a lower bound
    below = goodput_crossing(rates, [0.5, 0.4, 0.3])
    assert below.status == "below_range" and math.isnan(below.rate)
    # non-monotone noise: the first drop below the target counts (conservative)
    assert goodput_crossing(rates, [0.95, 0.85, 0.95]).rate == pytest.approx(1.5)
    assert goodput_crossing(rates, [1.0, 0.9, 0.8]).rate == pytest.approx(2.0)  # exactly at the target: met
    assert goodput_crossing(rates, [1.0, float("nan"), 0.8]).rate == pytest.approx(1.0)  # NaN: not met
    with pytest.raises(ValueError, match="strictly increasing"):
        goodput_crossing([1.0, 1.0], [1.0, 0.5])


def test_sarathi_capacity_is_the_lower_crossing():
    rates = [1.0, 2.0, 3.0, 4.0]
    tbt = [0.05, 0.08, 0.12, 0.2]  # crosses 0.1 at 2.5
    delay = [0.1, 0.5, 1.0, 3.0]  # crosses 2.0 at 3.5
    assert limit_crossing(rates, tbt, 0.1).rate == pytest.approx(2.5)
    assert sarathi_capacity(rates, tbt, delay, 0.1).rate == pytest.approx(2.5)
    assert sarathi_capacity(rates, tbt, delay, float("nan")).rate == pytest.approx(3.5)  # no TBT SLO
    assert sarathi_capacity(rates, tbt, [3.0] * 4, 0.1).status == "below_range"


def test_scaled_sources_scale_rate_and_keep_the_rest():
    sc = load_scenario("multi_tenant_tiers")
    scaled = scaled_sources(sc, 1.5)
    assert [s["arrival"]["rate_per_s"] for s in scaled] == [9.0, 6.0, 2.25]
    assert scaled[2]["arrival"]["cv"] == 3.0 and scaled[1]["lengths"]["output_mean"] == 28
    assert nominal_rate(sc) == pytest.approx(11.5)
    trace = load_scenario("azure_conv_trace")
    assert scaled_sources(trace, 2.0)[0]["time_scale"] == 2.0
    agentic = scaled_sources(load_scenario("agentic_sessions"), 2.0)[0]
    assert agentic["arrival"]["rate_per_s"] == 1.0 and agentic["steps"]["mean"] == 8  # session starts
    with pytest.raises(ValueError):
        scaled_sources(sc, 0.0)


def test_scheduling_delay_is_zero_for_a_lone_request_and_grows_with_queueing():
    sc = tiny_scenario(pools=[{**tiny_scenario().pools[0].model_dump(), "initial_replicas": 1}])
    lone = RequestTable.from_arrays(np.array([1.0]), np.array([3000]), np.array([20]), 0)
    sim = Simulator(sc, requests=lone)
    sim.run()
    assert scheduling_delays(sim) == pytest.approx([0.0], abs=1e-9)  # TTFT is exactly the chunked prefill
    burst = RequestTable.from_arrays(np.zeros(8), np.full(8, 2000), np.full(8, 20), 0)
    sim = Simulator(sc, requests=burst)
    sim.run()
    d = np.sort(scheduling_delays(sim))
    assert d[0] < 1e-9 and d[-1] > 0.5  # later prompts wait for the earlier prefills' token budget


def test_real_sweep_is_monotone_and_crosses_between_its_brackets(tmp_path):
    over = {
        "horizon_s": 300.0,
        "timing": "v0",  # the factors below bracket the 90% crossing under timing v0
        # a 1 s TTFT SLO (chat_azure's 0.25 s DistServe SLO is missed by ~15% of requests at any load)
        "tenants": [{"name": "chat", "tier": "interactive", "ttft_slo_s": 1.0, "tpot_slo_s": 0.1}],
        "pools": [
            {
                "name": "a",
                "gpu": "a100-80gb",
                "model": "llama-2-7b",
                "min_replicas": 1,
                "max_replicas": 1,
                "initial_replicas": 1,
            }
        ],
    }
    factors = [0.2, 0.4, 0.6, 0.8]  # chat_azure's 5.53 req/s on one replica: 1.1 .. 4.4 req/s
    res = goodput_sweep("fcfs+lor", "chat_azure", factors, seeds=(0, 1), overrides=over, workers=2)
    att = np.array(res.attainment)
    assert np.all(np.diff(att) <= 0.0), att  # more load, never better
    assert att[0] > 0.9 > att[-1]
    i = int(np.argmax(att < 0.9))
    assert res.rates[i - 1] <= res.goodput.rate <= res.rates[i]
    assert res.goodput.status == "interpolated"
    assert res.goodput_per_gpu == pytest.approx(res.goodput.rate)  # one static 1-GPU replica
    assert res.rates == pytest.approx([f * 5.53 for f in factors])
    assert np.all(np.diff(res.sched_delay_p50) >= 0.0)
    assert res.tbt_slo_s == 0.1  # chat_azure's TPOT SLO
    assert res.sarathi.status == "interpolated" and res.rates[0] < res.sarathi.rate < res.rates[-1]

    from servegym.baselines.plots import plot_attainment_curves

    png = plot_attainment_curves(
        {res.policy: (res.rates, res.attainment)}, tmp_path / "a.png", 0.9, {res.policy: res.goodput.rate}
    )
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_sweeps_share_one_pool_and_keep_policies_apart():
    over = {"horizon_s": 120.0, "timing": "v0"}  # at v1's faster timing both policies meet every SLO
    a, b = goodput_sweeps(
        ["fcfs+lor", "sjf+lor"], "chat_azure", [0.5, 1.0], seeds=(0,), overrides=over, workers=1
    )
    assert (a.policy, b.policy) == ("fcfs+lor", "sjf+lor")
    assert a.attainment != b.attainment
    assert len(a.records) == 2 and {r["factor"] for r in a.records} == {0.5, 1.0}
