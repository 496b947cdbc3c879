"""stable-baselines3: the VecEnv adapter's contract, SB3's own vec envs over pickled single envs, PPO smoke runs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import servegym.envs  # noqa: F401
from servegym.envs.gym.sb3 import SB3VecEnv


def test_adapter_same_step_autoreset_terminal_observation_and_truncation_flag():
    venv = SB3VecEnv("servegym/Route-v0", num_envs=3, horizon_s=3.0)
    venv.seed(7)
    obs = venv.reset()
    assert set(obs) == set(venv.observation_space.spaces) and obs["replicas"].shape[0] == 3
    twin = gym.make("servegym/Route-v0", horizon_s=3.0)
    tobs, tinfo = twin.reset(seed=8)  # sub-env 1 is seeded 7 + 1
    assert all(np.array_equal(obs[k][1], tobs[k]) for k in obs)
    rng = np.random.default_rng(0)
    finished = 0
    for _ in range(200):
        masks = np.stack(venv.env_method("action_masks"))
        acts = np.array([rng.choice(np.flatnonzero(m)) for m in masks])
        acts[1] = rng.choice(np.flatnonzero(tinfo["action_mask"]))
        obs, rew, dones, infos = venv.step(acts)
        tobs, trew, tterm, ttrunc, tinfo = twin.step(acts[1])
        assert rew.dtype == np.float32 and rew[1] == np.float32(trew) and dones[1] == (tterm or ttrunc)
        for j in np.flatnonzero(dones):
            finished += 1
            assert infos[j]["TimeLimit.truncated"] in (True, False)
            assert set(infos[j]["terminal_observation"]) == set(obs)
            assert "slo_attainment" in infos[j]["metrics"]
        if dones[1]:
            assert all(np.array_equal(infos[1]["terminal_observation"][k], tobs[k]) for k in tobs)
            assert infos[1]["TimeLimit.truncated"] == (ttrunc and not tterm)
            tobs, tinfo = twin.reset()
        assert all(np.array_equal(obs[k][1], tobs[k]) for k in obs)  # the returned obs is the new episode's
    assert finished >= 3
    assert venv.has_attr("action_masks") and venv.env_is_wrapped(gym.Wrapper) == [False] * 3
    venv.close()


def _make(env_id: str, **kw):
    def f():
        return gym.make(env_id, **kw)

    return f


def test_sb3_dummy_and_subproc_vec_envs_over_single_envs():
    kw = {"horizon_s": 3.0, "invalid_action": "noop_penalty"}
    for cls, extra in ((DummyVecEnv, {}), (SubprocVecEnv, {"start_method": "fork"})):
        venv = cls([_make("servegym/Batch-v0", **kw) for _ in range(2)], **extra)
        try:
            venv.seed(0)
            obs = venv.reset()
            masks = np.stack(venv.env_method("action_masks"))
            for _ in range(60):
                acts = np.array([int(np.flatnonzero(m)[-1]) for m in masks])
                obs, rew, dones, infos = venv.step(acts)
                masks = np.stack(venv.env_method("action_masks"))
            assert obs["candidates"].shape[0] == 2 and masks.shape == (2, 9)
        finally:
            venv.close()


def test_ppo_smoke_on_route_with_the_native_adapter():
    from stable_baselines3 import PPO

    venv = SB3VecEnv("servegym/Route-v0", num_envs=4, horizon_s=20.0, invalid_action="noop_penalty")
    model = PPO("MultiInputPolicy", venv, n_steps=128, batch_size=128, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=2048)
    assert model.num_timesteps >= 2000
    obs = venv.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (4,)


def test_maskable_ppo_on_batch_never_takes_a_masked_action():
    from sb3_contrib import MaskablePPO

    # invalid_action="raise": a single masked action would fail the run
    venv = SB3VecEnv("servegym/Batch-v0", num_envs=4, horizon_s=10.0)
    model = MaskablePPO(
        "MultiInputPolicy", venv, n_steps=128, batch_size=128, n_epochs=1, seed=0, device="cpu"
    )
    model.learn(total_timesteps=2048)
    assert model.num_timesteps >= 2000


def test_maskable_ppo_on_cluster_multidiscrete_masks():
    from sb3_contrib import MaskablePPO

    venv = SB3VecEnv(
        "servegym/Cluster-v0", num_envs=2, horizon_s=5.0, scenario_overrides={"control_interval_s": 1.0}
    )
    model = MaskablePPO(
        "MultiInputPolicy", venv, n_steps=128, batch_size=128, n_epochs=1, seed=0, device="cpu"
    )
    model.learn(total_timesteps=512)
    assert model.num_timesteps >= 512
