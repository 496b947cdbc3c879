"""Batching baselines: which waiting request joins the iteration being formed, or start it now.

Each rule is ``servegym.envs.sim.policies.batch_score`` -- the very function the core's built-in batcher uses -- applied
to the candidate features of ``info["batch"]``. The lowest score is admitted, ties to the lower request id
(arrival order), as in the core. With no admissible candidate the policy starts the iteration (action K).

One difference from the built-in batcher is inherent to the interface: the env offers only requests that
fit now, so a rule skips a request that does not fit where the core stops at it (vLLM's head-of-line
admission).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from servegym.baselines.policy import BasePolicy, PolicyError, feature, info_section
from servegym.envs.sim.policies import BATCHING_IDS, batch_score

# info["batch"] keys, in batch_score's argument order after the policy id
_FEATURES = (
    "arrival_s",
    "deadline_s",
    "prompt_tokens",
    "tier",
    "tenant_counter",
    "tenant_weight",
    "session_deadline_s",
    "session_step",
)


class BatchingRule(BasePolicy):
    """Admit the admissible candidate with the lowest ``batch_score`` under rule ``rule``."""

    decisions = ("batch",)

    def __init__(self, rule: str) -> None:
        super().__init__()
        if rule not in BATCHING_IDS:
            raise PolicyError(f"unknown batching rule {rule!r}; known: {sorted(BATCHING_IDS)}")
        self.name = rule
        self.rule_id = BATCHING_IDS[rule]

    def decide(self, obs: Any, info: Mapping[str, Any], st: dict[str, Any]) -> int:
        self.check_decision(info)
        sec = info_section(self.name, info, "batch")
        ids = feature(self.name, sec, "request_id", "batch").astype(np.int64)
        k_slots = ids.shape[0]
        mask = info.get("action_mask")
        valid = np.ones(k_slots, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)[:k_slots]
        cand = np.flatnonzero(valid)
        if cand.size == 0:
            return k_slots  # nothing admissible: start the iteration
        cols = [feature(self.name, sec, key, "batch") for key in _FEATURES]
        best, best_s, best_id = k_slots, np.inf, 0
        for k in cand:
            s = batch_score(
                self.rule_id,
                float(cols[0][k]),
                float(cols[1][k]),
                int(cols[2][k]),
                int(cols[3][k]),
                float(cols[4][k]),
                float(cols[5][k]),
                float(cols[6][k]),
                int(cols[7][k]),
            )
            if best == k_slots or s < best_s or (s == best_s and ids[k] < best_id):
                best, best_s, best_id = int(k), s, int(ids[k])
        return best
