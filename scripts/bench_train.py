"""End-to-end learning throughput: the native PPO (agents/ppo.py) against SB3 on the same env, in one run.

    python scripts/bench_train.py                       # Route-v0, chat_azure, one JSON line per learner
    python scripts/bench_train.py --native-steps 500000 --sb3-steps 20000 --threads 1

Every learner trains from scratch on the same env id and scenario (each with its shipped hyperparameters:
configs/agents/route_chat_azure_native.yaml and route_chat_azure.yaml) after a warm-up that compiles the
numba kernels, and reports env steps per second of learning (rollouts + updates; the held-out evaluation
at the end is timed apart) by the wall clock and per CPU-second of its own process: on a machine shared
with other jobs the wall-clock rate understates what the learner does on a free core. The last line
gives the native/SB3 ratios of both.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def bench_native(cfg, steps: int, threads: int, device: str) -> dict:
    from servegym.agents.ppo import train

    cfg = cfg.model_copy(update={"total_timesteps": steps, "eval_freq": 10**12, "checkpoint_freq": 10**12})
    with tempfile.TemporaryDirectory() as d:
        meta = train(cfg, Path(d), seed=0, device=device, threads=threads)
        evals = bench_eval(cfg, Path(d) / "model.pt")
    wall = meta["wall_s"] - meta["eval_s"]
    print(json.dumps(evals), flush=True)
    return {
        "learner": "native_ppo",
        "n_envs": cfg.n_envs,
        "steps": meta["timesteps"],
        "wall_s": round(wall, 1),
        "steps_per_s": meta["learn_steps_per_s"],
        "steps_per_cpu_s": round(meta["timesteps"] / max(meta["learn_cpu_s"], 1e-9)),
    }


def bench_eval(cfg, model: Path, n_seeds: int = 10) -> dict:
    """Seconds to evaluate the trained policy on ``n_seeds`` test seeds, against heuristics: batched over the
    vector env (baselines/vec_runner.py), one env per episode (env_runner.py), and the heuristic run inside
    the core by the harness (the fastest way a heuristic is evaluated)."""
    from servegym.baselines.env_runner import run_env_episode
    from servegym.baselines.harness import EpisodeSpec, builtin_episode
    from servegym.baselines.registry import make_policy
    from servegym.baselines.vec_runner import run_vec_episodes

    seeds = list(range(2000, 2000 + n_seeds))
    env_cfg = dict(cfg.env_config)
    learned = make_policy(model)
    run_vec_episodes(learned, cfg.env_id, cfg.scenario, seeds[:2], env_cfg)  # warm-up

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return round(time.perf_counter() - t0, 2)

    over = {"horizon_s": env_cfg["horizon_s"]} if "horizon_s" in env_cfg else {}
    out = {
        "eval_seeds": n_seeds,
        "learned_batched_s": timed(
            lambda: run_vec_episodes(learned, cfg.env_id, cfg.scenario, seeds, env_cfg)
        ),
        "learned_per_episode_s": timed(
            lambda: [run_env_episode(learned, cfg.env_id, cfg.scenario, s, env_cfg) for s in seeds]
        ),
        "round_robin_batched_s": timed(
            lambda: run_vec_episodes("round_robin", cfg.env_id, cfg.scenario, seeds, env_cfg)
        ),
        "round_robin_in_core_s": timed(
            lambda: [
                builtin_episode(EpisodeSpec("round_robin", cfg.scenario, s, overrides=over)) for s in seeds
            ]
        ),
    }
    out["learned_batched_over_round_robin_in_core"] = round(
        out["learned_batched_s"] / out["round_robin_in_core_s"], 2
    )
    return out


def bench_sb3(cfg, steps: int, algo: str, threads: int) -> dict:
    from servegym.agents.train import build_model, make_vec_env

    env_config = dict(cfg.env_config)
    if algo == "ppo":  # plain PPO samples masked actions: the env replaces them with the no-op and a penalty
        env_config["invalid_action"] = "noop_penalty"
    cfg = cfg.model_copy(update={"algo": algo, "env_config": env_config})
    torch.set_num_threads(threads)
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(
        make_vec_env(cfg, cfg.n_envs, seed=0), norm_obs=False, norm_reward=cfg.normalize_reward
    )
    with tempfile.TemporaryDirectory() as d:
        model = build_model(cfg, venv, Path(d), 0)
        t0, c0 = time.perf_counter(), time.process_time()
        model.learn(total_timesteps=steps)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    venv.close()
    return {
        "learner": f"sb3_{algo}",
        "n_envs": cfg.n_envs,
        "steps": int(model.num_timesteps),
        "wall_s": round(wall, 1),
        "steps_per_s": round(model.num_timesteps / wall),
        "steps_per_cpu_s": round(model.num_timesteps / cpu),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--native-config", default="route_chat_azure_native")
    ap.add_argument("--sb3-config", default="route_chat_azure")
    ap.add_argument("--native-steps", type=int, default=300_000)
    ap.add_argument("--sb3-steps", type=int, default=16_384)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every learner")
    ap.add_argument("--device", default="cpu", help="native PPO's device (cpu, cuda, auto)")
    ap.add_argument("--skip-plain-ppo", action="store_true")
    args = ap.parse_args(argv)

    from servegym.agents.config import load_agent_config
    from servegym.agents.ppo import make_env

    native_cfg = load_agent_config(args.native_config)
    sb3_cfg = load_agent_config(args.sb3_config)
    if (native_cfg.env_id, native_cfg.scenario, native_cfg.env_config) != (
        sb3_cfg.env_id,
        sb3_cfg.scenario,
        sb3_cfg.env_config,
    ):
        ap.error("the two configs must train on the same env id, scenario and env_config")
    warm = make_env(native_cfg, 2)  # compile the kernels (or load them from numba's cache) before timing
    warm.reset(seed=0)
    warm.step(warm.action_masks().argmax(1))
    rows = [bench_native(native_cfg, args.native_steps, args.threads, args.device)]
    print(json.dumps(rows[-1]), flush=True)
    for algo in ("maskable_ppo",) + (() if args.skip_plain_ppo else ("ppo",)):
        rows.append(bench_sb3(sb3_cfg, args.sb3_steps, algo, args.threads))
        print(json.dumps(rows[-1]), flush=True)
    ratios = {
        f"native_over_{r['learner']}": {
            "wall": round(rows[0]["steps_per_s"] / r["steps_per_s"], 1),
            "cpu": round(rows[0]["steps_per_cpu_s"] / r["steps_per_cpu_s"], 1),
        }
        for r in rows[1:]
    }
    print(json.dumps({"env_id": native_cfg.env_id, "scenario": native_cfg.scenario, "ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
