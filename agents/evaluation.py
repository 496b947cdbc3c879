"""Held-out evaluation during training, shared by the SB3 and the native trainers.

The best model is chosen on what the leaderboard scores, the mean ``goodput/req_per_s`` of the
deterministic policy on the held-out eval seeds (not on an evaluation reward that need not agree with it),
each evaluation is printed and appended to ``eval/history.json``, and a resumed run reads that history back,
so its first evaluation competes with the best of the earlier run instead of overwriting it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from servegym.agents.config import AgentConfig
from servegym.baselines.vec_runner import run_vec_episodes

EVAL_METRIC = "goodput/req_per_s"  # the leaderboard's score (docs/leaderboard.md)
REPORTED = (EVAL_METRIC, "slo_attainment", "cost/usd", "ttft_s/p99")


def evaluate_policy(policy: Any, cfg: AgentConfig) -> dict[str, float]:
    """Means over ``cfg.eval_seeds`` of the reported metrics, all seeds in one batched vector env."""

    env_cfg = {**cfg.env_config, "info_features": False}
    runs = run_vec_episodes(policy, cfg.env_id, cfg.scenario, cfg.eval_seeds, env_cfg)
    return {k: float(np.mean([r[k] for r in runs])) for k in REPORTED}


class EvalHistory:
    """Every evaluation of a run (``eval/history.json``) and the best score so far."""

    def __init__(self, out: Path, resume: bool) -> None:
        self.file = out / "eval" / "history.json"
        self.rows: list[dict[str, float]] = []
        if resume and self.file.exists():
            self.rows = json.loads(self.file.read_text())
        self.best = max((r[EVAL_METRIC] for r in self.rows), default=-math.inf)

    def add(self, step: int, ev: dict[str, float], steps_per_s: float | None = None) -> bool:
        """Record an evaluation and print it; True when it is the best so far (then save the model)."""
        new_best = ev[EVAL_METRIC] > self.best
        if new_best:
            self.best = ev[EVAL_METRIC]
        self.rows.append({"step": step, **ev, "saved_as_best": new_best})
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self.file.write_text(json.dumps(self.rows, indent=1))
        speed = f"  {steps_per_s:,.0f} steps/s" if steps_per_s else ""
        print(
            f"step {step:>9,}  eval goodput {ev[EVAL_METRIC]:.3f} req/s  attainment {ev['slo_attainment']:.3f}  "
            f"cost ${ev['cost/usd']:.2f}  p99 TTFT {ev['ttft_s/p99']:.2f} s  "
            f"{'new best' if new_best else f'(best {self.best:.3f})'}{speed}",
            flush=True,
        )
        return new_best
