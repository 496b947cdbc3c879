"""Admission baselines for ``servegym/Admit-v1``: the core's built-in throttling rules as policies.

Each rule is ``servegym.envs.sim.policies.admission_verdict`` -- the very function the core's built-in
admission uses -- applied to ``info["admit"]``: the user's bucket level and the request's cost under that
rule, and the overload signal. So a rule run as a policy on the env reproduces the core running it built in
(tests/test_fairserve.py), and an RL agent on the same env starts from the same information.

These policies are not in the baseline registry (baselines/registry.py): its decision kinds are the ones
Cluster-v0 controls (envs/rules.py DECISION_KINDS), which admission is deliberately not part of.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from servegym.baselines.policy import PolicyError, unbatch_infos
from servegym.envs.rules import ADMISSION
from servegym.envs.sim.policies import ADMISSION_IDS, admission_verdict

RULE_NAMES = tuple(r.name for r in ADMISSION)


class AdmissionRule:
    """Admit or reject each arriving request as built-in admission rule ``rule`` would (never defers)."""

    def __init__(self, rule: str) -> None:
        if rule not in ADMISSION_IDS:
            raise PolicyError(f"unknown admission rule {rule!r}; known: {sorted(ADMISSION_IDS)}")
        self.name = rule
        self.rule_id = ADMISSION_IDS[rule]

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, obs: Any, info: Mapping[str, Any]) -> int:
        if info.get("decision") != "admit":
            raise PolicyError(
                f"{self.name}: info has no pending admission decision (decision {info.get('decision')!r})"
            )
        d = info["admit"]
        if self.name == "admit_all":
            return 0
        r = d["rules"][self.name]
        return int(
            admission_verdict(self.rule_id, float(r["bucket"]), float(r["cost"]), bool(d["overloaded"]))
        )

    def act_batch(self, obs: Any, infos: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> np.ndarray:
        n = len(next(iter(obs.values()))) if isinstance(obs, Mapping) else len(obs)
        return np.array([self.act(None, i) for i in unbatch_infos(infos, n)], dtype=np.int64)
