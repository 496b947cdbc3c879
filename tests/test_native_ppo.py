"""The native PPO (agents/ppo.py), its slot policy, batched evaluation, and the training-tool defects of issue 17."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from test_agents import EASY, learned_vs_random, run_episode

import servegym.envs  # noqa: F401  (registers the ids)
from servegym.agents.config import load_agent_config
from servegym.agents.evaluation import EVAL_METRIC, EvalHistory
from servegym.agents.native import NativePolicy, build_net, load_policy
from servegym.agents.ppo import latest_checkpoint
from servegym.agents.slot_policy import MaskedMultiCategorical
from servegym.agents.train import main
from servegym.baselines.env_runner import run_env_episode
from servegym.baselines.registry import make_policy
from servegym.baselines.vec_runner import run_vec_episodes


def native_config(tmp_path, **over):
    sc = tmp_path / "easy_route.yaml"
    sc.write_text(yaml.safe_dump(EASY))
    cfg = {
        "env_id": "servegym/Route-v0",
        "scenario": str(sc),
        "algo": "native_ppo",
        "total_timesteps": 512,
        "n_envs": 2,
        "eval_freq": 256,
        "checkpoint_freq": 256,
        "eval_seeds": [1000, 1001],
        "ppo": {"n_steps": 128, "batch_size": 64, "n_epochs": 2},
        "network": {"slot_hidden": 16, "global_hidden": 16},
        **over,
    }
    path = tmp_path / "native.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, sc


def tb_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for ev in folder.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def test_native_ppo_writes_model_charts_checkpoints_and_resumes(tmp_path, capsys):
    cfg_path, _ = native_config(tmp_path)
    out = tmp_path / "run"
    assert main(["--config", str(cfg_path), "--out", str(out)]) == 0
    assert (out / "model.pt").exists() and (out / "best" / "best_model.pt").exists()
    assert latest_checkpoint(out).name == "model_512_steps.pt"
    tags = tb_tags(out / "tb")
    for tag in ("charts/slo_attainment", "charts/cost_usd", "train/value_loss", "rollout/ep_rew_mean"):
        assert tag in tags, tag
    assert "eval goodput" in capsys.readouterr().out  # defect 4: the evaluations are printed
    first = json.loads((out / "eval" / "history.json").read_text())
    assert [r["step"] for r in first] == [256, 512]

    # resume: the step count continues, the history is kept, the best is chosen against the earlier best
    assert main(["--config", str(cfg_path), "--out", str(out), "--resume", "--timesteps", "1024"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["timesteps"] == 1024 and meta["resumed_from"].endswith("model_512_steps.pt")
    rows = json.loads((out / "eval" / "history.json").read_text())
    assert rows[:2] == first and [r["step"] for r in rows] == [256, 512, 768, 1024]
    best_so_far = -np.inf
    for r in rows:
        assert r["saved_as_best"] == (r[EVAL_METRIC] > best_so_far)
        best_so_far = max(best_so_far, r[EVAL_METRIC])
    # the saved best model is the one with the best score: re-evaluating it gives that score
    cfg = load_agent_config(cfg_path)
    best = load_policy(out / "best" / "best_model.pt")
    runs = run_vec_episodes(best, cfg.env_id, cfg.scenario, cfg.eval_seeds, {"info_features": False})
    assert np.mean([r[EVAL_METRIC] for r in runs]) == pytest.approx(best_so_far, rel=1e-12)


def test_same_seed_same_weights_and_loaded_policy_acts_the_same(tmp_path):
    cfg_path, sc = native_config(tmp_path, total_timesteps=256, eval_freq=10_000)
    for run in ("a", "b"):
        assert main(["--config", str(cfg_path), "--out", str(tmp_path / run), "--seed", "3"]) == 0
    wa = torch.load(tmp_path / "a" / "model.pt", weights_only=False)["model"]
    wb = torch.load(tmp_path / "b" / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    a, b = make_policy(tmp_path / "a" / "model.pt"), make_policy(tmp_path / "b" / "model.pt")
    env = gym.make("servegym/Route-v0", scenario=str(sc))
    obs, info = env.reset(seed=3)
    for _ in range(40):
        act = a.act(obs, info)
        assert act == b.act(obs, info) and info["action_mask"][act]
        obs, _, term, trunc, info = env.step(act)
        if term or trunc:
            break


def test_config_env_and_scenario_are_not_overridden_by_defaults(tmp_path):
    # defect 1: --config X.yaml trained on Route-v0 / chat_azure unless --env/--scenario were given
    cfg_path, sc = native_config(
        tmp_path, env_id="servegym/Batch-v0", total_timesteps=256, eval_freq=10_000, checkpoint_freq=10_000
    )
    out = tmp_path / "run"
    assert main(["--config", str(cfg_path), "--out", str(out)]) == 0
    used = yaml.safe_load((out / "config.yaml").read_text())
    assert (used["env_id"], used["scenario"]) == ("servegym/Batch-v0", str(sc))
    assert make_policy(out / "model.pt").env_id == "servegym/Batch-v0"


def test_eval_history_survives_resume_and_keeps_the_best(tmp_path):
    # defect 2 and 3: a resumed run's first evaluation competes with the earlier best instead of replacing it
    ev = {EVAL_METRIC: 5.0, "slo_attainment": 0.9, "cost/usd": 1.0, "ttft_s/p99": 0.5}
    assert EvalHistory(tmp_path, resume=False).add(100, ev)
    again = EvalHistory(tmp_path, resume=True)
    assert again.best == 5.0 and len(again.rows) == 1
    assert not again.add(200, {**ev, EVAL_METRIC: 4.0})
    assert again.add(300, {**ev, EVAL_METRIC: 6.0})
    assert len(EvalHistory(tmp_path, resume=True).rows) == 3
    assert EvalHistory(tmp_path, resume=False).rows == []  # a fresh run starts a new history


def test_sb3_training_selects_on_goodput_and_prints_it(tmp_path, capsys):
    from test_agents import write_config

    cfg_path, sc = write_config(tmp_path, eval_seeds=[1000, 1001])
    out = tmp_path / "run"
    assert main(["--config", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    assert "eval goodput" in capsys.readouterr().out
    rows = json.loads((out / "eval" / "history.json").read_text())
    assert [r["step"] for r in rows] == [256, 512]
    assert (out / "best" / "best_model.zip").exists() and (out / "best" / "vecnormalize.pkl").exists()
    best = max(r[EVAL_METRIC] for r in rows)
    cfg = load_agent_config(cfg_path)
    runs = run_vec_episodes(out / "best" / "best_model.zip", cfg.env_id, cfg.scenario, cfg.eval_seeds)
    assert np.mean([r[EVAL_METRIC] for r in runs]) == pytest.approx(best, rel=1e-12)


def test_batched_evaluation_matches_single_env_episodes(tmp_path):
    sc = tmp_path / "easy_route.yaml"
    sc.write_text(yaml.safe_dump(EASY))
    seeds = [7, 8, 9]
    batched = run_vec_episodes("jsq", "servegym/Route-v0", str(sc), seeds)
    single = [run_env_episode("jsq", "servegym/Route-v0", str(sc), s)[0] for s in seeds]
    for b, s in zip(batched, single, strict=True):
        assert b["slo_attainment"] == s["slo_attainment"] and b[EVAL_METRIC] == s[EVAL_METRIC]
        assert b["judged"] == s["judged"] and b["cost/usd"] == s["cost/usd"]
    assert len({b["judged"] for b in batched}) > 1  # the seeds really differ


def one_pool(n: int, initial: int) -> dict:
    sc = json.loads(json.dumps(EASY))
    sc["name"] = f"pool_of_{n}"
    sc["pools"] = [{**EASY["pools"][0], "max_replicas": n, "initial_replicas": initial}]
    sc["sources"][0]["arrival"]["rate_per_s"] = 4.0
    return sc


def test_slot_policy_is_equivariant_and_runs_on_a_larger_cluster_within_its_padding(tmp_path):
    small, large = tmp_path / "small.yaml", tmp_path / "large.yaml"
    small.write_text(yaml.safe_dump(one_pool(3, 3)))
    large.write_text(yaml.safe_dump(one_pool(4, 4)))
    env3 = gym.make("servegym/Route-v0", scenario=str(small), max_replicas=8).unwrapped
    cfg = load_agent_config(native_config(tmp_path)[0])
    torch.manual_seed(0)
    net = build_net(env3.layout, cfg)
    # permuting the replica slots permutes the logits the same way and leaves the value alone
    obs, info = env3.reset(seed=0)
    for _ in range(30):
        obs, *_, info = env3.step(int(np.flatnonzero(info["action_mask"])[0]))
    lay = env3.layout
    x = np.concatenate(list(obs.values()))
    perm = np.array([2, 0, 1, 3, 4, 5, 6, 7])
    xp = x.copy()
    for g in ("replicas", "prefix_hits"):
        a, b = lay.offsets[g]
        xp[a:b] = x[a:b].reshape(8, -1)[perm].reshape(-1)
    with torch.no_grad():
        (lx, vx), (lp, vp) = net(torch.as_tensor(x[None])), net(torch.as_tensor(xp[None]))
    assert torch.allclose(lp[0], lx[0][perm], atol=1e-6) and torch.allclose(vp, vx, atol=1e-6)
    assert lx[0].std() > 0  # the slots do get different logits
    # the network made for the 3-replica scenario plays the 4-replica one with the same padding
    pol = NativePolicy("untrained", net, "servegym/Route-v0")
    env4 = gym.make("servegym/Route-v0", scenario=str(large), max_replicas=8).unwrapped
    assert env4.layout == lay
    metrics = run_episode(env4, pol.act, seed=1)
    assert metrics["judged"] > 0
    # the fourth replica is a choice like the others: unmasked, and given about a quarter of the mass
    obs, info = env4.reset(seed=2)
    x = torch.as_tensor(np.concatenate(list(obs.values()))[None])
    m = torch.as_tensor(info["action_mask"][None]).bool()
    assert m[0, :4].all() and not m[0, 4:].any()
    with torch.no_grad():
        probs = MaskedMultiCategorical(net(x)[0], m, lay.nvec).logp[0].exp()[0]
    assert probs[3] > 0.15 and probs[4:].sum() == 0


def test_masked_sampling_never_picks_a_masked_action():
    logits = torch.zeros((256, 5 + 3))
    mask = torch.ones((256, 8), dtype=torch.bool)
    mask[:, 1:5] = False  # dim 0: only action 0; dim 1: all three
    dist = MaskedMultiCategorical(logits, mask, (5, 3))
    a = dist.sample(torch.Generator().manual_seed(0))
    assert (a[:, 0] == 0).all() and set(a[:, 1].tolist()) == {0, 1, 2}
    assert torch.allclose(dist.entropy(), torch.full((256,), float(np.log(3))))


@pytest.mark.slow
def test_short_native_ppo_run_beats_random_routing(tmp_path):
    cfg_path, sc = native_config(
        tmp_path,
        total_timesteps=4096,
        n_envs=8,
        eval_freq=10_000,
        checkpoint_freq=10_000,
        ppo={"n_steps": 128, "batch_size": 256, "n_epochs": 4},
    )
    out = tmp_path / "run"
    assert main(["--config", str(cfg_path), "--out", str(out), "--seed", "1"]) == 0
    ppo, rand = learned_vs_random(out / "model.pt", sc)
    print(f"SLO attainment on held-out seeds: native PPO {ppo:.3f}, random {rand:.3f}")
    assert ppo > rand + 0.15, (ppo, rand)


def test_late_requests_at_truncation_make_the_return_agree_with_the_metrics(tmp_path):
    # defect 5: overdue requests at a horizon cut are misses in the metrics; the trainer's reward charges them
    from servegym.agents.ppo import late_at_truncation

    over = json.loads(json.dumps(EASY))
    over["sources"][0]["arrival"]["rate_per_s"] = 6.0
    sc = tmp_path / "overload.yaml"
    sc.write_text(yaml.safe_dump(over))
    env = gym.make_vec(
        "servegym/Route-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        scenario=str(sc),
        info_features=False,
        reward={"cost_usd": 0.0},
    )
    obs, info = env.reset(seed=0)
    env_ret, ret, metrics = np.zeros(2), np.zeros(2), [None, None]
    while any(m is None for m in metrics):
        mask = info["action_mask"]  # everything to the last replica, the A40: a backlog at the cut
        obs, r, term, trunc, info = env.step(mask.shape[1] - 1 - mask[:, ::-1].argmax(1))
        fixed = late_at_truncation(r, term, trunc, info, 1.0)
        for j in range(2):
            if metrics[j] is None:
                env_ret[j] += r[j]
                ret[j] += fixed[j]
                if term[j] or trunc[j]:
                    assert trunc[j] and not term[j]
                    metrics[j] = {k: v[j] for k, v in info["final_info"]["metrics"].items()}
    for j in range(2):
        assert ret[j] == metrics[j]["slo_met"] - metrics[j]["slo_missed"]
        assert env_ret[j] > ret[j]  # the env's own return left late requests uncharged


def test_behaviour_cloning_copies_the_teacher_and_warm_starts_ppo(tmp_path):
    from servegym.agents import bc

    cfg_path, sc = native_config(tmp_path, total_timesteps=256, eval_freq=10_000, checkpoint_freq=10_000)
    out = tmp_path / "bc"
    args = [
        "--config",
        str(cfg_path),
        "--teacher",
        "jsq",
        "--steps",
        "4096",
        "--n-envs",
        "8",
        "--epochs",
        "6",
    ]
    assert bc.main([*args, "--out", str(out)]) == 0
    ck = torch.load(out / "model.pt", weights_only=False)
    assert ck["bc"]["accuracy"] > 0.9, ck["bc"]
    clone = make_policy(out / "model.pt")
    seeds = [5001, 5002, 5003]
    cfg = load_agent_config(cfg_path)
    mine = run_vec_episodes(clone, cfg.env_id, str(sc), seeds)
    teacher = run_vec_episodes("jsq", cfg.env_id, str(sc), seeds)
    gap = np.mean([a["slo_attainment"] - b["slo_attainment"] for a, b in zip(mine, teacher, strict=True)])
    assert abs(gap) < 0.05, gap
    # PPO starts from the cloned weights
    run = tmp_path / "ppo"
    assert main(["--config", str(cfg_path), "--out", str(run), "--init", str(out / "model.pt")]) == 0
    assert json.loads((run / "meta.json").read_text())["init_from"].endswith("model.pt")
