"""Minari demonstration datasets (agents/demos.py) and behaviour cloning from them (agents/bc.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("minari", reason="minari is the offline extra (part of train): pip install -e '.[train]'")
torch = pytest.importorskip("torch")

from servegym.agents import bc, demos  # noqa: E402
from servegym.agents.config import load_agent_config  # noqa: E402
from servegym.baselines.env_runner import make_env, replay_actions  # noqa: E402

CONFIG = "route_chat_azure_native"


def _make_demos_script():
    """scripts/make_demos.py, where reading a suite lives (the policy layer does not import the leaderboard)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "make_demos.py"
    spec = importlib.util.spec_from_file_location("make_demos", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


suite_sources = _make_demos_script().suite_sources


def tiny(src: demos.DemoSource, horizon_s: float) -> demos.DemoSource:
    return dataclasses.replace(src, env_config={**src.env_config, "horizon_s": horizon_s})


def arrays(ds) -> list[dict]:
    out = []
    for ep in ds.iterate_episodes():
        out.append(
            {
                **{f"obs/{k}": v for k, v in ep.observations.items()},
                "act": ep.actions,
                "rew": ep.rewards,
                "term": ep.terminations,
                "trunc": ep.truncations,
                "mask": ep.infos["action_mask"],
            }
        )
    return out


def test_dataset_round_trips_with_masks_and_replays(tmp_path):
    src = tiny(demos.config_source(CONFIG), 8.0)
    seeds = src.seeds[:2]
    ds = demos.write_dataset("jsq", src, seeds, tmp_path / "a")
    assert ds.id == "servegym/chat_azure/jsq-v0"
    again = demos.load_dataset("servegym/chat_azure/jsq-v0", tmp_path / "a")  # read back through minari
    assert again.total_episodes == 2 and again.total_steps == ds.total_steps > 0

    env = make_env(src.env_id, src.scenario, {**src.env_config, "info_features": False})
    assert again.observation_space == env.observation_space and again.action_space == env.action_space
    meta = list(again.storage.get_episode_metadata(range(2)))
    for ep, m, seed in zip(again.iterate_episodes(), meta, seeds, strict=True):
        n = len(ep)
        for key, space in env.observation_space.spaces.items():
            assert ep.observations[key].shape == (n + 1, *space.shape)
            assert ep.observations[key].dtype == space.dtype
        assert ep.actions.shape == (n,) and ep.actions.dtype == np.int64
        mask = ep.infos["action_mask"]
        assert mask.shape == (n + 1, env.layout.mask_size) and mask.dtype == bool
        assert mask[np.arange(n), ep.actions].all()  # every recorded action is one the mask allowed
        assert ep.rewards.dtype == np.float64 and ep.truncations[-1] and not ep.truncations[:-1].any()
        # the first observation is the env's reset observation for that seed
        obs0, _ = env.reset(seed=int(seed), options={"seed": int(seed)})
        for key in obs0:
            np.testing.assert_array_equal(ep.observations[key][0], obs0[key])
        # the actions replay to the episode the metadata describes (what the leaderboard validates)
        assert m["seed"] == seed
        replayed = replay_actions(ep.actions[:, None], src.env_id, src.scenario, int(seed), src.env_config)
        assert replayed["goodput/req_per_s"] == m["goodput"]["req_per_s"]

    # what the native PPO sees: the vector env, fed the recorded actions, shows the recorded observations
    from servegym.baselines.vec_runner import make_vec_env

    ep, seed = again[0], int(seeds[0])
    venv = make_vec_env(src.env_id, src.scenario, 1, {**src.env_config, "info_features": False})
    obs, infos = venv.reset(seed=[seed], options={"seed": [seed]})
    for t, a in enumerate(ep.actions):
        for key in obs:
            np.testing.assert_array_equal(obs[key][0], ep.observations[key][t], err_msg=f"{key} at step {t}")
        np.testing.assert_array_equal(infos["action_mask"][0], ep.infos["action_mask"][t])
        obs, r, term, trunc, infos = venv.step(np.array([a]))
        assert r[0] == ep.rewards[t] and trunc[0] == ep.truncations[t]
    for key in obs:  # the episode's last observation, before the autoreset
        np.testing.assert_array_equal(infos["final_obs"][0][key], ep.observations[key][-1])
    venv.close()

    # deterministic: the same arguments write the same data
    other = demos.write_dataset("jsq", src, seeds, tmp_path / "b")
    for x, y in zip(arrays(ds), arrays(other), strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    with pytest.raises(demos.DemoError, match="exists"):
        demos.write_dataset("jsq", src, seeds, tmp_path / "a")


def test_oracle_and_cluster_datasets(tmp_path):
    """The clairvoyant oracle records like a heuristic; a Cluster combination's MultiDiscrete action keeps
    every dim and its id turns '+' into '-'."""
    (route,) = suite_sources("v1", ["hetero_route"])
    ds = demos.write_dataset(demos.oracle_for(route), tiny(route, 5.0), route.seeds[:1], tmp_path)
    assert ds.id == "servegym/hetero_route/oracle_route-v0" and ds.total_steps > 0
    (cluster,) = suite_sources("v1", ["hetero_prices"])
    pol = "fcfs+lor+static"
    ds = demos.write_dataset(pol, tiny(cluster, 5.0), cluster.seeds[:1], tmp_path)
    assert ds.id == "servegym/hetero_prices/fcfs-lor-static-v0"
    ep = ds[0]
    assert ep.actions.shape == (len(ep), len(ds.action_space.nvec))
    assert demos.oracle_for(cluster) == "oracle_batch+oracle_route+oracle_scale"


def test_bc_from_dataset_reduces_imitation_loss(tmp_path):
    cfg = load_agent_config(CONFIG)
    src = tiny(demos.config_source(CONFIG), 40.0)
    demos.write_dataset("jsq", src, src.seeds[:2], tmp_path)
    data = bc.dataset_rollouts(cfg, "servegym/chat_azure/jsq-v0", tmp_path)
    assert data["obs"].shape[1] == 1 and data["obs"].dtype == np.float32
    assert data["mask"][np.arange(len(data["act"])), 0, data["act"][:, 0, 0]].all()

    torch.manual_seed(0)
    from servegym.agents.native import build_net
    from servegym.agents.ppo import make_env as make_vec

    fresh = build_net(make_vec(cfg, 1).layout, cfg)
    flat = data["obs"].reshape(-1, fresh.layout.obs_size)
    fresh.set_normalizer(flat.mean(0), flat.var(0))
    before = bc.imitation(fresh, data)
    net, stats = bc.fit(cfg, data, epochs=20, seed=0, log=False)
    # measured: cross-entropy 0.693 (uniform over 2 replicas) -> 0.561, agreement with JSQ 0.38 -> 0.71
    assert stats["policy_loss"] < 0.9 * before["policy_loss"]
    assert stats["accuracy"] > before["accuracy"] + 0.2


def test_bc_refuses_a_dataset_of_another_layout(tmp_path):
    (multi,) = suite_sources("v1", ["multi_region"])  # 4 replicas in 2 pools; chat_azure has 2 in 1
    demos.write_dataset("round_robin", tiny(multi, 3.0), multi.seeds[:1], tmp_path)
    with pytest.raises(demos.DemoError, match="observation space"):
        bc.dataset_rollouts(load_agent_config(CONFIG), "servegym/multi_region/round_robin-v0", tmp_path)
    with pytest.raises(demos.DemoError, match="make_demos"):
        demos.load_dataset("servegym/multi_region/nobody-v0", tmp_path)
