"""Env throughput benchmark: prints one JSON line of env steps per second with a random masked policy.

- ``route_single``: ``gymnasium.make("servegym/Route-v0")`` (default config: chat_azure, 900 s episodes,
  resets included), stepped in a Python loop; ``*_no_info`` with ``info_features=False``.
- ``route_vector64``: the native vector env, ``gymnasium.make_vec(..., num_envs=64,
  vectorization_mode="vector_entry_point")``, total sub-env steps per second; ``*_parallel`` with
  ``parallel=True`` (numba threads, NUMBA_NUM_THREADS of them).

The policy draws a uniform valid action from ``info["action_mask"]`` (its own cost is included). JIT
compilation (or loading numba's cache) is excluded by a warm-up. Targets (issue 3): >= 50,000 steps/s for
the single env, >= 500,000 steps/s for the vector env at N=64.

    python scripts/bench_envs.py             # ~1 minute
    python scripts/bench_envs.py --quick     # fewer steps
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numba
import numpy as np

import servegym.envs  # noqa: F401  (registers the ids)


def single(steps: int, **kwargs) -> float:
    env = gym.make("servegym/Route-v0", **kwargs)
    rng = np.random.default_rng(0)
    _, info = env.reset(seed=0)
    env.step(int(np.flatnonzero(info["action_mask"])[0]))  # warm-up: compile or load the kernels
    _, info = env.reset(seed=1)
    u = rng.random(steps)
    t0 = time.perf_counter()
    for k in range(steps):
        valid = np.flatnonzero(info["action_mask"])
        _, _, term, trunc, info = env.step(valid[int(u[k] * len(valid))])
        if term or trunc:
            _, info = env.reset()
    return steps / (time.perf_counter() - t0)


def vector(n: int, steps: int, **kwargs) -> float:
    venv = gym.make_vec("servegym/Route-v0", num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
    rng = np.random.default_rng(0)
    _, info = venv.reset(seed=0)
    venv.step(info["action_mask"].argmax(1))  # warm-up
    _, info = venv.reset(seed=1)
    t0 = time.perf_counter()
    for _ in range(steps):
        mask = info["action_mask"]
        # argmax of uniform noise over the valid entries: a uniform valid action per sub-env
        _, _, _, _, info = venv.step((rng.random(mask.shape) * mask).argmax(1))
    return n * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tenth of the steps")
    args = ap.parse_args()
    scale = 0.1 if args.quick else 1.0
    s_steps = int(200_000 * scale)
    v_steps = int(4_000 * scale)
    out = {
        "route_single_steps_per_s": round(single(s_steps)),
        "route_single_no_info_steps_per_s": round(single(s_steps, info_features=False)),
        "route_vector64_steps_per_s": round(vector(64, v_steps)),
        "route_vector64_no_info_steps_per_s": round(vector(64, v_steps, info_features=False)),
        "route_vector64_parallel_steps_per_s": round(vector(64, v_steps, parallel=True)),
        "numba_threads": numba.get_num_threads(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
