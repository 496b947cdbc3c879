"""PPO training end to end: artefacts, TensorBoard charts, resume, save/load, and that learning works."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import yaml

import servegym.envs  # noqa: F401  (registers the ids)
from servegym.agents.checkpoints import latest_checkpoint
from servegym.agents.config import AgentConfigError, load_agent_config
from servegym.agents.train import main
from servegym.baselines.registry import make_policy

# An easy routing problem: one H100 and one A40 replica of Llama-2-7B. The H100 alone carries the load within
# the SLO; the A40's prefill of a ~1k-token prompt (168 ms, perf model) already misses the 150 ms TTFT target.
# A router that learns to prefer the H100 beats random routing by a wide margin.
EASY = {
    "name": "easy_route",
    "horizon_s": 40.0,
    "control_interval_s": 20.0,
    "pools": [
        {"name": "h100", "gpu": "h100-80gb", "model": "llama-2-7b", "max_replicas": 1, "initial_replicas": 1},
        {"name": "a40", "gpu": "a40", "model": "llama-2-7b", "max_replicas": 1, "initial_replicas": 1},
    ],
    "tenants": [{"name": "chat", "ttft_slo_s": 0.15, "tpot_slo_s": 0.04}],
    "sources": [
        {
            "tenant": "chat",
            "arrival": {"process": "poisson", "rate_per_s": 3.0},
            "lengths": {"prompt_mean": 900, "prompt_cv": 0.3, "output_mean": 60, "output_cv": 0.5},
        }
    ],
}


def write_config(tmp_path, **over):
    sc = tmp_path / "easy_route.yaml"
    sc.write_text(yaml.safe_dump(EASY))
    cfg = {
        "env_id": "servegym/Route-v0",
        "scenario": str(sc),
        "total_timesteps": 512,
        "n_envs": 2,
        "eval_freq": 256,
        "checkpoint_freq": 256,
        "eval_seeds": [1000],
        "normalize_obs": True,
        "ppo": {"n_steps": 128, "batch_size": 64, "n_epochs": 2},
        **over,
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, sc


def run_episode(env, act, seed):
    obs, info = env.reset(seed=seed)
    while True:
        obs, _, terminated, truncated, info = env.step(act(obs, info))
        if terminated or truncated:
            return info["metrics"]


def test_train_writes_model_charts_checkpoints_and_resumes(tmp_path):
    cfg_path, sc = write_config(tmp_path)
    out = tmp_path / "run"
    args = ["--env", "servegym/Route-v0", "--scenario", str(sc), "--config", str(cfg_path), "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    assert (out / "model.zip").exists() and (out / "config.yaml").exists() and (out / "meta.json").exists()
    first = latest_checkpoint(out)
    assert first is not None and first.name == "model_512_steps.zip"
    assert (out / "checkpoints" / "model_vecnormalize_512_steps.pkl").exists()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for ev in (out / "tb").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert "charts/slo_attainment" in tags and "charts/cost_usd" in tags
    assert "train/value_loss" in tags

    # resume: the step counter continues from the checkpoint instead of starting over
    assert main([*args, "--no-progress", "--resume", "--timesteps", "1024"]) == 0
    meta = yaml.safe_load((out / "meta.json").read_text())
    assert meta["timesteps"] == 1024
    assert meta["resumed_from"].endswith("model_512_steps.zip")
    assert latest_checkpoint(out).name == "model_1024_steps.zip"


def test_saved_policy_acts_the_same_after_loading(tmp_path):
    cfg_path, sc = write_config(tmp_path, total_timesteps=256, eval_freq=10_000, checkpoint_freq=10_000)
    out = tmp_path / "run"
    main(["--scenario", str(sc), "--config", str(cfg_path), "--out", str(out), "--no-progress"])
    a, b = make_policy(out / "model.zip"), make_policy(out / "model.zip")
    env = gym.make("servegym/Route-v0", scenario=str(sc))
    obs, info = env.reset(seed=3)
    for _ in range(50):
        act = a.act(obs, info)
        assert act == b.act(obs, info)
        assert info["action_mask"][int(act)]
        obs, _, term, trunc, info = env.step(act)
        if term or trunc:
            break


def test_bad_agent_config_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"env_id": "servegym/Route-v0", "scenario": "x", "ppo": {"gama": 0.9}}))
    with pytest.raises(AgentConfigError, match="ppo.gama"):
        load_agent_config(path)


def test_load_curriculum_sets_the_training_load_per_stage(tmp_path):
    cfg_path, sc = write_config(tmp_path, curriculum=[{"until": 0.5, "load": 0.5}])
    cfg = load_agent_config(cfg_path)
    assert [cfg.load_at(t) for t in (0, 255, 256, 511)] == [0.5, 0.5, 1.0, 1.0]
    out = tmp_path / "run"
    assert main(["--scenario", str(sc), "--config", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loads = []
    for ev in sorted((out / "tb").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        loads += [e.value for e in acc.Scalars("charts/load")]
    assert loads == [0.5, 1.0]  # one rollout of 2 x 128 steps per stage

    # the setter rescales the training envs' sources; their next episodes run at that load
    from servegym.agents.train import load_setter, make_vec_env

    venv = make_vec_env(cfg, 2, seed=0)
    set_load = load_setter(venv)
    set_load(0.5)
    native = venv.unwrapped.venv
    assert native.proto.scenario.sources[0].arrival.rate_per_s == 1.5
    venv.reset()
    half = [sim.state.rqf.shape[1] for sim in native.sims]
    set_load(1.0)
    venv.reset()
    full = [sim.state.rqf.shape[1] for sim in native.sims]
    assert native.proto.scenario.sources[0].arrival.rate_per_s == 3.0
    assert sum(full) > 1.5 * sum(half)
    with pytest.raises(AgentConfigError, match="curriculum"):
        load_agent_config(
            write_config(tmp_path, curriculum=[{"until": 0.5, "load": 1}, {"until": 0.4, "load": 1}])[0]
        )


@pytest.mark.slow
def test_short_ppo_run_beats_random_routing(tmp_path):
    cfg_path, sc = write_config(
        tmp_path,
        total_timesteps=3072,
        eval_freq=10_000,
        checkpoint_freq=10_000,
        ppo={"n_steps": 256, "batch_size": 128},
    )
    out = tmp_path / "run"
    main(
        ["--scenario", str(sc), "--config", str(cfg_path), "--out", str(out), "--no-progress", "--seed", "1"]
    )
    ppo, rand = learned_vs_random(out / "model.zip", sc)
    print(f"SLO attainment on held-out seeds: PPO {ppo:.3f}, random {rand:.3f}")
    assert ppo > rand + 0.15, (ppo, rand)


def learned_vs_random(model, sc, test_seeds=(5001, 5002, 5003)):
    """Mean SLO attainment of a saved policy and of random masked routing on held-out seeds."""
    learned = make_policy(model)
    env = gym.make("servegym/Route-v0", scenario=str(sc))
    rng = np.random.default_rng(0)

    def random_act(obs, info):
        return int(rng.choice(np.flatnonzero(info["action_mask"])))

    ppo = np.mean([run_episode(env, learned.act, s)["slo_attainment"] for s in test_seeds])
    rand = np.mean([run_episode(env, random_act, s)["slo_attainment"] for s in test_seeds])
    return ppo, rand
