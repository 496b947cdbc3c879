"""Agentic sessions through the envs: session observation groups, rate features that count released steps,
and the session baselines (routing and batching) reproducing the core's built-in rules from ``info``."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import servegym.envs  # noqa: F401  (registers the ids)
from servegym.baselines.env_runner import scenario_policy_kwargs
from servegym.baselines.routing import RoutingRule
from servegym.envs.gym import ENV_IDS
from servegym.envs.gym import config as C
from servegym.envs.metrics import compute_metrics
from servegym.envs.sim import state as S
from servegym.envs.sim.policies import BATCHING_IDS
from servegym.envs.sim.simulator import Simulator
from tests.test_envs_contract import assert_same_metrics, head_of_line, run_env

AGENTIC = "agentic_sessions"
# busier than the scenario (0.5 sessions/s), so that queues form and the rules differ
BUSY = {"sources": [{"kind": "sessions", "tenant": "agent", "arrival": {"process": "poisson", "rate_per_s": 0.8},
                     "steps": {"mean": 8, "max": 32}, "first_prompt": {"mean": 2000, "cv": 0.5},
                     "step_input": {"mean": 300, "cv": 1.0}, "output": {"mean": 150, "cv": 0.8},
                     "pause": {"mean_s": 2.0, "cv": 1.0}, "max_context_tokens": 16384}]}  # fmt: skip
SMALL = {
    "servegym/Route-v0": {"horizon_s": 20.0},
    "servegym/Batch-v0": {"horizon_s": 10.0},
    "servegym/Scale-v0": {"horizon_s": 120.0, "scenario_overrides": {"control_interval_s": 20.0}},
    "servegym/Cluster-v0": {"horizon_s": 10.0, "scenario_overrides": {"control_interval_s": 5.0}},
}


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_session_groups_follow_the_scenario(env_id):
    mode = gym.make(env_id, horizon_s=5.0).unwrapped.layout.mode
    plain = gym.make(env_id, horizon_s=5.0).observation_space
    agentic = gym.make(env_id, scenario=AGENTIC, horizon_s=5.0).observation_space
    forced_off = gym.make(env_id, scenario=AGENTIC, horizon_s=5.0, session_features=False).observation_space
    forced_on = gym.make(env_id, horizon_s=5.0, session_features=True).observation_space
    groups = set(C.MODE_SESSION_GROUPS[mode])
    assert not groups & set(plain.spaces) and not groups & set(forced_off.spaces)
    assert groups <= set(agentic.spaces) and groups <= set(forced_on.spaces)
    assert agentic["session"].low[C.SESSION_FEATURES.index("session_slack")] == -1.0
    with pytest.raises(C.ConfigError, match="session_features"):
        gym.make(env_id, session_features="yes")


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_check_env_with_session_features(env_id):
    env = gym.make(env_id, scenario=AGENTIC, invalid_action="noop_penalty", **SMALL[env_id])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)


def arrivals_in(st: S.SimState, lo: float, hi: float) -> np.ndarray:
    """Per tier, the requests (first and released later steps) that arrived in (lo, hi]; arrival times
    are final once a request has arrived, so the final state answers for any earlier time."""
    arr = st.rqf[S.RF_ARRIVAL]
    arrived = st.rqi[S.RI_STATUS] != S.ST_FUTURE
    inside = arrived & (arr > lo) & (arr <= hi)
    return np.array([np.sum(inside & (st.rqi[S.RI_TIER] == t)) for t in (S.TIER_INTERACTIVE, S.TIER_BATCH)])


def test_route_session_features_and_rates_match_the_state():
    env = gym.make("servegym/Route-v0", scenario=AGENTIC, horizon_s=240.0, scenario_overrides=BUSY).unwrapped
    lay = env.layout
    norm = env.config["norm"]
    policy = RoutingRule("session_affinity", **_route_kwargs())
    policy.reset(0)
    obs, info = env.reset(seed=1)
    seen, homed, waiting_max = [], 0, 0.0
    done = False
    while not done:
        st = env.sim.state
        now = st.clock[S.C_NOW]
        sess, rep = obs["session"], obs["session_replicas"].reshape(lay.r_pad, 2)
        req = info["request"]
        home, step = req["home_replica"], req["session_step"]
        assert sess[0] == 1.0  # every request of this scenario belongs to a session
        assert sess[1] == pytest.approx(min(step / norm["session_steps"], 1.0))
        slack = (req["session_deadline_s"] - now) / 180.0
        assert sess[2] == pytest.approx(np.clip(slack, -1, 1), abs=1e-6)
        assert sess[3] == (home >= 0) and (step > 0) == (home >= 0)
        assert np.flatnonzero(rep[:, 0]).tolist() == ([home] if home >= 0 else [])
        # every session waiting on a tool is counted once, at the replica it will come back to
        n_wait = st.cnt[S.K_REL_N]
        homes = st.rqi[S.RI_HOME, st.relq[1, :n_wait].astype(np.int64)]
        counts = np.bincount(homes, minlength=lay.r_pad)[: lay.r_pad]
        assert np.allclose(rep[:, 1], np.minimum(counts / norm["queue"], 1.0), atol=1e-6)
        assert sess[4] == pytest.approx(min(n_wait / norm["queue"], 1.0), abs=1e-6)
        homed += home >= 0
        waiting_max = max(waiting_max, float(n_wait))
        seen.append((now, obs["global"][len(C.GLOBAL_FEATURES) :].copy()))
        obs, _, term, trunc, info = env.step(policy.act(obs, info))
        done = term or trunc
    assert homed > 100 and waiting_max > 0
    # the arrival-rate bins count the released later steps as well as the first ones
    st = env.sim.state
    h, w = lay.rate_bins, env.config["rate_bin_s"]
    for now, rates in seen[:: max(1, len(seen) // 50)]:
        for b in range(h):
            n = arrivals_in(st, now - (b + 1) * w, now - b * w)
            for tier in range(2):
                want = min(n[tier] / w / norm["rate_per_s"], 1.0)
                assert rates[tier * h + b] == pytest.approx(want, abs=1e-6)
    assert st.cnt[S.K_RELEASED] > st.cnt[S.K_NEXT_ARRIVAL]  # most arrivals were released later steps


def test_scale_info_arrivals_count_released_session_steps():
    overrides = {**BUSY, "control_interval_s": 30.0}
    env = gym.make("servegym/Scale-v0", scenario=AGENTIC, horizon_s=600.0, scenario_overrides=overrides)
    env = env.unwrapped
    obs, info = env.reset(seed=2)
    ticks = []
    done = False
    while not done:
        ticks.append((env.sim.state.clock[S.C_NOW], info["scale"]["arrivals_last_interval"].copy()))
        obs, _, term, trunc, info = env.step(np.full(env.layout.p_pad, env.layout.scale_step))
        done = term or trunc
    st = env.sim.state
    assert len(ticks) > 10
    for now, got in ticks:
        assert got.tolist() == arrivals_in(st, now - 30.0, now).tolist()
    assert sum(int(g.sum()) for _, g in ticks[1:]) > 2 * st.cnt[S.K_NEXT_ARRIVAL]


def _route_kwargs() -> dict:
    kw = scenario_policy_kwargs(AGENTIC)
    return {k: kw[k] for k in ("max_queue", "max_kv", "session_max_load")}


def test_session_affinity_baseline_through_the_env_reproduces_the_builtin_router():
    overrides = {**BUSY, "horizon_s": 180.0, "policies": {"routing": "session_affinity"}}
    env = gym.make("servegym/Route-v0", scenario=AGENTIC, sim_seed=4, scenario_overrides=overrides)
    router = RoutingRule("session_affinity", **_route_kwargs())
    router.reset(0)
    got = run_env(env, lambda info: router.act(None, info))
    ref = compute_metrics(Simulator(AGENTIC, seed=4, overrides=overrides, timing="v0").run())  # as Route-v0
    assert ref["session/completed"] > 20 and ref["session/reused_tokens"] > 0
    assert_same_metrics(got, ref)


@pytest.mark.parametrize("batching", ["session_las", "session_edf"])
def test_session_batching_rules_from_info_reproduce_the_builtin_batcher(batching):
    overrides = {**BUSY, "horizon_s": 120.0, "policies": {"batching": batching}}
    env = gym.make("servegym/Batch-v0", scenario=AGENTIC, sim_seed=5, scenario_overrides=overrides)
    got = run_env(env, head_of_line(BATCHING_IDS[batching]))
    ref = compute_metrics(Simulator(AGENTIC, seed=5, overrides=overrides, timing="v0").run())  # as Batch-v0
    # exact only while no request expires in a full replica's queue (the env's admission check drops it earlier)
    assert ref["dropped"] == 0 and ref["session/completed"] > 10
    assert_same_metrics(got, ref)
