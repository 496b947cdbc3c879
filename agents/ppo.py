"""Native PPO on the numba vector env, in one file, CleanRL style: read it top to bottom.

    python scripts/train.py --algo native_ppo --env servegym/Route-v0 --scenario chat_azure --out runs/route_native
    python -m servegym.agents.train --algo native_ppo --config configs/agents/route_chat_azure_native.yaml --out runs/x

Why not SB3: SB3 steps one Python env interface per step and runs a dict-observation policy per call; here
the N sub-envs advance in one numba call (``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``),
the policy is the permutation-equivariant ``SlotActorCritic`` over the flat observation, and a rollout is
a few hundred batched forward passes, so the learner keeps up with the simulator.

What it does (PPO as Schulman et al. 2017, with CleanRL's and SB3's defaults where the paper leaves a choice):
masked categorical actions (one per action dimension, so Discrete and MultiDiscrete alike), GAE, clipped
surrogate, unclipped value loss as SB3's default, advantage normalization per minibatch, reward scaling by
a running std of the discounted return (SB3's VecNormalize), bootstrapping of truncated episodes from their
final observation, gradient clipping; and the requests a horizon cut leaves overdue are charged as misses,
as the metrics count them (``late_at_truncation``). Hyperparameters come from the agent YAML (``agents/config.py``).

Writes under ``--out``: ``model.pt`` (final), ``best/best_model.pt`` (best mean ``goodput/req_per_s``, the
leaderboard's score, on the held-out eval seeds, evaluated deterministically over the batched vector env),
``eval/history.json`` (every evaluation; kept across ``--resume``), ``checkpoints/model_<steps>_steps.pt``
(model, optimizer, reward statistics, step count), ``tb/`` (TensorBoard: ``charts/`` and ``reward/`` as
agents/callbacks.py logs them for SB3, ``rollout/``, ``train/``, ``time/`` and ``eval/``), ``config.yaml``
and ``meta.json``. A ``.pt`` file loads as a policy by path (``baselines/registry.py``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml

import servegym.envs  # noqa: F401  (registers the ids)
from servegym.agents import checkpoints as run
from servegym.agents.callbacks import CHART_KEYS  # the same charts/ tags as the SB3 path
from servegym.agents.config import AgentConfig
from servegym.agents.evaluation import EVAL_METRIC, EvalHistory, evaluate_policy
from servegym.agents.native import NativePolicy, build_net, flat_obs, pick_device, save
from servegym.agents.slot_policy import MaskedMultiCategorical
from servegym.baselines.harness import git_commit
from servegym.envs import __version__

# ---------------------------------------------------------------- pieces


def make_env(cfg: AgentConfig, n: int) -> Any:
    """The native vector env of the config; ``info_features`` off: the network reads observation and mask."""

    kw = {"scenario": cfg.scenario, **cfg.env_config, "info_features": False}
    return gym.make_vec(cfg.env_id, num_envs=n, vectorization_mode="vector_entry_point", **kw)


class RunningMeanStd:
    """Running mean and variance over the first axis (SB3's VecNormalize): of the discounted return, whose
    std scales the rewards, and of the observation features, which the network standardizes."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.mean, self.var, self.count = np.zeros(shape), np.ones(shape), 1e-4

    def update(self, x: np.ndarray) -> None:
        m, v, n = x.mean(0), x.var(0), x.shape[0]
        delta, tot = m - self.mean, self.count + n
        self.mean += delta * n / tot
        self.var = (self.var * self.count + v * n + delta**2 * self.count * n / tot) / tot
        self.count = tot


def late_at_truncation(r: np.ndarray, term: np.ndarray, trunc: np.ndarray, infos: dict, weight: float):
    """``r`` with the requests the metrics count as missed at a horizon cut charged to the episode's last step.

    A request still in flight past its deadline when the horizon cuts the episode is a miss in the metrics
    (docs/metrics.md) but never finishes, so the env's reward never charges it (issue 17 counted ~315 such
    requests per episode); without this the return rewards leaving a backlog at the end. These are the
    judged requests that neither finished nor were dropped (drops the env already charges).
    """
    cut = np.flatnonzero(trunc & ~term)
    if not cut.size:
        return r
    m = infos["final_info"]["metrics"]
    late = m["judged"][cut] - m["finished"][cut] - m["dropped"][cut]
    r = r.copy()
    r[cut] -= weight * late
    return r


def latest_checkpoint(out: Path) -> Path | None:
    """The newest step checkpoint of a native run (``--resume``)."""
    return run.latest_checkpoint(out, ".pt")


# ---------------------------------------------------------------- training


def train(
    cfg: AgentConfig,
    out: Path,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    threads: int | None = None,
    init: Path | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Train; returns meta.json's content. ``init`` starts from a checkpoint's weights (behaviour cloning)."""
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    # network init, minibatch order and action sampling all draw from torch's (seeded) generator
    torch.manual_seed(seed)
    p = cfg.ppo
    n_envs, n_steps = cfg.n_envs, p.n_steps
    batch = n_envs * n_steps
    if batch % p.batch_size:
        raise ValueError(f"n_envs * n_steps = {batch} is not a multiple of ppo.batch_size = {p.batch_size}")

    env = make_env(cfg, n_envs)
    lay = env.layout
    nvec = tuple(lay.nvec)
    w_missed = float(env.proto.config["reward"]["slo_missed"])
    net = build_net(lay, cfg).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=p.learning_rate, eps=1e-5, fused=True)  # fused: 1 kernel/step
    rms = RunningMeanStd()
    obs_rms = RunningMeanStd((lay.obs_size,))
    step = 0

    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None:
        print(f"--resume: no checkpoint in {out / 'checkpoints'}; starting fresh", file=sys.stderr)
    if ckpt is not None:
        ck = torch.load(str(ckpt), map_location=dev, weights_only=False)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        rms.mean, rms.var, rms.count = ck["ret_rms"]
        obs_rms.mean, obs_rms.var, obs_rms.count = ck["obs_rms"]
        step = int(ck["global_step"])
        torch.set_rng_state(ck["torch_rng"])
    elif init is not None:  # warm start (agents/bc.py): the weights, and the reward scale they were fitted to
        ck = torch.load(str(init), map_location=dev, weights_only=False)
        net.load_state_dict(ck["model"])
        if "ret_rms" in ck:
            rms.mean, rms.var, rms.count = ck["ret_rms"]
        if "obs_rms" in ck:
            obs_rms.mean, obs_rms.var, obs_rms.count = ck["obs_rms"]
    history = EvalHistory(out, resume=ckpt is not None)
    start_step = step

    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(str(out / "tb" / "native_ppo"), purge_step=step or None)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))

    # seeding: sub-env j of this run starts from seed base + j; a resumed run moves the base on
    base = cfg.train_seeds[seed % len(cfg.train_seeds)] + 7919 * seed + 1_000_003 * (step // batch)
    obs, infos = env.reset(seed=base)
    x = torch.as_tensor(flat_obs(obs), device=dev)
    m = torch.as_tensor(infos["action_mask"], device=dev).bool()

    B_obs = torch.zeros((n_steps, n_envs, lay.obs_size), device=dev)
    B_mask = torch.zeros((n_steps, n_envs, lay.mask_size), dtype=torch.bool, device=dev)
    B_act = torch.zeros((n_steps, n_envs, len(nvec)), dtype=torch.long, device=dev)
    B_logp = torch.zeros((n_steps, n_envs), device=dev)
    B_val = torch.zeros((n_steps, n_envs), device=dev)
    rew = np.zeros((n_steps, n_envs), np.float32)
    dones = np.zeros((n_steps, n_envs), np.float32)
    ret_acc = np.zeros(n_envs)  # discounted return, for the reward scale
    ep_ret, ep_len = np.zeros(n_envs), np.zeros(n_envs, np.int64)
    next_eval = (step // cfg.eval_freq + 1) * cfg.eval_freq
    next_ckpt = (step // cfg.checkpoint_freq + 1) * cfg.checkpoint_freq
    t0, cpu0, t_eval, cpu_eval = time.perf_counter(), time.process_time(), 0.0, 0.0

    while step < cfg.total_timesteps:
        t_roll = time.perf_counter()
        episodes: dict[str, list[float]] = defaultdict(list)
        components: dict[str, float] = defaultdict(float)
        # 1. rollout: n_steps vector steps, one batched forward pass each
        for t in range(n_steps):
            with torch.no_grad():
                logits, v = net(x)
                dist = MaskedMultiCategorical(logits, m, nvec)
                a = dist.sample()
                B_logp[t] = dist.log_prob(a)
            B_obs[t], B_mask[t], B_act[t], B_val[t] = x, m, a, v
            obs, r, term, trunc, infos = env.step(a.cpu().numpy().reshape(env.action_space.shape))
            done = term | trunc
            if done.any():
                r = late_at_truncation(r, term, trunc, infos, w_missed)
            ep_ret += r
            ep_len += 1
            for key, val in infos["reward_components"].items():
                components[key] += float(np.sum(val))
            ret_acc = ret_acc * p.gamma + r
            rms.update(ret_acc)
            rn = np.clip(r / math.sqrt(rms.var + 1e-8), -10.0, 10.0)
            if done.any():
                idx = np.flatnonzero(done)
                metrics = infos["final_info"]["metrics"]
                for j in idx:
                    episodes["rollout/ep_rew_mean"].append(ep_ret[j])
                    episodes["rollout/ep_len_mean"].append(ep_len[j])
                    for key, tag in CHART_KEYS.items():
                        val = float(metrics[key][j]) if key in metrics else math.nan
                        if math.isfinite(val):
                            episodes[tag].append(val)
                cut = [j for j in idx if trunc[j] and not term[j]]
                if cut:  # a horizon cut is not an end: bootstrap from the value of the last observation
                    fo = flat_obs({k: np.stack([infos["final_obs"][j][k] for j in cut]) for k in obs})
                    with torch.no_grad():
                        _, fv = net(torch.as_tensor(fo, device=dev))
                    rn[cut] += p.gamma * fv.cpu().numpy()
                ret_acc[idx] = 0.0
                ep_ret[idx], ep_len[idx] = 0.0, 0
            rew[t], dones[t] = rn, done
            x = torch.as_tensor(flat_obs(obs), device=dev)
            m = torch.as_tensor(infos["action_mask"], device=dev).bool()
        step += batch
        t_roll = time.perf_counter() - t_roll

        # 2. advantages: GAE(lambda); a done step does not look past its episode
        with torch.no_grad():
            _, last_v = net(x)
        val = B_val.cpu().numpy()
        nxt = np.concatenate([val[1:], last_v.cpu().numpy()[None]], 0)
        adv = np.zeros_like(rew)
        gae = np.zeros(n_envs, np.float32)
        for t in reversed(range(n_steps)):
            live = 1.0 - dones[t]
            delta = rew[t] + p.gamma * nxt[t] * live - val[t]
            gae = delta + p.gamma * p.gae_lambda * live * gae
            adv[t] = gae
        b_adv = torch.as_tensor(adv, device=dev).reshape(-1)
        b_ret = b_adv + B_val.reshape(-1)

        # 3. update: n_epochs passes over shuffled minibatches
        t_upd = time.perf_counter()
        b_obs, b_mask = B_obs.reshape(batch, -1), B_mask.reshape(batch, -1)
        b_act, b_logp, b_val = B_act.reshape(batch, -1), B_logp.reshape(-1), B_val.reshape(-1)
        stats: dict[str, list[float]] = defaultdict(list)
        for _ in range(p.n_epochs):
            perm = torch.randperm(batch, device=dev)
            for i in range(0, batch, p.batch_size):
                mb = perm[i : i + p.batch_size]
                logits, v = net(b_obs[mb])
                dist = MaskedMultiCategorical(logits, b_mask[mb], nvec)
                logratio = dist.log_prob(b_act[mb]) - b_logp[mb]
                ratio = logratio.exp()
                a_mb = b_adv[mb]
                a_mb = (a_mb - a_mb.mean()) / (a_mb.std() + 1e-8)
                pg = torch.max(-a_mb * ratio, -a_mb * ratio.clamp(1 - p.clip_range, 1 + p.clip_range)).mean()
                v_loss = 0.5 * ((v - b_ret[mb]) ** 2).mean()
                ent = dist.entropy().mean()
                loss = pg - p.ent_coef * ent + p.vf_coef * v_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), p.max_grad_norm)
                opt.step()
                with torch.no_grad():
                    stats["train/policy_gradient_loss"].append(pg.item())
                    stats["train/value_loss"].append(v_loss.item())
                    stats["train/entropy_loss"].append(-ent.item())
                    stats["train/approx_kl"].append(((ratio - 1) - logratio).mean().item())
                    stats["train/clip_fraction"].append(
                        ((ratio - 1).abs() > p.clip_range).float().mean().item()
                    )
        # the next rollout sees features standardized with the statistics of everything seen so far
        obs_rms.update(b_obs.cpu().numpy())
        net.set_normalizer(obs_rms.mean, obs_rms.var)
        t_upd = time.perf_counter() - t_upd

        # 4. charts: the same tags as the SB3 path, plus the split of the time
        var_y = b_ret.var().item()
        stats["train/explained_variance"] = [
            math.nan if var_y == 0 else 1 - (b_ret - b_val).var().item() / var_y
        ]
        for tag, vals in {**stats, **episodes}.items():
            tb.add_scalar(tag, float(np.mean(vals)), step)
        if episodes:
            tb.add_scalar("charts/episodes", len(episodes["rollout/ep_rew_mean"]), step)
        for key, total in components.items():
            tb.add_scalar(f"reward/{key}", total / n_envs, step)
        tb.add_scalar("train/learning_rate", p.learning_rate, step)
        tb.add_scalar("time/fps", (step - start_step) / (time.perf_counter() - t0), step)
        tb.add_scalar("time/rollout_s", t_roll, step)
        tb.add_scalar("time/update_s", t_upd, step)

        # 5. held-out evaluation on the leaderboard's metric; keep the best; checkpoints
        state = {
            "global_step": step,
            "ret_rms": (rms.mean, rms.var, rms.count),
            "obs_rms": (obs_rms.mean, obs_rms.var, obs_rms.count),
            "torch_rng": torch.get_rng_state(),
        }
        if step >= next_eval or step >= cfg.total_timesteps:
            next_eval = (step // cfg.eval_freq + 1) * cfg.eval_freq
            t_ev, c_ev = time.perf_counter(), time.process_time()
            ev = evaluate_policy(NativePolicy("eval", net, cfg.env_id), cfg)
            net.train()
            t_eval, cpu_eval = t_eval + time.perf_counter() - t_ev, cpu_eval + time.process_time() - c_ev
            for key, v in ev.items():
                tb.add_scalar(f"eval/{key.replace('/', '_')}", v, step)
            if history.add(step, ev, (step - start_step) / (time.perf_counter() - t0)):
                save(run.best_model(out, ".pt"), net, None, cfg, lay, state)
        if step >= next_ckpt or step >= cfg.total_timesteps:
            next_ckpt = (step // cfg.checkpoint_freq + 1) * cfg.checkpoint_freq
            save(run.step_checkpoint(out, step, ".pt"), net, opt, cfg, lay, state)

    wall = time.perf_counter() - t0
    save(run.final_model(out, ".pt"), net, None, cfg, lay, {"global_step": step})
    tb.close()
    env.close()

    meta = {
        "package_version": __version__,
        "git_commit": git_commit() or None,
        "command": command,
        "algo": "native_ppo",
        "seed": seed,
        "device": str(dev),
        "timesteps": step,
        "resumed_from": str(ckpt) if ckpt else None,
        "init_from": str(init) if init else None,
        "wall_s": round(wall, 1),
        "eval_s": round(t_eval, 1),
        "learn_cpu_s": round(time.process_time() - cpu0 - cpu_eval, 1),  # CPU time: the machine is shared
        "steps_per_s": round((step - start_step) / max(wall, 1e-9)),
        "learn_steps_per_s": round((step - start_step) / max(wall - t_eval, 1e-9)),  # without evaluation
        "best_eval": {EVAL_METRIC: history.best} if history.rows else None,
        "torch": torch.__version__,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"trained {step} steps in {wall:.0f} s -> {out / 'model.pt'}")
    return meta
