"""Behaviour cloning: fit the native PPO's slot policy to a heuristic's decisions, as a warm start for PPO.

    python -m servegym.agents.bc --config route_chat_azure_native --teacher round_robin --steps 200000 \\
        --out runs/bc_rr
    python scripts/train.py --config route_chat_azure_native --init runs/bc_rr/model.pt --out runs/ppo_from_bc
    python -m servegym.agents.bc --config route_chat_azure_native --dataset servegym/chat_azure/jsq-v0 \
        --datasets-root demos --out runs/bc_demo          # from a Minari dataset (agents/demos.py)

The teacher (any registered heuristic, or a checkpoint) plays the config's env on its training seeds in one
batched vector env; every decision gives a (flat observation, action mask, action) triple. Or the triples
come from a recorded Minari dataset (``--dataset``, written by scripts/make_demos.py on the same env: its
observation and action spaces must be the config's env's, which is checked). The network's
policy is fitted by masked cross-entropy (minibatch Adam), and its value head by regression on the
teacher's discounted returns in the env's reward scale divided by their std (what PPO's reward scaling
sees), so PPO starts from a policy that already spreads the load and a critic that is not wildly off, instead
of the uniform policy that collapses onto one replica first. The result is a native ``.pt`` (format of
agents/ppo.py): a policy by itself, and ``--init`` for train.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from servegym.agents import checkpoints as run
from servegym.agents.config import AgentConfig, load_agent_config
from servegym.agents.demos import DemoError, load_dataset, transitions
from servegym.agents.native import build_net, flat_obs, save
from servegym.agents.slot_policy import MaskedMultiCategorical
from servegym.baselines.env_runner import resolve_policy
from servegym.baselines.vec_runner import make_vec_env


def teacher_rollouts(cfg: AgentConfig, teacher: str, steps: int, n_envs: int, seed: int) -> dict[str, Any]:
    """Decisions of ``teacher`` on the config's env: obs [T, N, D], mask, actions [T, N, dims], rewards, dones."""

    pol = resolve_policy(teacher, cfg.scenario)
    env = make_vec_env(cfg.env_id, cfg.scenario, n_envs, {**cfg.env_config, "info_features": True})
    pol.reset(seed=seed)
    base = cfg.train_seeds[seed % len(cfg.train_seeds)] + 7919 * seed
    obs, infos = env.reset(seed=base)
    t_max = -(-steps // n_envs)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "mask", "act", "rew", "done")}
    for _ in range(t_max):
        a = np.asarray(pol.act_batch(obs, infos)).reshape(n_envs, -1)
        out["obs"].append(flat_obs(obs))
        out["mask"].append(infos["action_mask"].astype(bool))
        out["act"].append(a.astype(np.int64))
        obs, r, term, trunc, infos = env.step(a.reshape(env.action_space.shape))
        out["rew"].append(r.astype(np.float64))
        out["done"].append(term | trunc)
    env.close()
    return {k: np.stack(v) for k, v in out.items()}


def discounted_returns(rew: np.ndarray, done: np.ndarray, gamma: float) -> np.ndarray:
    """Per-step discounted return within each episode (the tail of the last one is cut at the data's end)."""
    ret = np.zeros_like(rew)
    acc = np.zeros(rew.shape[1])
    for t in reversed(range(rew.shape[0])):
        acc = rew[t] + gamma * acc * (1.0 - done[t])
        ret[t] = acc
    return ret


def dataset_rollouts(cfg: AgentConfig, did: str, root: str | Path | None = None) -> dict[str, np.ndarray]:
    """A Minari dataset's decisions (agents/demos.py) in ``teacher_rollouts``' form, after checking that it
    was recorded on an env with the config's observation and action spaces."""
    from servegym.agents.ppo import make_env  # the trainer (torch)

    ds = load_dataset(did, root)
    env = make_env(cfg, 1)
    want_obs, want_act = env.single_observation_space, env.single_action_space
    lay = env.layout
    env.close()
    if ds.observation_space != want_obs or ds.action_space != want_act:
        raise DemoError(
            f"dataset {did} was recorded on {ds.storage.metadata.get('servegym', {}).get('env_id', '?')} with "
            f"observation space {ds.observation_space} and action space {ds.action_space}; config "
            f"{cfg.env_id}/{cfg.scenario} has {want_obs} and {want_act} (record it with "
            "scripts/make_demos.py --config <this config>)"
        )
    return transitions(ds, tuple(lay.offsets))


def imitation(net: Any, data: dict[str, np.ndarray], limit: int = 20_000) -> dict[str, float]:
    """Agreement with the recorded actions (argmax) and their masked cross-entropy, on the first ``limit``."""
    lay = net.layout
    x = torch.as_tensor(data["obs"].reshape(-1, lay.obs_size)[:limit])
    m = torch.as_tensor(data["mask"].reshape(-1, lay.mask_size)[:limit])
    a = torch.as_tensor(data["act"].reshape(-1, len(lay.nvec))[:limit])
    with torch.no_grad():
        logits, _ = net(x)
        dist = MaskedMultiCategorical(logits, m, tuple(lay.nvec))
        acc = (dist.mode() == a).all(1).float().mean().item()
        return {"accuracy": acc, "policy_loss": -dist.log_prob(a).mean().item()}


def fit(
    cfg: AgentConfig, data: dict[str, np.ndarray], epochs: int, seed: int, log: bool = True
) -> tuple[Any, dict[str, float]]:
    """A fresh slot network fitted to the teacher's data; returns it and the final accuracy and losses."""
    from servegym.agents.ppo import make_env  # the trainer (torch)

    torch.manual_seed(seed)
    lay = make_env(cfg, 1).layout
    net = build_net(lay, cfg)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    ret = discounted_returns(data["rew"], data["done"], cfg.ppo.gamma)
    scale = float(ret.std()) or 1.0
    x = torch.as_tensor(data["obs"].reshape(-1, lay.obs_size))
    m = torch.as_tensor(data["mask"].reshape(-1, lay.mask_size))
    a = torch.as_tensor(data["act"].reshape(x.shape[0], -1))
    y = torch.as_tensor((ret / scale).reshape(-1), dtype=torch.float32)
    flat = data["obs"].reshape(-1, lay.obs_size)
    net.set_normalizer(flat.mean(0), flat.var(0))
    n, bs = x.shape[0], 256
    stats: dict[str, float] = {"return_std": scale}
    for ep in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, bs):
            mb = perm[i : i + bs]
            logits, v = net(x[mb])
            dist = MaskedMultiCategorical(logits, m[mb], tuple(lay.nvec))
            pi_loss = -dist.log_prob(a[mb]).mean()
            v_loss = 0.5 * ((v - y[mb]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            (pi_loss + 0.5 * v_loss).backward()
            opt.step()
        stats.update(imitation(net, data))
        if log:
            print(f"epoch {ep + 1}/{epochs}: teacher agreement {stats['accuracy']:.3f}", flush=True)
    return net, stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="agent config (configs/agents/<name>.yaml or a path)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument(
        "--teacher", default=None, help="registered heuristic or checkpoint (default round_robin)"
    )
    src.add_argument("--dataset", default=None, help="a Minari dataset id (scripts/make_demos.py) instead")
    ap.add_argument(
        "--datasets-root", default=None, help="where the dataset lies (default MINARI_DATASETS_PATH)"
    )
    ap.add_argument("--steps", type=int, default=100_000, help="teacher decisions to record")
    ap.add_argument("--n-envs", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_agent_config(args.config)
    t0 = time.perf_counter()
    if args.dataset:
        data = dataset_rollouts(cfg, args.dataset, args.datasets_root)
        source = f"dataset {args.dataset}"
    else:
        teacher = args.teacher or "round_robin"
        data = teacher_rollouts(cfg, teacher, args.steps, args.n_envs, args.seed)
        source = teacher
    t1 = time.perf_counter()
    net, stats = fit(cfg, data, args.epochs, args.seed)
    out = Path(args.out)
    # PPO's reward scale starts where the value head was fitted (ppo.py reads ret_rms from an --init file)
    ret_rms = (0.0, stats["return_std"] ** 2, 1e4)
    flat = data["obs"].reshape(-1, net.layout.obs_size)
    obs_rms = (flat.mean(0), flat.var(0), float(flat.shape[0]))
    state = {
        "global_step": 0,
        "ret_rms": ret_rms,
        "obs_rms": obs_rms,
        "bc": {"teacher": source, **stats},
    }
    save(run.final_model(out, ".pt"), net, None, cfg, net.layout, state)
    print(
        f"cloned {source} from {data['act'].shape[0] * data['act'].shape[1]} decisions "
        f"({t1 - t0:.0f} s rollouts, {time.perf_counter() - t1:.0f} s fit) -> {out / 'model.pt'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
