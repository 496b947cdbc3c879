"""SB3 training callbacks: TensorBoard charts of the episode metrics per rollout, and a curriculum over load.

The envs put the full metrics dict (envs/metrics.py) in the final ``info`` of every episode and the reward
components in every ``info``; this callback averages them over the episodes that ended during a rollout and
logs them under ``charts/`` and ``reward/``, beside SB3's own ``rollout/`` and ``train/`` scalars.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from servegym.agents import checkpoints as run
from servegym.agents.evaluation import EvalHistory, evaluate_policy
from servegym.baselines.registry import SB3Policy

# metric key in envs/metrics.py -> TensorBoard tag
CHART_KEYS = {
    "slo_attainment": "charts/slo_attainment",
    "goodput/req_per_s": "charts/goodput_req_per_s",
    "goodput/req_per_s_per_gpu": "charts/goodput_req_per_s_per_gpu",
    "cost/usd": "charts/cost_usd",
    "cost/usd_per_1m_output_tokens": "charts/cost_usd_per_1m_tokens",
    "ttft_s/p99": "charts/ttft_p99_s",
    "fairness/jain": "charts/fairness_jain",
    "dropped": "charts/drops",
    "drop_rate": "charts/drop_rate",
}


class ChartsCallback(BaseCallback):
    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._episodes: dict[str, list[float]] = defaultdict(list)
        self._components: dict[str, list[float]] = defaultdict(list)

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            metrics = info.get("metrics")
            if metrics:
                for key, tag in CHART_KEYS.items():
                    v = metrics.get(key)
                    if v is not None and math.isfinite(float(v)):
                        self._episodes[tag].append(float(v))
            for key, v in (info.get("reward_components") or {}).items():
                self._components[f"reward/{key}"].append(float(v))
        return True

    def _on_rollout_end(self) -> None:
        for tag, vals in self._episodes.items():
            self.logger.record(tag, float(np.mean(vals)))
        if self._episodes:
            self.logger.record("charts/episodes", len(next(iter(self._episodes.values()))))
        for tag, vals in self._components.items():
            self.logger.record(tag, float(np.sum(vals)) / max(1, self.training_env.num_envs))
        self._episodes.clear()
        self._components.clear()


class LoadCurriculumCallback(BaseCallback):
    """Set the training envs' offered load from the curriculum before each rollout (``charts/load``).

    ``load_at(timestep)`` gives the factor (``AgentConfig.load_at``) and ``set_load(factor)`` applies it to
    the training envs, which take it at their next episode.
    """

    def __init__(self, load_at: Callable[[int], float], set_load: Callable[[float], None]) -> None:
        super().__init__(0)
        self.load_at = load_at
        self.set_load = set_load
        self.load: float | None = None

    def _on_rollout_start(self) -> None:
        load = self.load_at(self.num_timesteps)
        if load != self.load:
            self.set_load(load)
            self.load = load
        self.logger.record("charts/load", load)

    def _on_step(self) -> bool:
        return True


class MetricEvalCallback(BaseCallback):
    """Every ``eval_freq`` calls: evaluate the deterministic policy on the held-out seeds
    (``agents/evaluation.py``), log ``eval/...``, print the numbers, and save ``best/best_model.zip`` (with
    the observation statistics it needs) only when the leaderboard's metric beats the best so far, including
    the best of the run a ``--resume`` continues."""

    def __init__(self, cfg, out, eval_freq: int, resume: bool = False) -> None:
        super().__init__(0)
        self.cfg, self.out, self.eval_freq = cfg, out, eval_freq
        self.history = EvalHistory(out, resume)

    def _on_step(self) -> bool:
        if self.n_calls % self.eval_freq == 0:
            self.evaluate()
        return True

    def evaluate(self) -> None:
        venv = self.training_env
        obs_norm = venv if isinstance(venv, VecNormalize) and venv.norm_obs else None
        ev = evaluate_policy(SB3Policy("eval", self.model, obs_norm), self.cfg)
        for key, v in ev.items():
            self.logger.record(f"eval/{key.replace('/', '_')}", v)
        if self.history.add(self.num_timesteps, ev):
            self.model.save(str(run.best_model(self.out)))
            if isinstance(venv, VecNormalize):
                venv.save(str(run.best_vecnormalize(self.out)))
