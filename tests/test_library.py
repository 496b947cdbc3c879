"""servegym as a library: the standard checkers on every id's defaults, one seed one workload, metrics at every
episode end, masks from every kind of vector env, envs without torch, and checkpoints pickled before the rename."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import gymnasium as gym
import numpy as np
import pytest

import servegym.envs  # noqa: F401  (registers the ids)
from servegym.envs.gym import ENV_IDS, action_masks
from tests.conftest import REPO


@pytest.mark.slow
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_standard_checkers_pass_on_defaults(env_id):
    """What most users try first: both check_env functions and make_vec_env + plain PPO, on defaults."""
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_checker import check_env as sb3_check_env
    from stable_baselines3.common.env_util import make_vec_env

    gym_check_env(gym.make(env_id).unwrapped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SB3's advice on Box bounds and symmetric actions, not failures
        sb3_check_env(gym.make(env_id))
    venv = make_vec_env(env_id, n_envs=2, seed=0)
    model = PPO("MultiInputPolicy", venv, n_steps=256, batch_size=128, n_epochs=1, seed=0)
    model.learn(1024)
    assert model.num_timesteps >= 1024


def test_unmasked_random_actions_become_penalized_noops_by_default():
    env = gym.make("servegym/Route-v0", horizon_s=20.0)
    env.reset(seed=0)
    invalid = 0
    for _ in range(200):
        mask = env.unwrapped.action_masks()
        a = int(np.flatnonzero(~mask)[0]) if not mask.all() else 0
        _, _, terminated, truncated, info = env.step(a)
        invalid += info["reward_components"]["invalid_action"]
        if terminated or truncated:
            break
    assert invalid > 0  # the masked action was taken as a no-op and counted, not raised


def _episode(env, policy_seed: int, **reset_kw) -> dict:
    obs, info = env.reset(**reset_kw)
    rng = np.random.default_rng(policy_seed)
    while True:
        a = int(rng.choice(np.flatnonzero(info["action_mask"])))
        obs, _, terminated, truncated, info = env.step(a)
        if terminated or truncated:
            return info["metrics"]


def test_one_seed_one_workload_however_it_is_passed():
    env = gym.make("servegym/Route-v0", horizon_s=30.0)
    by_reset = _episode(env, 1, seed=5)
    by_option = _episode(env, 1, options={"seed": 5})
    by_both = _episode(env, 1, seed=123, options={"seed": 5})
    assert by_reset == by_option == by_both
    assert _episode(env, 1, seed=6) != by_reset


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_metrics_at_a_step_limit_truncation(env_id):
    env = gym.make(env_id, config={"max_episode_steps": 3})
    _, info = env.reset(seed=0)
    for i in range(3):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())  # often masked: a no-op
        assert terminated or truncated or i < 2
    assert truncated and "metrics" in info
    assert info["metrics"]["now_s"] > 0


def test_sb3_adapter_reports_episode_statistics_without_vecmonitor():
    from servegym.envs.gym.sb3 import SB3VecEnv

    venv = SB3VecEnv("servegym/Route-v0", num_envs=2, horizon_s=3.0)
    venv.seed(0)
    venv.reset()
    returns = np.zeros(2)
    for _ in range(2000):
        masks = venv.action_masks()
        _, rewards, dones, infos = venv.step(np.array([int(np.flatnonzero(m)[0]) for m in masks]))
        returns += rewards
        if dones.any():
            j = int(np.flatnonzero(dones)[0])
            assert infos[j]["episode"]["r"] == pytest.approx(returns[j], rel=1e-5, abs=1e-5)
            assert infos[j]["episode"]["l"] > 0
            return
    pytest.fail("no episode ended")


@pytest.mark.parametrize("mode", ["sync", "vector_entry_point"])
def test_action_masks_from_gymnasium_and_native_vector_envs(mode):
    envs = gym.make_vec("servegym/Batch-v0", num_envs=2, vectorization_mode=mode, horizon_s=10.0)
    _, info = envs.reset(seed=3)
    masks = action_masks(envs)
    assert masks.shape == (2, envs.single_action_space.n) and masks.dtype == bool
    single = gym.make("servegym/Batch-v0", horizon_s=10.0)
    for j in range(2):
        _, sinfo = single.reset(seed=3 + j)
        np.testing.assert_array_equal(masks[j], sinfo["action_mask"].astype(bool))
    envs.close()


def test_envs_step_without_torch_or_sb3():
    """The envs need numpy, numba, gymnasium, pydantic and pyyaml only: import and step every id with the
    learning stack made unimportable."""
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "stable_baselines3", "sb3_contrib", "tensorboard"):
                    raise ImportError(f"{name} is blocked for this test")
        sys.meta_path.insert(0, Block())
        import gymnasium as gym
        import servegym.envs
        from servegym.envs.gym import ENV_IDS
        for env_id in ENV_IDS:
            env = gym.make(env_id, horizon_s=60.0)
            obs, info = env.reset(seed=0)
            for _ in range(5):
                obs, r, term, trunc, info = env.step(env.action_space.sample())
                if term or trunc:
                    break
        assert not any(m.split(".")[0] in ("torch", "stable_baselines3") for m in sys.modules)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_checkpoints_pickled_under_the_old_module_names_load_and_leave_sys_modules_alone():
    import types

    from servegym.baselines import make_policy

    mine = types.ModuleType("agents")  # a user's own `agents` package must survive the load
    sys.modules["agents"] = mine
    try:
        pol = make_policy(REPO / "agents" / "pretrained" / "route_chat_azure" / "model.zip")
        assert type(pol.model.policy.features_extractor).__module__ == "servegym.agents.extractors"
        assert sys.modules["agents"] is mine and "agents.extractors" not in sys.modules
    finally:
        sys.modules.pop("agents", None)


def test_metrics_wrapper_restores_metrics_under_gymnasiums_time_limit():
    from servegym.envs.gym.base import MetricsOnTruncation

    env = MetricsOnTruncation(gym.make("servegym/Route-v0", max_episode_steps=2))
    env.reset(seed=0)
    env.step(0)
    _, _, _, truncated, info = env.step(0)
    assert truncated and info["metrics"]["now_s"] > 0
