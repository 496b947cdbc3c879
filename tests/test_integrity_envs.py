"""Env boundary checks under bad input (issue 14, items 6-8): exact vector action shapes, a failed reset that
leaves the env as it was, bools and negative seeds."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import ResetNeeded

import servegym.envs  # noqa: F401  (registers the ids)
from servegym.envs.gym import ConfigError, InvalidActionError

CLUSTER = {"horizon_s": 3.0, "scenario_overrides": {"control_interval_s": 1.0}}
ROUTE = {"horizon_s": 4.0}


def valid_actions(venv, mask: np.ndarray) -> np.ndarray:
    """Per env, per dim, the first value its mask enables."""
    single = venv.unwrapped.single_action_space
    nvec = [single.n] if isinstance(single, gym.spaces.Discrete) else list(single.nvec)
    out = np.zeros((venv.num_envs, len(nvec)), np.int64)
    for j in range(venv.num_envs):
        start = 0
        for d, n in enumerate(nvec):
            out[j, d] = int(np.flatnonzero(mask[j, start : start + n])[0])
            start += n
    return out.reshape(venv.action_space.shape)


def test_vector_env_takes_only_the_exact_action_shape():
    venv = gym.make_vec("servegym/Cluster-v0", num_envs=3, vectorization_mode="vector_entry_point", **CLUSTER)
    _, info = venv.reset(seed=0)
    acts = valid_actions(venv, info["action_mask"])
    n, d = acts.shape
    assert d != n
    for bad in (acts.T.copy(), acts.reshape(-1), acts.reshape(1, n, d), acts[:, :, None]):
        with pytest.raises(InvalidActionError, match=rf"shape \({n}, {d}\)"):
            venv.step(bad)
    venv.step(acts)  # the right shape still steps
    route = gym.make_vec("servegym/Route-v0", num_envs=2, vectorization_mode="vector_entry_point", **ROUTE)
    _, info = route.reset(seed=0)
    acts = valid_actions(route, info["action_mask"])
    with pytest.raises(InvalidActionError, match=r"shape \(2,\)"):
        route.step(acts[:, None])
    route.step(acts)


def test_a_failed_reset_needs_a_reset_and_keeps_the_previous_config():
    env = gym.make("servegym/Route-v0", **ROUTE).unwrapped
    env.reset(seed=1)
    env.step(int(np.flatnonzero(env.action_masks())[0]))
    before = (env.config, env.scenario)
    with pytest.raises(ValueError, match="max_wait_s"):
        env.reset(options={"config": {"scenario_overrides": {"max_wait_s": -5}}})
    assert (env.config, env.scenario) == before
    with pytest.raises(ResetNeeded):
        env.step(0)
    with pytest.raises(ValueError, match="seed"):
        env.reset(options={"seed": -1})
    with pytest.raises(ResetNeeded):
        env.step(0)
    _, info = env.reset(seed=1)  # the bad config did not stick
    assert info["decision"] == "route" and env.scenario.horizon_s == ROUTE["horizon_s"]


def test_a_failed_vector_reset_needs_a_reset_and_keeps_the_previous_config():
    venv = gym.make_vec("servegym/Route-v0", num_envs=2, vectorization_mode="vector_entry_point", **ROUTE)
    venv.reset(seed=0)
    before = venv.unwrapped.proto.config
    with pytest.raises(ValueError, match="horizon_s"):
        venv.reset(options={"config": {"horizon_s": -1.0}})
    assert venv.unwrapped.proto.config == before
    with pytest.raises(ResetNeeded):
        venv.step(np.zeros(2, np.int64))
    _, info = venv.reset(seed=0)
    venv.step(valid_actions(venv, info["action_mask"]))


@pytest.mark.parametrize("action", [True, False, np.True_, np.array(True), np.array([True])])
def test_bool_actions_are_rejected(action):
    env = gym.make("servegym/Route-v0", **ROUTE).unwrapped
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match="bool"):
        env.step(action)
    env.step(int(np.flatnonzero(env.action_masks())[0]))


def test_negative_seeds_name_the_key():
    env = gym.make("servegym/Route-v0", **ROUTE).unwrapped
    for seed in (-1, 2**63, True, 1.5):
        with pytest.raises(ValueError, match="option 'seed'"):
            env.reset(options={"seed": seed})
    with pytest.raises(ConfigError, match="'sim_seed'"):
        gym.make("servegym/Route-v0", sim_seed=-5, **ROUTE)
