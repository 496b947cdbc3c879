"""Baselines: each rule does what its name says on hand-built info dicts, the agents make the same decisions as
the core's built-in rules through the decision interface, and a working simulator reproduces known facts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from servegym.baselines import PolicyError, builtin_policies, list_policies, make_policy
from servegym.baselines.policy import unbatch_infos
from servegym.envs.metrics import compute_metrics
from servegym.envs.scenario import ScenarioError, load_scenario, scenario_from_dict
from servegym.envs.sim import scaling as sim_scaling
from servegym.envs.sim import state as S
from servegym.envs.sim.prefix_cache import prefix_hits
from servegym.envs.sim.simulator import Simulator
from servegym.envs.sim.state import EV_BATCH, EV_DONE, EV_ROUTE, EV_SCALE, EV_TIME
from tests.conftest import examples, tiny_dict, tiny_scenario
from tests.test_sim_core import drive

# ---------------------------------------------------------------- hand-built info dicts


def batch_info(mask: list[bool] | None = None, **cols: list[Any]) -> dict[str, Any]:
    k = len(cols["request_id"])
    defaults = {
        "arrival_s": [0.0] * k,
        "deadline_s": [10.0] * k,
        "prompt_tokens": [100] * k,
        "tier": [0] * k,
        "tenant": [0] * k,
        "tenant_counter": [0.0] * k,
        "tenant_weight": [1.0] * k,
        "session_deadline_s": [np.inf] * k,
        "session_step": [0] * k,
    }
    defaults.update(cols)
    m = np.ones(k + 1, dtype=bool) if mask is None else np.array([*mask, True])
    return {"decision": "batch", "batch": {c: np.asarray(v) for c, v in defaults.items()}, "action_mask": m}


def route_info(mask: list[bool] | None = None, **cols: Any) -> dict[str, Any]:
    r = len(cols["queue_len"])
    feats = {
        "running": [0] * r,
        "kv_frac": [0.0] * r,
        "prefix_hits": [0] * r,
        "pool": [0] * r,
        "price_per_gpu_hour": [2.0] * r,
        "tp": [1] * r,
    }
    feats.update(cols)
    sec = {k: (np.asarray(v) if k != "rr_pointer" else v) for k, v in feats.items()}
    m = np.ones(r, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    return {"decision": "route", "route": sec, "action_mask": m}


def scale_info(deltas: range = range(-2, 3), mask: Any = None, **cols: Any) -> dict[str, Any]:
    p = len(cols["kv_util"])
    feats = {
        "n_up": [2] * p,
        "n_active": [2] * p,
        "min": [1] * p,
        "max": [8] * p,
        "queue_len": [0] * p,
        "arrivals_last_interval": [0] * p,
        "cold_start_s": [155.0] * p,
    }
    feats.update(cols)
    info = {"decision": "scale", "scale": {k: np.asarray(v) for k, v in feats.items()}}
    info["scale_deltas"] = np.array(list(deltas))
    if mask is not None:
        info["action_mask"] = np.asarray(mask, dtype=bool)
    return info


def act(name: str, info: dict[str, Any], seed: int = 0, **kw: Any) -> Any:
    pol = make_policy(name, **kw)
    pol.reset(seed)
    return pol.act(None, info)


def test_registry_lists_every_rule_by_kind():
    assert list_policies("batch") == [
        "fcfs",
        "edf",
        "sjf",
        "vtc",
        "wfs",
        "tier_priority",
        "session_edf",
        "session_las",
        "wsc",
    ]
    assert list_policies("route") == [
        "round_robin",
        "random",
        "jsq",
        "lor",
        "least_kv",
        "p2c",
        "prefix_affinity",
        "cost_aware",
        "session_affinity",
        "splitwise",
        "mooncake",
    ]
    assert list_policies("scale") == [
        "static",
        "reactive",
        "target_util",
        "forecast",
        "reactive_replace",
        "spot_mix",
    ]
    assert builtin_policies("edf+jsq+reactive") == {
        "batching": "edf",
        "routing": "jsq",
        "scaling": "reactive",
    }
    assert builtin_policies("vtc") == {"batching": "vtc"}
    with pytest.raises(PolicyError, match="unknown policy 'edff'"):
        make_policy("edff")
    with pytest.raises(PolicyError, match="'edf' and 'fcfs' both answer 'batch'"):
        make_policy("edf+fcfs")
    with pytest.raises(PolicyError, match="no checkpoint loader"):
        make_policy("runs/agent.ckpt")
    with pytest.raises(PolicyError, match="runs/agent.pt.*no such file"):  # .pt: native PPO's loader
        make_policy("runs/agent.pt")
    with pytest.raises(PolicyError, match="needs replica_capacity_rps"):
        make_policy("forecast")


def test_batching_rules_pick_by_their_key():
    info = batch_info(
        request_id=[5, 3, 9, 7],
        arrival_s=[1.0, 2.0, 3.0, 0.5],
        deadline_s=[9.0, 4.0, 6.0, 8.0],
        prompt_tokens=[300, 200, 50, 900],
        tier=[1, 0, 0, 1],
        tenant=[0, 1, 2, 0],
        tenant_counter=[50.0, 40.0, 30.0, 50.0],
        tenant_weight=[1.0, 1.0, 0.25, 1.0],
    )
    assert act("fcfs", info) == 3  # earliest arrival
    assert act("edf", info) == 1  # earliest deadline
    assert act("sjf", info) == 2  # shortest prompt
    assert act("vtc", info) == 2  # smallest tenant counter
    assert act("wfs", info) == 1  # smallest counter / weight: 40 < 50 < 120
    assert act("tier_priority", info) == 1  # interactive first, then FCFS


def test_batching_respects_mask_ties_and_empty():
    info = batch_info([False, True, True], request_id=[1, 8, 4], deadline_s=[1.0, 5.0, 5.0])
    assert act("edf", info) == 2  # the earliest deadline is masked; tie on 5.0 goes to the lower request id
    assert act("edf", batch_info([False, False], request_id=[1, 2])) == 2  # nothing admissible: start (K)


def test_vtc_reproduces_the_worked_example():
    """Sheng et al.'s rule: counters +1/input and +2/output token; a tenant joining the backlog is lifted to
    the smallest backlogged counter. A queues a1..a3 (100 in, 10 out), B queues b1 just after; one
    sequence at a time. The served order is a1, b1, a2, a3 (FCFS would be a1, a2, a3, b1)."""
    reqs = {"a1": ("A", 0.0), "a2": ("A", 0.0), "a3": ("A", 0.0), "b1": ("B", 0.001)}
    ids = {name: i for i, name in enumerate(reqs)}
    counter = {"A": 0.0, "B": 0.0}
    waiting: list[str] = ["a1", "a2", "a3"]
    order = []
    pol = make_policy("vtc")
    pol.reset(0)
    for step in range(4):
        k = pol.act(
            None,
            batch_info(
                request_id=[ids[w] for w in waiting],
                arrival_s=[reqs[w][1] for w in waiting],
                tenant=[0 if reqs[w][0] == "A" else 1 for w in waiting],
                tenant_counter=[counter[reqs[w][0]] for w in waiting],
            ),
        )
        name = waiting.pop(k)
        order.append(name)
        counter[reqs[name][0]] += 100  # admitted: 1 per input token
        if (
            step == 0
        ):  # b1 arrives while a1 runs: B joins the backlog, lifted to the smallest backlogged counter
            counter["B"] = max(counter["B"], min(counter[reqs[w][0]] for w in waiting))
            waiting.append("b1")
        counter[reqs[name][0]] += 2 * 10  # served to completion: 2 per output token
    assert order == ["a1", "b1", "a2", "a3"]


def test_routing_rules_pick_by_their_key():
    info = route_info(
        queue_len=[3, 1, 2, 0],
        running=[1, 9, 1, 5],
        kv_frac=[0.5, 0.2, 0.3, 0.9],
        prefix_hits=[0, 0, 2, 2],
    )
    assert act("jsq", info) == 3  # shortest waiting queue
    assert act("lor", info) == 2  # least waiting + running: 4, 10, 3, 5
    assert act("least_kv", info) == 1
    assert act("prefix_affinity", info) == 2  # longest prefix (2 blocks), then least outstanding (3 < 5)
    masked = route_info([True, True, True, False], queue_len=[3, 1, 2, 0], running=[1, 9, 1, 5])
    assert act("jsq", masked) == 1  # replica 3 is not allowed
    assert act("jsq", route_info(queue_len=[2, 1, 1], running=[0, 4, 3])) == 2  # queue tie: fewer running


def test_round_robin_cycles_over_allowed_replicas():
    pol = make_policy("round_robin")
    pol.reset(0)
    mask = [True, False, True, True]
    picks = [pol.act(None, route_info(mask, queue_len=[0] * 4)) for _ in range(6)]
    assert picks == [0, 2, 3, 0, 2, 3]
    assert act("round_robin", route_info(mask, queue_len=[0] * 4, rr_pointer=4)) == 2  # 4 mod 3 -> 2nd


def test_random_and_p2c_are_seeded_and_respect_the_mask():
    mask = [True, False, True, True, False]
    info = route_info(mask, queue_len=[0, 0, 5, 1, 0], running=[0, 0, 0, 0, 0])
    for name in ("random", "p2c"):
        pol = make_policy(name)
        pol.reset(3)
        a = [pol.act(None, info) for _ in range(300)]
        pol.reset(3)
        assert a == [pol.act(None, info) for _ in range(300)]  # same seed, same draws
        assert set(a) <= {0, 2, 3}
    counts = np.bincount(a, minlength=5)
    # p2c picks the less loaded of two distinct samples: replica 2 (the most loaded) never wins
    assert counts[2] == 0 and counts[0] > counts[3] > 0


def test_cost_aware_takes_cheapest_replica_predicted_to_meet_the_slo():
    kw = dict(price_per_gpu_hour=[4.25, 4.25, 2.21, 2.21], tp=[4, 4, 4, 4])
    ok_cheap = route_info(queue_len=[0, 0, 0, 0], running=[1, 0, 9, 3], kv_frac=[0.1, 0.0, 0.3, 0.2], **kw)
    assert act("cost_aware", ok_cheap) == 3  # cheapest pool, then least outstanding
    full_cheap = route_info(queue_len=[0, 0, 2, 0], running=[1, 0, 9, 3], kv_frac=[0.1, 0.0, 0.3, 0.6], **kw)
    assert act("cost_aware", full_cheap) == 1  # the cheap replicas queue or are too full: next price
    none_ok = route_info(queue_len=[1, 2, 3, 1], running=[1, 0, 0, 9], **kw)
    assert act("cost_aware", none_ok) == 0  # nobody predicted to meet it: least outstanding (2)


def test_reactive_scales_up_above_half_and_down_below_quarter():
    info = scale_info(kv_util=[0.51, 0.5, 0.3, 0.25, 0.24, 0.9, 0.1], n_up=[2, 2, 2, 2, 2, 8, 1])
    deltas = info["scale_deltas"][act("reactive", info)]
    # +1 above 0.5; hold in [0.25, 0.5]; -1 below 0.25; never past max (8) or below min (1)
    assert deltas.tolist() == [1, 0, 0, 0, -1, 0, 0]
    blocked = scale_info(kv_util=[0.9], mask=[True, True, True, False, False])  # no scale-up allowed
    assert blocked["scale_deltas"][act("reactive", blocked)].tolist() == [0]
    own = scale_info(kv_util=[0.45], n_up=[2])
    assert own["scale_deltas"][act("reactive", own, reactive_up=0.4)].tolist() == [1]


def test_target_util_sizes_to_rate_and_forecast_scales_ahead_of_a_ramp():
    # 600 arrivals in a 60 s interval = 10 req/s; at 80% of 2.5 req/s per replica that needs 5 replicas
    kw = dict(replica_capacity_rps=2.5, target_utilization=0.8, control_interval_s=60.0)
    info = scale_info(range(-4, 5), kv_util=[0.3], n_up=[3], n_active=[3], arrivals_last_interval=[600])
    assert info["scale_deltas"][act("target_util", info, **kw)].tolist() == [2]
    # a backlog of 120 waiting requests is 2 more req/s to clear within the interval: 6 replicas
    info_q = scale_info(range(-4, 5), kv_util=[0.3], n_up=[3], queue_len=[120], arrivals_last_interval=[600])
    assert info_q["scale_deltas"][act("target_util", info_q, **kw)].tolist() == [3]
    # arrivals ramping 300 -> 600 per interval: the forecast one interval + cold start ahead asks for more
    ramp = [300, 400, 500, 600]
    sizes = {}
    for name in ("target_util", "forecast"):
        pol = make_policy(name, **kw)
        pol.reset(0)
        for a in ramp:
            out = pol.act(None, scale_info(range(-8, 9), kv_util=[0.3], n_up=[1], arrivals_last_interval=[a]))
        sizes[name] = int(np.arange(-8, 9)[out][0]) + 1
    assert sizes["target_util"] == 5
    assert sizes["forecast"] > sizes["target_util"]


def test_capacity_scalers_scale_down_one_per_tick_after_the_cooldown():
    kw = dict(replica_capacity_rps=2.5, control_interval_s=60.0, scale_down_cooldown_s=120.0)
    pol = make_policy("target_util", **kw)
    pol.reset(0)
    busy = scale_info(range(-4, 5), kv_util=[0.5], n_up=[2], arrivals_last_interval=[600])
    assert busy["scale_deltas"][pol.act(None, busy)].tolist() == [3]  # t = 60: up to 5
    quiet = scale_info(range(-4, 5), kv_util=[0.0], n_up=[5], arrivals_last_interval=[0])
    got = [int(quiet["scale_deltas"][pol.act(None, quiet)][0]) for _ in range(3)]
    assert got == [0, -1, -1]  # t = 120 is within 120 s of the scale-up; then one replica per tick


def test_cluster_combination_dispatches_by_decision():
    pol = make_policy("edf+jsq+reactive")
    pol.reset(0)
    assert pol.act(None, batch_info(request_id=[1, 2], deadline_s=[5.0, 3.0])) == 1
    assert pol.act(None, route_info(queue_len=[2, 0, 1])) == 1
    assert pol.act(None, scale_info(kv_util=[0.9])).tolist() == [3]  # index of +1 in -2..2
    partial = make_policy("edf+jsq")
    with pytest.raises(PolicyError, match="no rule for decision='scale'"):
        partial.act(None, scale_info(kv_util=[0.9]))
    with pytest.raises(PolicyError, match="answers \\['route'\\] decisions, got decision='batch'"):
        make_policy("jsq").act(None, batch_info(request_id=[1]))


def test_act_batch_keeps_state_per_env_and_splits_vector_infos():
    pol = make_policy("round_robin")
    pol.reset(0)
    infos = [route_info(queue_len=[0, 0, 0]), route_info([False, True, True], queue_len=[0, 0, 0])]
    first = pol.act_batch(np.zeros((2, 4)), infos)
    second = pol.act_batch(np.zeros((2, 4)), infos)
    assert first.tolist() == [0, 1] and second.tolist() == [1, 2]  # each env has its own pointer
    # gymnasium's vector form: one dict of stacked arrays with "_key" presence masks
    vec = {
        "decision": np.array(["route", "route"]),
        "_decision": np.array([True, True]),
        "route": {
            "queue_len": np.array([[3, 1], [0, 4]]),
            "running": np.zeros((2, 2), int),
            "kv_frac": np.zeros((2, 2)),
        },
        "_route": np.array([True, True]),
        "action_mask": np.ones((2, 2), bool),
        "_action_mask": np.array([True, True]),
    }
    split = unbatch_infos(vec, 2)
    assert split[1]["route"]["queue_len"].tolist() == [0, 4]
    jsq = make_policy("jsq")
    jsq.reset(0)
    assert jsq.act_batch(np.zeros((2, 3)), vec).tolist() == [1, 0]
    shared = {"scale_deltas": np.arange(-2, 3), "scale": {"kv_util": np.array([[0.9], [0.1]])}}
    assert unbatch_infos(shared, 2)[1]["scale_deltas"].tolist() == [-2, -1, 0, 1, 2]


# ---------------------------------------------------------------- agents vs the core's built-in rules


def core_route_info(sim: Simulator, decisions: int) -> dict[str, Any]:
    """The route contract of issue 3, built from the core state (what the env will expose)."""
    st = sim.state
    i = sim.pending_request
    pool = st.repi[S.XI_POOL]
    n = st.repi.shape[1]
    return {
        "decision": "route",
        "action_mask": sim.route_mask(),
        "route": {
            "queue_len": st.repi[S.XI_QN].copy(),
            "running": st.repi[S.XI_ND] + st.repi[S.XI_NPF],
            "kv_frac": st.repi[S.XI_KV_USED] / st.repi[S.XI_KV_CAP],
            "prefix_hits": np.array([prefix_hits(st, r, i, False) for r in range(n)]),
            "pool": pool,
            "price_per_gpu_hour": st.poolf[S.PF_PRICE][pool],
            "tp": st.pooli[S.PI_TP][pool],
            "rr_pointer": decisions,
        },
        "request": {"home_replica": int(st.rqi[S.RI_HOME, i])},
    }


def core_batch_info(sim: Simulator) -> tuple[dict[str, Any], np.ndarray]:
    """The batch contract over every visible waiting request of the forming replica, admissible or not.

    The env offers only admissible requests (the mask); this reference offers all of them so that a driver
    can reproduce the core's head-of-line rule: if the best request does not fit, start the iteration.
    """
    st = sim.state
    r = sim.forming_replica
    q = st.queue[r, : st.repi[S.XI_QN, r]].astype(np.int64)
    ids = q[st.rqf[S.RF_VISIBLE][q] <= sim.now]
    k = len(ids)
    tenant = st.rqi[S.RI_TENANT][ids]
    tier = st.rqi[S.RI_TIER][ids]
    arrival = st.rqf[S.RF_ARRIVAL][ids]
    ttft_deadline = arrival + st.rqf[S.RF_TTFT_SLO][ids]
    deadline = np.where(tier == S.TIER_INTERACTIVE, ttft_deadline, st.rqf[S.RF_DEADLINE][ids])
    first = st.rqi[S.RI_FIRST][ids]
    session_dl = np.where(first >= 0, st.rqf[S.RF_ARRIVAL][first] + st.ten[S.TF_SESSION_SLO][tenant], np.inf)
    info = {
        "decision": "batch",
        "action_mask": np.ones(k + 1, dtype=bool),
        "batch": {
            "request_id": ids,
            "arrival_s": arrival,
            "deadline_s": deadline,
            "prompt_tokens": st.rqi[S.RI_PROMPT][ids],
            "tier": tier,
            "tenant": tenant,
            "tenant_counter": st.ten[S.TF_COUNTER][tenant],
            "tenant_weight": st.ten[S.TF_WEIGHT][tenant],
            "session_deadline_s": session_dl,
            "session_step": st.rqi[S.RI_STEP][ids],
        },
    }
    return info, ids


def core_scale_info(sim: Simulator) -> dict[str, Any]:
    st = sim.state
    n_pool = st.pooli.shape[1]
    counts = [sim_scaling.pool_counts(st, p) for p in range(n_pool)]
    loads = [sim_scaling.pool_load(st, p) for p in range(n_pool)]
    return {
        "decision": "scale",
        "scale_deltas": np.arange(-8, 9),
        "scale": {
            "kv_util": np.array([u for u, _ in loads]),
            "queue_len": np.array([q for _, q in loads]),
            "n_up": np.array([c[0] for c in counts]),
            "n_active": np.array([c[1] for c in counts]),
            "min": st.pooli[S.PI_MIN].copy(),
            "max": st.pooli[S.PI_MAX].copy(),
            "arrivals_last_interval": st.poolf[S.PF_ARR_LAST].copy(),
            "routed_last_interval": st.poolf[S.PF_ROUTED_LAST].copy(),
            "cold_start_s": st.poolf[S.PF_COLD_START].copy(),
            "spot": st.pooli[S.PI_SPOT].copy(),
            "lost_last_interval": st.poolf[S.PF_LOST_LAST].astype(np.int64),
            "interactive_last_interval": st.poolf[S.PF_ARR_INTER_LAST].copy(),
        },
    }


def drive_with_agent(sim: Simulator, policy: Any) -> dict[str, Any]:
    """Answer every decision the simulator hands out with ``policy`` (through the info contract)."""
    routes = 0
    while (ev := sim.advance()) != EV_DONE:
        if ev == EV_ROUTE:
            assert sim.apply_route(policy.act(None, core_route_info(sim, routes)))
            routes += 1
        elif ev == EV_BATCH:
            info, ids = core_batch_info(sim)
            a = policy.act(None, info)
            # head-of-line, as the core: the best visible request does not fit -> start the iteration
            if a == len(ids) or not sim.apply_admit(int(ids[a])):
                assert sim.apply_start()
        else:
            assert ev == EV_SCALE
            info = core_scale_info(sim)
            sim.apply_scale(info["scale_deltas"][policy.act(None, info)])
    assert sim.audit() == ""
    return compute_metrics(sim.outcome(final=True))


TWO_POOLS = [
    {
        "name": "a100",
        "gpu": "a100-80gb",
        "model": "llama-2-7b",
        "min_replicas": 1,
        "max_replicas": 3,
        "initial_replicas": 2,
        "cold_start_s": 5.0,
        "prefix_cache": True,
    },
    {
        "name": "h100",
        "gpu": "h100-80gb",
        "model": "llama-2-7b",
        "min_replicas": 1,
        "max_replicas": 3,
        "initial_replicas": 1,
        "cold_start_s": 5.0,
    },
]
PREFIX_SOURCE = {
    "kind": "synthetic",
    "tenant": "chat",
    "arrival": {
        "process": "gamma",
        "rate_per_s": 12.0,
        "cv": 2.0,
        "diurnal": {"period_s": 60.0, "peak_to_trough": 4.0, "peak_time_s": 40.0},
    },
    "lengths": {"dist": "lognormal", "prompt_mean": 1500, "output_mean": 100, "prompt_max": 6000},
    "prefix": {"groups": 4, "shared_tokens": 1024},
}
# Two tiers and two weights so that every batching rule orders differently; loaded enough that requests queue.
MIXED = dict(
    horizon_s=60.0,
    pools=TWO_POOLS,
    tenants=[
        {"name": "chat", "tier": "interactive", "ttft_slo_s": 0.5, "tpot_slo_s": 0.1},
        {"name": "bulk", "tier": "batch", "deadline_s": 30.0, "weight": 0.5},
    ],
    sources=[
        PREFIX_SOURCE,
        {
            "kind": "synthetic",
            "tenant": "bulk",
            "arrival": {"process": "poisson", "rate_per_s": 4.0},
            "lengths": {"dist": "lognormal", "prompt_mean": 3000, "output_mean": 300, "prompt_max": 8000},
        },
    ],
)
CONTROL_KEY = {"route": "routing", "batch": "batching", "scale": "scaling"}


@pytest.mark.parametrize(
    "control, rules",
    [
        ("route", ["round_robin", "jsq", "lor", "least_kv", "prefix_affinity", "cost_aware"]),
        ("batch", ["fcfs", "edf", "sjf", "vtc", "wfs", "tier_priority"]),
        ("scale", ["static", "reactive", "target_util", "forecast"]),
    ],
)
def test_agents_decide_as_the_builtin_rules(control: str, rules: list[str]):
    """Each baseline agent, fed the info contract built from the core state, reproduces its built-in rule
    exactly; the rules themselves give distinct outcomes here, so the comparison has teeth."""
    outcomes = {}
    for rule in rules:
        pols: dict[str, Any] = {"routing": "lor", CONTROL_KEY[control]: rule}
        pols["replica_capacity_rps"] = {"a100": 3.0, "h100": 5.0}
        sc = tiny_scenario(**MIXED, policies=pols)
        builtin = compute_metrics(Simulator(sc, seed=4).run())
        kw: dict[str, Any] = {}
        if rule in ("target_util", "forecast"):
            kw = {"replica_capacity_rps": [3.0, 5.0], "control_interval_s": sc.control_interval_s}
        elif rule == "cost_aware":  # with capacities, the core compares price per request/s
            kw = {"replica_capacity_rps": [3.0, 5.0]}
        agent = make_policy(rule, **kw)
        agent.reset(0)
        assert drive_with_agent(Simulator(sc, seed=4, control=(control,)), agent) == builtin, rule
        outcomes[rule] = builtin
    distinct = {json.dumps(m, sort_keys=True) for m in outcomes.values()}
    assert len(distinct) >= len(rules) - 1, "the scenario does not tell the rules apart"


@pytest.mark.parametrize(
    "control, rule", [("route", "session_affinity"), ("batch", "session_las"), ("batch", "session_edf")]
)
def test_session_agents_decide_as_the_builtin_rules(control: str, rule: str):
    """The session rules, on agentic sessions at a rate where queues form and the rules matter."""
    src = load_scenario("agentic_sessions").sources[0].model_dump()
    src["arrival"]["rate_per_s"] = 0.9
    # timing v0: agentic_sessions grows contexts past Llama-2-7B's 4k context, which v1 rejects
    over = {"horizon_s": 300.0, "sources": [src], "policies": {CONTROL_KEY[control]: rule}, "timing": "v0"}
    builtin = compute_metrics(Simulator("agentic_sessions", seed=2, overrides=over).run())
    agent = make_policy(rule, **({"session_max_load": 128} if control == "route" else {}))
    agent.reset(0)
    sim = Simulator("agentic_sessions", seed=2, overrides=over, control=(control,))
    assert drive_with_agent(sim, agent) == builtin
    over["policies"] = {CONTROL_KEY[control]: "lor" if control == "route" else "fcfs"}
    assert compute_metrics(Simulator("agentic_sessions", seed=2, overrides=over).run()) != builtin


def test_forecast_agent_matches_builtin_on_a_diurnal_ramp():
    """On a real ramp the forecast decides differently from target_util, and the agent still matches it."""
    over = {"horizon_s": 1500.0, "policies": {"scaling": "forecast"}}
    builtin = compute_metrics(Simulator("diurnal_chat", seed=1, overrides=over).run())
    sim = Simulator("diurnal_chat", seed=1, overrides=over, control=("scale",))
    agent = make_policy("forecast", replica_capacity_rps=sim.scenario.policies.replica_capacity_rps)
    agent.reset(0)
    assert drive_with_agent(sim, agent) == builtin
    over["policies"] = {"scaling": "target_util"}
    assert compute_metrics(Simulator("diurnal_chat", seed=1, overrides=over).run()) != builtin


@pytest.mark.parametrize("routing", ["cost_aware", "prefix_affinity"])
@pytest.mark.parametrize("scaling", ["target_util", "forecast"])
def test_new_rules_keep_the_core_consistent(routing: str, scaling: str):
    """The core's fuzz test predates these rules: audit every aggregate at every slice of a run with them."""
    sc = tiny_scenario(
        horizon_s=60.0,
        pools=[{**TWO_POOLS[0], "min_replicas": 0, "gpu_memory_utilization": 0.2}, TWO_POOLS[1]],
        sources=[{**PREFIX_SOURCE, "arrival": {"process": "gamma", "rate_per_s": 20.0, "cv": 3.0}}],
        policies={"routing": routing, "scaling": scaling, "replica_capacity_rps": 2.0},
    )
    sim = Simulator(sc, seed=7)
    for t in np.arange(1.3, 62.0, 1.3):
        assert sim.advance(t) in (EV_TIME, EV_DONE)
        assert sim.audit() == ""
        c = sim.counts()
        assert c["arrived"] == c["finished"] + c["dropped"] + c["in_flight"]


@settings(max_examples=examples(12), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=hs.integers(0, 2**31 - 1),
    rate=hs.floats(1.0, 40.0),
    routing=hs.sampled_from(["cost_aware", "lor", "random"]),
    scaling=hs.sampled_from(["target_util", "forecast", "reactive"]),
    control=hs.sets(hs.sampled_from(["route", "batch"])),
    two_models=hs.booleans(),
)
def test_new_rules_fuzz(seed, rate, routing, scaling, control, two_models):
    """The core's conservation fuzz (random answers to the caller's decisions, audit at every stop) with the
    new rules in charge of the rest, on one or two models (arrival counts are kept per model)."""
    pools = [{**TWO_POOLS[0], "min_replicas": 0}, dict(TWO_POOLS[1])]
    tenants = [{"name": "chat", "tier": "interactive", "ttft_slo_s": 0.5, "tpot_slo_s": 0.1}]
    sources = [{**PREFIX_SOURCE, "arrival": {"process": "gamma", "rate_per_s": rate, "cv": 2.0}}]
    if two_models:
        pools[1]["model"] = "llama-3-8b"
        tenants.append(
            {
                "name": "code",
                "tier": "interactive",
                "ttft_slo_s": 0.3,
                "tpot_slo_s": 0.2,
                "model": "llama-3-8b",
            }
        )
        sources.append({**sources[0], "tenant": "code"})
    sc = tiny_scenario(
        horizon_s=30.0,
        max_wait_s=8.0,
        control_interval_s=5.0,
        pools=pools,
        tenants=tenants,
        sources=sources,
        policies={
            "routing": routing,
            "scaling": scaling,
            "replica_capacity_rps": 2.0,
            "scale_down_cooldown_s": 5.0,
        },
    )
    sim = Simulator(sc, seed=seed, control=tuple(sorted(control)))
    drive(sim, np.random.default_rng(seed), step_s=1.7)


def test_arrival_counts_are_per_model_and_per_interval():
    """PF_ARR_LAST of a pool is the arrivals for its model in the last control interval; PF_ROUTED_LAST the
    requests routed to the pool in it."""
    pools = [dict(TWO_POOLS[0]), {**TWO_POOLS[1], "model": "llama-3-8b"}]
    tenants = [
        {"name": "chat", "tier": "interactive", "ttft_slo_s": 0.5, "tpot_slo_s": 0.1},
        {"name": "code", "tier": "interactive", "ttft_slo_s": 0.5, "tpot_slo_s": 0.1, "model": "llama-3-8b"},
    ]
    lengths = {"dist": "lognormal", "prompt_mean": 300, "output_mean": 20}
    sources = [
        {
            "kind": "synthetic",
            "tenant": n,
            "arrival": {"process": "poisson", "rate_per_s": r},
            "lengths": lengths,
        }
        for n, r in (("chat", 9.0), ("code", 2.0))
    ]
    sim = Simulator(tiny_scenario(horizon_s=60.0, pools=pools, tenants=tenants, sources=sources), seed=2)
    sim.advance(35.0)  # ticks every 10 s: the last complete interval is [20, 30)
    st = sim.state
    arrival = st.rqf[S.RF_ARRIVAL]
    in_interval = (arrival >= 20.0) & (arrival < 30.0)
    per_model = [np.count_nonzero(in_interval & (st.rqi[S.RI_MODEL] == m)) for m in (0, 1)]
    assert st.poolf[S.PF_ARR_LAST].tolist() == per_model
    assert per_model[0] > 3 * per_model[1] > 0
    assert st.poolf[S.PF_ROUTED_LAST].tolist() == per_model  # one pool per model: every arrival routed there


def test_capacity_scalers_require_a_capacity():
    with pytest.raises(ScenarioError, match="needs replica_capacity_rps"):
        tiny_scenario(policies={"scaling": "forecast"})
    with pytest.raises(ScenarioError, match="unknown pools \\['b'\\]"):
        tiny_scenario(policies={"scaling": "target_util", "replica_capacity_rps": {"a100": 1.0, "b": 2.0}})


# ---------------------------------------------------------------- facts a working simulator must reproduce


def run(sc: Any, seed: int) -> dict[str, Any]:
    # the facts were measured under timing v0: their loads were set for it (docs/baselines.md)
    return compute_metrics(Simulator(sc, seed=seed, timing="v0").run())


def one_pool(replicas: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "a100",
            "gpu": "a100-80gb",
            "model": "llama-2-7b",
            "min_replicas": replicas,
            "max_replicas": replicas,
            "initial_replicas": replicas,
        }
    ]


def fact_scenario(**kw: Any) -> Any:
    base = tiny_dict(horizon_s=300.0, control_interval_s=60.0, max_wait_s=60.0, queue_capacity=4096)
    base.update(kw)
    return scenario_from_dict(base, source="tests/test_baselines")


AZURE = {"dist": "empirical", "table": "azure_conv_2023"}


def test_fair_share_beats_fcfs_on_jain_with_an_aggressive_tenant():
    """One replica (~3.4 req/s), an aggressive tenant at 8 req/s and two light ones at 0.75 req/s each.

    FCFS serves in proportion to demand, so the aggressive tenant takes most of the replica; VTC serves the
    light tenants' whole demand and gives the aggressive one the rest (max-min fair).
    """
    tenants = [
        {"name": n, "tier": "interactive", "ttft_slo_s": 5.0, "tpot_slo_s": 0.2}
        for n in ("aggressive", "alice", "bob")
    ]
    sources = [
        {
            "kind": "synthetic",
            "tenant": n,
            "arrival": {"process": "poisson", "rate_per_s": r},
            "lengths": AZURE,
        }
        for n, r in (("aggressive", 8.0), ("alice", 0.75), ("bob", 0.75))
    ]
    for seed in (0, 1):
        m = {
            b: run(
                fact_scenario(pools=one_pool(1), tenants=tenants, sources=sources, policies={"batching": b}),
                seed,
            )
            for b in ("fcfs", "vtc")
        }
        assert m["vtc"]["fairness/jain"] > m["fcfs"]["fairness/jain"] + 0.2, (seed, m)
        assert m["vtc"]["fairness/jain_maxmin"] > 0.95 > m["fcfs"]["fairness/jain_maxmin"] + 0.2
        assert m["vtc"]["slo_attainment/tenant/alice"] > 0.9 > m["fcfs"]["slo_attainment/tenant/alice"]


def test_edf_beats_fcfs_with_tight_ttft_and_mixed_deadlines():
    """Two replicas near saturation (KV-bound: short prompts, long outputs), half the requests with a 1 s TTFT
    SLO and half with 30 s. Requests queue for seconds when KV runs out; EDF admits the tight ones first.

    Why this regime (see docs/baselines.md): with sub-second TTFT SLOs the misses come from waiting for the
    next iteration and from prefill time, which no admission order changes; in sustained overload EDF
    serves requests already past their deadline first (its domino effect) and loses to FCFS. Measured over
    12 seeds: +1.3 points of attainment (standard error 0.6), +4.6 points for the tight tenant.
    """
    lengths = {
        "dist": "lognormal",
        "prompt_mean": 500,
        "output_mean": 400,
        "prompt_max": 2000,
        "output_max": 2000,
    }
    tenants = [
        {"name": "tight", "tier": "interactive", "ttft_slo_s": 1.0, "tpot_slo_s": 0.2},
        {"name": "loose", "tier": "interactive", "ttft_slo_s": 30.0, "tpot_slo_s": 0.2},
    ]
    sources = [
        {
            "kind": "synthetic",
            "tenant": n,
            "arrival": {"process": "poisson", "rate_per_s": 3.5},
            "lengths": lengths,
        }
        for n in ("tight", "loose")
    ]
    diff, diff_tight = [], []
    for seed in range(12):  # the effect is a few points: enough paired seeds to see it above the noise
        m = {
            b: run(
                fact_scenario(
                    pools=one_pool(2),
                    tenants=tenants,
                    sources=sources,
                    max_wait_s=120.0,
                    policies={"batching": b},
                ),
                seed,
            )
            for b in ("fcfs", "edf")
        }
        diff.append(m["edf"]["slo_attainment"] - m["fcfs"]["slo_attainment"])
        diff_tight.append(m["edf"]["slo_attainment/tenant/tight"] - m["fcfs"]["slo_attainment/tenant/tight"])
    mean, se = np.mean(diff), np.std(diff, ddof=1) / np.sqrt(len(diff))
    assert mean > 1.645 * se > 0, diff  # one-sided 95%: EDF's attainment is higher on average
    assert np.mean(diff_tight) > 0.02, diff_tight


def test_jsq_and_lor_beat_random_routing_under_heavy_load():
    """Four replicas at ~13 req/s, close to their capacity (~3.4 req/s each): random routing overloads some
    replicas while others have room; JSQ and LOR keep the queues even.

    Deep in overload (>= 15 req/s here) every router collapses and random is no worse (docs/baselines.md).
    """
    src = [
        {
            "kind": "synthetic",
            "tenant": "chat",
            "arrival": {"process": "poisson", "rate_per_s": 13.0},
            "lengths": AZURE,
        }
    ]
    tenants = [{"name": "chat", "tier": "interactive", "ttft_slo_s": 1.0, "tpot_slo_s": 0.1}]
    for seed in range(3):
        m = {
            r: run(
                fact_scenario(pools=one_pool(4), tenants=tenants, sources=src, policies={"routing": r}), seed
            )
            for r in ("random", "jsq", "lor")
        }
        for r in ("jsq", "lor"):
            assert m[r]["slo_attainment"] > m["random"]["slo_attainment"] + 0.02, (seed, r, m)
            assert m[r]["ttft_s/p99"] < m["random"]["ttft_s/p99"], (seed, r)


def diurnal(scaling: str, seed: int) -> dict[str, Any]:
    return compute_metrics(
        # facts measured under timing v0 (docs/baselines.md)
        Simulator("diurnal_chat", seed=seed, overrides={"policies": {"scaling": scaling}}, timing="v0").run()
    )


@pytest.mark.xfail(
    strict=True,
    reason=(
        "SageServe's KV thresholds (0.5 / 0.25) misfire on short-context chat: a replica's KV utilization stays "
        "below 0.25 up to ~90% of its request capacity and jumps to ~1 at saturation, so the scaler sheds "
        "replicas until one saturates, then adds one per tick behind a 155 s cold start (docs/baselines.md)"
    ),
)
def test_reactive_costs_less_than_static_at_peak_with_comparable_attainment():
    for seed in (0, 1):
        static, reactive = diurnal("static", seed), diurnal("reactive", seed)
        assert reactive["cost/usd"] < static["cost/usd"]
        assert reactive["slo_attainment"] > static["slo_attainment"] - 0.05, (reactive, static)


def test_capacity_autoscalers_cost_less_than_static_at_peak_with_comparable_attainment():
    """diurnal_chat: 4 static replicas carry the peak; sizing to the arrival rate follows the daily swing."""
    sc = load_scenario("diurnal_chat")
    assert sc.pools[0].initial_replicas == 4  # static-at-peak
    for seed in (0, 1):
        static = diurnal("static", seed)
        assert static["slo_attainment"] > 0.99
        for scaling in ("target_util", "forecast"):
            m = diurnal(scaling, seed)
            assert m["cost/usd"] < 0.92 * static["cost/usd"], (scaling, seed)
            assert m["slo_attainment"] > static["slo_attainment"] - 0.02, (scaling, seed)
