"""Train a (maskable) PPO agent on a servegym env; read top to bottom, CleanRL style.

    python scripts/train.py --env servegym/Route-v0 --scenario chat_azure --timesteps 20000 --out runs/route

Writes under ``--out``: ``model.zip`` (final), ``best/best_model.zip`` (best on the held-out eval seeds),
``checkpoints/`` (with VecNormalize statistics), ``tb/`` (TensorBoard: SB3's scalars plus ``charts/...``),
``config.yaml`` (the resolved config) and ``meta.json`` (versions, git commit, command, wall time).
``--resume`` continues from the newest checkpoint in ``--out`` and keeps counting steps from there.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from servegym import envs
from servegym.agents import checkpoints as run
from servegym.agents.config import AgentConfig, load_agent_config
from servegym.baselines.harness import git_commit as harness_git_commit
from servegym.envs.scenario import deep_merge, scaled_sources


def default_config_name(env_id: str, scenario: str) -> str:
    return f"{env_id.split('/')[-1].split('-')[0].lower()}_{scenario}"


def git_commit() -> str | None:
    """The commit of the servegym checkout that trained the run ('+dirty' if modified), None outside one."""
    return harness_git_commit() or None


def resume_from(out: Path, cfg: AgentConfig, venv, device: str = "cpu"):
    """(model, venv, checkpoint) of the newest checkpoint that loads whole with its normalization
    statistics; a damaged one (a run killed while writing it) is reported and the one before it tried.
    (None, venv, None) when none loads."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    algo = MaskablePPO if cfg.algo == "maskable_ppo" else PPO
    for ckpt in reversed(run.checkpoints(out)):
        stats = run.step_vecnormalize(ckpt)
        try:
            env = venv
            if isinstance(venv, VecNormalize) and stats.exists():
                env = VecNormalize.load(str(stats), venv.venv)
            model = algo.load(str(ckpt), env=env, device=device, tensorboard_log=str(out / "tb"))
        except Exception as e:  # zipfile.BadZipFile, EOFError, UnpicklingError, ...: a truncated file
            print(
                f"--resume: skipping {ckpt.name}: cannot load it or {stats.name} ({type(e).__name__}: {e})",
                file=sys.stderr,
            )
            continue
        return model, env, ckpt
    return None, venv, None


def make_vec_env(cfg: AgentConfig, n_envs: int, seed: int):
    """The native numba vector env behind SB3's VecEnv interface (falls back to the env's defaults)."""
    from stable_baselines3.common.vec_env import VecMonitor

    from servegym.envs.gym.sb3 import SB3VecEnv

    venv = SB3VecEnv(cfg.env_id, num_envs=n_envs, scenario=cfg.scenario, **cfg.env_config)
    venv.seed(seed)
    return VecMonitor(venv)  # episode returns and lengths for rollout/ep_rew_mean and the evaluations


def load_setter(venv):
    """A function that sets the offered load of the training envs behind SB3's wrappers: it rescales the
    scenario's sources (``scaled_sources``) on top of the run's own scenario overrides. Make one per run:
    it keeps the scenario it was made with as the 1x load."""

    native = venv.unwrapped.venv  # VecNormalize / VecMonitor -> SB3VecEnv -> ServeVectorEnv
    proto = native.proto
    base_overrides = dict(proto.config["scenario_overrides"])
    base = proto.scenario

    def set_load(factor: float) -> None:
        over = deep_merge(base_overrides, {"sources": scaled_sources(base, factor)})
        proto.configure({"scenario_overrides": over})

    return set_load


def build_model(cfg: AgentConfig, venv, out: Path, seed: int, device: str = "cpu"):
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    from servegym.agents.extractors import SetExtractor

    feature_names = venv.get_attr("obs_features", [0])[0] if cfg.network.extractor == "set" else {}
    policy_kwargs: dict[str, Any] = {"net_arch": list(cfg.network.net_arch)}
    if cfg.network.extractor == "set":
        policy_kwargs["features_extractor_class"] = SetExtractor
        policy_kwargs["features_extractor_kwargs"] = {
            "feature_names": feature_names,
            "slot_hidden": cfg.network.slot_hidden,
            "global_hidden": cfg.network.global_hidden,
        }
    algo = MaskablePPO if cfg.algo == "maskable_ppo" else PPO
    return algo(
        "MultiInputPolicy",
        venv,
        seed=seed,
        device=device,
        tensorboard_log=str(out / "tb"),
        policy_kwargs=policy_kwargs,
        verbose=0,
        **cfg.ppo.model_dump(),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # --env / --scenario override the YAML's env_id / scenario only when given
    ap.add_argument("--env", default=None, help="env id (default: the config's, else servegym/Route-v0)")
    ap.add_argument("--scenario", default=None, help="scenario (default: the config's, else chat_azure)")
    ap.add_argument(
        "--algo", default=None, choices=["ppo", "maskable_ppo", "native_ppo"], help="override algo"
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (native_ppo; SB3 takes it as is)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: best for small MLPs on 2 cores)"
    )
    ap.add_argument(
        "--init", default=None, help="native_ppo: start from this .pt's weights (e.g. agents/bc.py)"
    )
    ap.add_argument(
        "--config", default=None, help="configs/agents/<name>.yaml or a path (default: <env>_<scenario>)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timesteps", type=int, default=None, help="override total_timesteps")
    ap.add_argument("--n-envs", type=int, default=None)
    ap.add_argument("--out", default=None, help="run folder (default runs/<config>_s<seed>)")
    ap.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    # 1. config: the YAML, with the command line on top
    name = args.config or default_config_name(args.env or "servegym/Route-v0", args.scenario or "chat_azure")
    overrides: dict[str, Any] = {}
    if args.env is not None:
        overrides["env_id"] = args.env
    if args.scenario is not None:
        overrides["scenario"] = args.scenario
    if args.algo is not None:
        overrides["algo"] = args.algo
    if args.timesteps is not None:
        overrides["total_timesteps"] = args.timesteps
    if args.n_envs is not None:
        overrides["n_envs"] = args.n_envs
    cfg = load_agent_config(name, overrides)
    out = Path(args.out or f"runs/{Path(name).stem}_s{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    print(f"{cfg.algo} on {cfg.env_id} / {cfg.scenario}, {cfg.total_timesteps:,} steps -> {out}", flush=True)
    if cfg.algo == "native_ppo":  # agents/ppo.py: the native trainer, same config, same run folder layout
        from servegym.agents.ppo import train

        init = Path(args.init) if args.init else None
        train(cfg, out, args.seed, args.device, args.resume, args.threads, init, command)
        return 0

    # 2. seeding: python, numpy and torch, explicitly; the envs take theirs from venv.seed()
    random.seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002  (SB3 and torch helpers draw from the legacy global state)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)  # tiny MLPs: threads cost more than they give on 2 cores

    # 3. envs: training on the train seed stream, evaluation on the held-out eval seeds
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback
    from stable_baselines3.common.vec_env import VecNormalize

    venv = make_vec_env(cfg, cfg.n_envs, cfg.train_seeds[args.seed % len(cfg.train_seeds)] + 7919 * args.seed)
    if cfg.normalize_obs or cfg.normalize_reward:
        venv = VecNormalize(venv, norm_obs=cfg.normalize_obs, norm_reward=cfg.normalize_reward)

    # 4. model: new, or the newest checkpoint with its normalization statistics
    model, ckpt = None, None
    if args.resume:
        model, venv, ckpt = resume_from(out, cfg, venv, args.device)
        if ckpt is None:
            print(
                f"--resume: no loadable checkpoint in {out / 'checkpoints'}; starting fresh", file=sys.stderr
            )
    if model is None:
        model = build_model(cfg, venv, out, args.seed, args.device)

    # 5. callbacks: charts/..., the load curriculum, held-out evaluation keeping the best model, checkpoints
    from servegym.agents.callbacks import ChartsCallback, LoadCurriculumCallback, MetricEvalCallback

    per_env = max(1, cfg.n_envs)
    curriculum = [LoadCurriculumCallback(cfg.load_at, load_setter(venv))] if cfg.curriculum else []
    callbacks = CallbackList(
        [
            ChartsCallback(),
            *curriculum,
            MetricEvalCallback(cfg, out, max(1, cfg.eval_freq // per_env), resume=ckpt is not None),
            CheckpointCallback(
                save_freq=max(1, cfg.checkpoint_freq // per_env),
                save_path=str(out / run.CHECKPOINT_DIR),
                name_prefix=run.CHECKPOINT_PREFIX,
                save_vecnormalize=True,
            ),
        ]
    )

    # 6. train
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    done = model.num_timesteps
    remaining = max(0, cfg.total_timesteps - done)
    t0 = time.perf_counter()
    model.learn(
        total_timesteps=remaining,
        callback=callbacks,
        reset_num_timesteps=ckpt is None,
        progress_bar=not args.no_progress,
        tb_log_name="ppo",
    )
    wall = time.perf_counter() - t0

    # 7. save the model, its normalization statistics and what produced them
    model.save(str(run.final_model(out)))
    if isinstance(venv, VecNormalize):
        venv.save(str(out / run.VECNORMALIZE))

    meta = {
        "package_version": envs.__version__,
        "git_commit": git_commit(),
        "command": command,
        "seed": args.seed,
        "timesteps": int(model.num_timesteps),
        "resumed_from": str(ckpt) if ckpt else None,
        "wall_s": round(wall, 1),
        "torch": torch.__version__,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"trained {model.num_timesteps} steps in {wall:.0f} s -> {run.final_model(out)}")
    venv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
