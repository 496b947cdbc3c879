"""Evaluate a policy on many seeds at once: one native vector env, one sub-env per seed, batched actions.

``run_vec_episodes(policy, env_id, scenario, seeds)`` plays one episode per seed in lockstep, asking the
policy for all sub-envs' actions in one ``act_batch`` call per step: a learned policy does one batched
forward pass per step instead of one per sub-env, which is what makes evaluating it cost about what a
heuristic costs. Sub-env j is reset exactly as ``env_runner.run_env_episode`` resets its single env for
``seeds[j]`` (``reset(seed=s, options={"seed": s})``), so each episode's metrics are the ones
``run_env_episode`` gives for that seed (tested), and a policy's per-env state is keyed by the sub-env index.

A sub-env whose episode ends early starts its next episode (the vector env autoresets) and keeps stepping
until the longest episode ends; those extra steps are discarded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import servegym.envs  # noqa: F401  (registers the servegym env ids)
from servegym.baselines.env_runner import fit_env_config, make_agent_env, needs_info_features, resolve_policy
from servegym.baselines.policy import Policy
from servegym.envs.scenario import Scenario


def make_vec_env(
    env_id: str, scenario: str | Path | Scenario, n: int, env_config: Mapping[str, Any] | None = None
) -> Any:
    cfg = dict(env_config or {})
    cfg["scenario"] = scenario if isinstance(scenario, Scenario) else str(scenario)
    return gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **cfg)


def run_vec_episodes(
    policy: Policy | str | Path,
    env_id: str,
    scenario: str | Path | Scenario,
    seeds: Sequence[int],
    env_config: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The metrics of one episode per seed (in ``seeds`` order)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        return []
    pol = resolve_policy(policy, scenario)
    cfg = dict(env_config or {})
    cfg.setdefault("info_features", needs_info_features(pol))
    space = fit_env_config(pol, cfg)
    venv = make_agent_env(
        pol, space, lambda: make_vec_env(env_id, scenario, len(seeds), cfg), env_id, scenario, cfg
    )
    # a policy's per-env state (BasePolicy.state) seeds from the reset seed and the sub-env index
    pol.reset(seed=seeds[0])
    obs, infos = venv.reset(seed=seeds, options={"seed": seeds})
    results: list[dict[str, Any] | None] = [None] * len(seeds)
    left = len(seeds)
    while left:
        obs, _, terminated, truncated, infos = venv.step(
            np.asarray(pol.act_batch(obs, infos)).reshape(venv.action_space.shape)
        )
        for j in np.flatnonzero(terminated | truncated):
            if results[j] is None:
                metrics = infos["final_info"]["metrics"]
                results[j] = {k: v[j].item() for k, v in metrics.items() if k[0] != "_"}
                left -= 1
    venv.close()
    return results  # type: ignore[return-value]
