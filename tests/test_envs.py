"""The Gymnasium envs: checkers, determinism, vector envs, invariants, pickling, errors; over every registered id."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import servegym.envs  # noqa: F401  (registers the ids)
from servegym.envs.gym import ENV_IDS, ConfigError, InvalidActionError
from servegym.envs.sim import state as S

# Small episodes: the whole file runs in well under a minute once numba's cache is warm.
SMALL: dict[str, dict] = {
    "servegym/Route-v0": {"horizon_s": 40.0},
    "servegym/Batch-v0": {"horizon_s": 30.0},
    "servegym/Scale-v0": {"horizon_s": 300.0, "scenario_overrides": {"control_interval_s": 30.0}},
    "servegym/Cluster-v0": {"horizon_s": 40.0, "scenario_overrides": {"control_interval_s": 10.0}},
}
TINY: dict[str, dict] = {  # a few dozen steps, for runs through several autoresets
    "servegym/Route-v0": {"horizon_s": 4.0},
    "servegym/Batch-v0": {"horizon_s": 3.0},
    "servegym/Scale-v0": {"horizon_s": 40.0, "scenario_overrides": {"control_interval_s": 10.0}},
    "servegym/Cluster-v0": {"horizon_s": 3.0, "scenario_overrides": {"control_interval_s": 1.0}},
}
ids = pytest.mark.parametrize("env_id", ENV_IDS)


def masked_action(env_or_space, mask: np.ndarray, rng: np.random.Generator):
    """A uniformly random valid action: for MultiDiscrete, per dim among the values its mask enables."""
    space = getattr(env_or_space, "action_space", env_or_space)
    if isinstance(space, gym.spaces.Discrete):
        return int(rng.choice(np.flatnonzero(mask)))
    out, start = [], 0
    for n in space.nvec:
        out.append(int(rng.choice(np.flatnonzero(mask[start : start + n]))))
        start += n
    return np.array(out, dtype=np.int64)


def rollout(env, seed: int, steps: int | None = None, action_seed: int = 0):
    """(observations, rewards, infos) of a masked random rollout to the episode end (or ``steps``)."""
    rng = np.random.default_rng(action_seed)
    obs, info = env.reset(seed=seed)
    out = [(obs, 0.0, info)]
    done = False
    while not done and (steps is None or len(out) <= steps):
        obs, r, term, trunc, info = env.step(masked_action(env, info["action_mask"], rng))
        out.append((obs, r, info))
        done = term or trunc
    return out


def same_obs(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_ids_registered_with_vector_entry_points():
    for env_id in ENV_IDS:
        spec = gym.spec(env_id)
        assert spec.vector_entry_point is not None and spec.kwargs["scenario"]
    env = gym.make("envs:servegym/Route-v0", horizon_s=5.0)
    assert env.unwrapped.spec.id == "servegym/Route-v0"


@ids
def test_gymnasium_check_env_warnings_as_errors(env_id):
    # check_env samples unmasked actions, which only the penalized no-op mode accepts
    env = gym.make(env_id, invalid_action="noop_penalty", **SMALL[env_id])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)


@ids
def test_sb3_check_env(env_id):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id, invalid_action="noop_penalty", **SMALL[env_id])
    sb3_check_env(env.unwrapped)


@ids
def test_same_seed_same_episode_and_other_seed_differs(env_id):
    a = rollout(gym.make(env_id, **SMALL[env_id]), seed=5)
    b = rollout(gym.make(env_id, **SMALL[env_id]), seed=5)
    assert len(a) == len(b) > 3
    for (oa, ra, ia), (ob, rb, ib) in zip(a, b, strict=True):
        assert same_obs(oa, ob) and ra == rb
        assert ia["reward_components"] == ib["reward_components"]
    assert a[-1][2]["metrics"] == b[-1][2]["metrics"]
    c = rollout(gym.make(env_id, **SMALL[env_id]), seed=6)
    assert c[-1][2]["metrics"] != a[-1][2]["metrics"]


@ids
def test_masked_random_rollout_keeps_core_invariants(env_id):
    env = gym.make(env_id, **SMALL[env_id])
    space = env.observation_space
    rng = np.random.default_rng(1)
    obs, info = env.reset(seed=2)
    sim = env.unwrapped.sim
    steps, done, total = 0, False, 0.0
    while not done:
        assert space.contains(obs)
        mask = env.unwrapped.action_masks()
        assert np.array_equal(mask, info["action_mask"].astype(bool))
        obs, r, term, trunc, info = env.step(masked_action(env, info["action_mask"], rng))
        total += r
        done = term or trunc
        steps += 1
        if steps % 25 == 0 or done:
            assert sim.audit() == ""
            c = sim.counts()
            assert c["arrived"] == c["finished"] + c["dropped"] + c["in_flight"], c
            assert c["in_flight"] == c["queued"] + c["running"] + c["held"] + c["pending_route"], c
    m = info["metrics"]
    assert m["arrived"] == m["finished"] + m["dropped"] + m["in_flight"] and m["arrived"] > 0
    assert truncated_or_terminated_is_consistent(sim, term, trunc)


def truncated_or_terminated_is_consistent(sim, term: bool, trunc: bool) -> bool:
    c = sim.counts()
    drained = c["arrived"] == len(sim.requests) and c["in_flight"] == 0
    return term != trunc and term == drained and (term or sim.now == sim.scenario.horizon_s)


def test_terminated_when_workload_exhausted_and_drained():
    light = {
        "kind": "synthetic",
        "tenant": "chat",
        "arrival": {"rate_per_s": 0.3},
        "lengths": {"dist": "lognormal", "prompt_mean": 200, "output_mean": 20, "output_max": 60},
    }
    env = gym.make("servegym/Route-v0", horizon_s=60.0, sim_seed=1, scenario_overrides={"sources": [light]})
    *_, (_, _, info) = rollout(env, seed=0)
    sim = env.unwrapped.sim
    assert sim.counts()["in_flight"] == 0 and info["metrics"]["finished"] == len(sim.requests) > 0
    assert truncated_or_terminated_is_consistent(sim, term=True, trunc=False)
    # a loaded cluster still has work in flight at the horizon: truncated
    env = gym.make("servegym/Route-v0", horizon_s=20.0)
    rollout(env, seed=0)
    assert env.unwrapped.sim.counts()["in_flight"] > 0


@ids
def test_vector_sub_env_matches_single_env_through_autoresets(env_id):
    n, seed, steps = 3, 11, 60
    venv = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **TINY[env_id])
    singles = [gym.make(env_id, **TINY[env_id]) for _ in range(n)]
    vobs, vinfo = venv.reset(seed=seed)
    sobs = [e.reset(seed=seed + i)[0] for i, e in enumerate(singles)]
    rng = np.random.default_rng(0)
    resets = 0
    for _ in range(steps):
        for i in range(n):
            assert same_obs({k: v[i] for k, v in vobs.items()}, sobs[i])
        acts = [masked_action(singles[i], vinfo["action_mask"][i], rng) for i in range(n)]
        vobs, vrew, vterm, vtrunc, vinfo = venv.step(np.array(acts))
        for i, e in enumerate(singles):
            o, r, term, trunc, info = e.step(acts[i])
            assert (r, term, trunc) == (vrew[i], vterm[i], vtrunc[i])
            if term or trunc:
                resets += 1
                assert vinfo["_final_obs"][i] and same_obs(vinfo["final_obs"][i], o)
                final_metrics = {k: v[i] for k, v in vinfo["final_info"]["metrics"].items() if k[0] != "_"}
                assert final_metrics == pytest.approx(info["metrics"], nan_ok=True)
                o, info = e.reset()
            sobs[i] = o
    assert resets >= 2


@ids
def test_pickle_round_trip_mid_episode(env_id):
    env = gym.make(env_id, **SMALL[env_id]).unwrapped
    rng = np.random.default_rng(3)
    _, info = env.reset(seed=4)
    for _ in range(5):
        _, _, _, _, info = env.step(masked_action(env, info["action_mask"], rng))
    twin = pickle.loads(pickle.dumps(env))
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    info_b = info
    for _ in range(20):
        oa, ra, ta, ua, info = env.step(masked_action(env, info["action_mask"], rng_a))
        ob, rb, tb, ub, info_b = twin.step(masked_action(twin, info_b["action_mask"], rng_b))
        assert same_obs(oa, ob) and (ra, ta, ua) == (rb, tb, ub)
        if ta or ua:
            break


@pytest.mark.parametrize("mode", ["sync", "async", "vector_entry_point"])
def test_make_vec_modes(mode):
    env_id = "servegym/Batch-v0"
    venv = gym.make_vec(env_id, num_envs=2, vectorization_mode=mode, **TINY[env_id])
    try:
        obs, info = venv.reset(seed=0)
        assert venv.observation_space.contains(obs)
        space = venv.single_action_space
        rng = np.random.default_rng(0)
        for _ in range(40):
            acts = np.array([masked_action(space, info["action_mask"][i], rng) for i in range(2)])
            obs, rew, term, trunc, info = venv.step(acts)
            assert rew.shape == (2,) and obs["candidates"].shape[0] == 2
    finally:
        venv.close()


def test_vector_env_pickles_and_parallel_matches_serial():
    kw = TINY["servegym/Route-v0"]
    serial = gym.make_vec("servegym/Route-v0", num_envs=4, vectorization_mode="vector_entry_point", **kw)
    par = gym.make_vec(
        "servegym/Route-v0", num_envs=4, vectorization_mode="vector_entry_point", parallel=True, **kw
    )
    (oa, ia), (ob, _) = serial.reset(seed=1), par.reset(seed=1)
    rng = np.random.default_rng(0)
    for k in range(30):
        if k == 10:
            serial = pickle.loads(pickle.dumps(serial))
        acts = np.array([masked_action(serial.single_action_space, m, rng) for m in ia["action_mask"]])
        oa, ra, *_, ia = serial.step(acts)
        ob, rb, *_ = par.step(acts)
        assert same_obs(oa, ob) and np.array_equal(ra, rb)


@ids
def test_invalid_actions_raise_and_leave_the_episode_unchanged(env_id):
    env = gym.make(env_id, **SMALL[env_id], invalid_action="raise").unwrapped
    twin = gym.make(env_id, **SMALL[env_id], invalid_action="raise").unwrapped
    _, info = env.reset(seed=0)
    twin.reset(seed=0)
    mask = info["action_mask"]
    nvec = env.layout.nvec
    if isinstance(env.action_space, gym.spaces.Discrete):
        out_of_range, wrong_type = nvec[0], 0.5
    else:
        out_of_range, wrong_type = np.zeros(len(nvec), np.int64), np.zeros(len(nvec))
        out_of_range[-1] = nvec[-1]
    with pytest.raises(InvalidActionError, match="outside the action space"):
        env.step(out_of_range)
    with pytest.raises(InvalidActionError, match="must be an integer"):
        env.step(wrong_type)
    # a masked value in the dim of the pending decision
    dim = {"route": 0, "batch": 0, "scale": 0}[info["decision"]]
    if env_id == "servegym/Cluster-v0":
        dim = {"route": 0, "batch": 1, "scale": 2}[info["decision"]]
    start = int(sum(nvec[:dim]))
    masked = np.flatnonzero(mask[start : start + nvec[dim]] == 0)
    assert masked.size, "expected some masked value at the first decision"
    act = masked_action(env, mask, np.random.default_rng(0))
    if np.ndim(act) == 0:
        act = int(masked[0])
    else:
        act[dim] = masked[0]
    with pytest.raises(InvalidActionError, match="masked for the pending"):
        env.step(act)
    good = masked_action(env, mask, np.random.default_rng(1))
    oa, ra, *_ = env.step(good)
    ob, rb, *_ = twin.step(good)
    assert same_obs(oa, ob) and ra == rb
    env.reset(seed=0)


def test_vector_invalid_action_raises_naming_the_sub_env():
    venv = gym.make_vec(
        "servegym/Route-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        horizon_s=5.0,
        invalid_action="raise",
    )
    _, info = venv.reset(seed=0)
    acts = np.array([int(np.flatnonzero(m)[0]) for m in info["action_mask"]])
    acts[1] = int(np.flatnonzero(info["action_mask"][1] == 0)[0])
    with pytest.raises(InvalidActionError, match="sub-env 1"):
        venv.step(acts)


def test_noop_penalty_replaces_a_masked_route_with_the_builtin_rule():
    env = gym.make("servegym/Route-v0", horizon_s=20.0, invalid_action="noop_penalty").unwrapped
    _, info = env.reset(seed=0)
    masked = int(np.flatnonzero(info["action_mask"] == 0)[0])
    before = env.sim.counts()["queued"]
    _, r, *_, info = env.step(masked)
    assert info["reward_components"]["invalid_action"] == 1.0
    assert r <= -env.config["reward"]["invalid_action"] + 1e-9 + info["reward_components"]["slo_met"]
    assert env.sim.counts()["queued"] + env.sim.counts()["running"] >= before  # it was routed somewhere
    _, _, *_, info = env.step(99)  # out of range: also a penalized no-op in this mode
    assert info["reward_components"]["invalid_action"] == 1.0
    with pytest.raises(InvalidActionError, match="must be an integer"):  # a malformed action still raises
        env.step(np.array([1, 2]))


def test_bad_options_and_config_give_clear_errors():
    env = gym.make("servegym/Route-v0", horizon_s=5.0).unwrapped
    with pytest.raises(ValueError, match="unknown option 'sceanrio'"):
        env.reset(options={"sceanrio": "chat_azure"})
    with pytest.raises(ConfigError, match="unknown config key 'horizon'"):
        env.reset(options={"config": {"horizon": 5}})
    with pytest.raises(ConfigError, match="'top_k' sizes the observation"):
        env.reset(options={"config": {"top_k": 3}})
    with pytest.raises(ConfigError, match="reward.slo_met must be a finite number"):
        env.reset(options={"config": {"reward": {"slo_met": "x"}}})
    with pytest.raises(ConfigError, match="has 12 replicas in 2 pools but this env pads to max_replicas=8"):
        env.reset(options={"scenario": "hetero_a100_h100"})
    with pytest.raises(ValueError, match="'window_start_s' needs a trace source"):
        env.reset(options={"window_start_s": 10.0})
    with pytest.raises(ValueError, match="'seed' .* must be an int"):
        env.reset(options={"seed": 1.5})
    with pytest.raises(ConfigError, match=r"RouteEnv\(\.\.\.\): unknown config key 'horizon'"):
        gym.make("servegym/Route-v0", horizon=10)
    with pytest.raises(ConfigError, match="invalid_action"):
        gym.make("servegym/Route-v0", invalid_action="ignore")
    with pytest.raises(gym.error.ResetNeeded):
        env.step(0)


def test_reset_options_switch_scenario_and_fix_the_workload():
    env = gym.make("servegym/Cluster-v0", horizon_s=5.0).unwrapped  # pads to 12 replicas, 2 pools
    obs, info = env.reset(seed=0, options={"scenario": "chat_azure", "config": {"horizon_s": 4.0}})
    assert env.sim.scenario.name == "chat_azure" and env.sim.scenario.horizon_s == 4.0
    assert env.observation_space.contains(obs)
    # replicas past the scenario's 8 are padding: never valid routes
    if info["decision"] == "route":
        assert not info["action_mask"][8:12].any()
    a = rollout(env, seed=1, steps=15)
    env.reset(seed=2, options={"seed": 42})
    b_requests = env.sim.requests.arrival_s.copy()
    env.reset(seed=3, options={"seed": 42})
    assert np.array_equal(env.sim.requests.arrival_s, b_requests)  # same workload seed, same workload
    assert len(a) > 1


@ids
def test_render_modes(env_id):
    env = gym.make(env_id, render_mode="ansi", **TINY[env_id])
    env.reset(seed=0)
    text = env.render()
    assert isinstance(text, str) and "replica" in text and "pending=" in text
    pytest.importorskip("matplotlib")
    env = gym.make(env_id, render_mode="rgb_array", **TINY[env_id])
    _, info = env.reset(seed=0)
    env.step(masked_action(env, info["action_mask"], np.random.default_rng(0)))
    img = env.render()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.shape[0] <= 400


@ids
def test_info_contract_shapes(env_id):
    env = gym.make(env_id, **SMALL[env_id]).unwrapped
    lay = env.layout
    seen = set()
    for _, _, info in rollout(env, seed=0, steps=300):
        d = info["decision"]
        seen.add(d)
        assert info["action_mask"].dtype == np.int8 and info["action_mask"].shape == (sum(lay.nvec),)
        if d == "route":
            assert (
                info["route"]["queue_len"].shape == (lay.r_pad,)
                and info["route"]["kv_frac"].dtype == np.float64
            )
            assert set(info["request"]) >= {"prompt_tokens", "tier", "arrival_s", "deadline_s"}
            assert not info["route"]["queue_len"][info["action_mask"][: lay.r_pad] == 0].any()
        elif d == "batch":
            assert info["batch"]["request_id"].shape == (lay.k,)
            present = info["batch"]["request_id"] >= 0
            m = lay.mask_offsets[1]
            assert info["action_mask"][m : m + lay.k][~present].sum() == 0 and info["action_mask"][m + lay.k]
        elif d == "scale":
            assert info["scale"]["n_up"].shape == (lay.p_pad,)
            assert np.array_equal(info["scale_deltas"], np.arange(-lay.scale_step, lay.scale_step + 1))
    assert (
        seen - {"none"}
        == {
            "servegym/Route-v0": {"route"},
            "servegym/Batch-v0": {"batch"},
            "servegym/Scale-v0": {"scale"},
            "servegym/Cluster-v0": {"route", "batch", "scale"},
        }[env_id]
    )


def test_reward_is_the_weighted_sum_of_its_components():
    weights = {"slo_met": 2.0, "slo_met_tokens": 0.01, "slo_missed": 3.0, "drops": 4.0, "cost_usd": 50.0}
    env = gym.make("servegym/Scale-v0", reward=weights, **SMALL["servegym/Scale-v0"]).unwrapped
    full = env.config["reward"]
    total_cost = 0.0
    for _, r, info in rollout(env, seed=0)[1:]:
        c = info["reward_components"]
        expect = (
            full["slo_met"] * c["slo_met"]
            + full["slo_met_tokens"] * c["slo_met_tokens"]
            - full["slo_missed"] * c["slo_missed"]
            - full["drops"] * c["drops"]
            - full["cost_usd"] * c["cost_usd"]
            - full["fairness_gap"] * c["fairness_gap"]
            - full["invalid_action"] * c["invalid_action"]
        )
        assert r == pytest.approx(expect, rel=1e-12, abs=1e-12)
        total_cost += c["cost_usd"]
    # per-step costs add up to the episode's bill, less what was billed before the first decision
    first_tick = env.sim.scenario.control_interval_s
    billed_before = (
        sum(
            p.initial_replicas * p.tp * pr
            for p, pr in zip(env.sim.scenario.pools, env._aux.price, strict=False)
        )
        * first_tick
        / 3600
    )
    assert total_cost == pytest.approx(info["metrics"]["cost/usd"] - billed_before, rel=1e-9)


def test_observation_groups_per_env_and_feature_names():
    expected = {
        "servegym/Route-v0": {"request", "prefix_hits", "replicas", "pools", "global"},
        "servegym/Batch-v0": {"candidates", "forming", "replicas", "pools", "global"},
        "servegym/Scale-v0": {"pools", "replicas", "global"},
        "servegym/Cluster-v0": {
            "decision",
            "request",
            "prefix_hits",
            "candidates",
            "forming",
            "replicas",
            "pools",
            "global",
        },
    }
    for env_id, keys in expected.items():
        env = gym.make(env_id, horizon_s=5.0).unwrapped
        assert set(env.observation_space.spaces) == keys
        for k, names in env.obs_features.items():
            assert env.observation_space[k].shape == (len(names),)
    assert S.EV_ROUTE == 1  # the decision one-hot follows the core's event codes


def test_window_start_option_replays_another_trace_window(data_dir):
    env = gym.make("servegym/Route-v0", scenario="azure_conv_trace", horizon_s=60.0).unwrapped
    env.reset(seed=0)
    first = env.sim.requests.arrival_s.copy()
    env.reset(seed=0, options={"window_start_s": 600.0})
    other = env.sim.requests.arrival_s.copy()
    assert len(first) and len(other) and not np.array_equal(first[: len(other)], other[: len(first)])
    env.reset(seed=0)  # the window applies to that one episode
    assert np.array_equal(env.sim.requests.arrival_s, first)


def test_vector_env_calls_the_reward_and_termination_hooks_of_a_subclass():
    from servegym.envs.gym.kernels import N_RC
    from servegym.envs.gym.route import RouteEnv
    from servegym.envs.gym.vector import RouteVectorEnv, ServeVectorEnv

    class Shaped(RouteEnv):
        def _reward(self, rc):
            return 2.0 * rc[..., N_RC - 1] + 1.0

        def _is_terminated(self, status):  # every episode ends at its third step
            return (status == 2) | (np.asarray(self._steps_seen) >= 3)

    class ShapedVector(ServeVectorEnv):
        ENV_CLASS = Shaped

    kw = TINY["servegym/Route-v0"]
    plain, shaped = RouteVectorEnv(num_envs=2, **kw), ShapedVector(num_envs=2, **kw)
    steps = np.zeros(2, int)
    shaped.proto._steps_seen = steps
    (_, ia), _ = plain.reset(seed=4), shaped.reset(seed=4)
    rng = np.random.default_rng(0)
    acts = np.array([masked_action(plain.single_action_space, m, rng) for m in ia["action_mask"]])
    steps += 1
    _, r_plain, term_plain, *_ = plain.step(acts)
    _, r_shaped, term_shaped, *_ = shaped.step(acts)
    assert np.array_equal(r_shaped, 2.0 * r_plain + 1.0)
    assert not term_shaped.any()
    steps += 2
    acts = np.array([masked_action(plain.single_action_space, m, rng) for m in shaped.action_masks()])
    _, _, term, _, info = shaped.step(acts)
    assert term.all() and list(info["_final_info"]) == [True, True]  # the hook's ends autoreset
