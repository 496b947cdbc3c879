"""Heuristic baselines as agents, the evaluation harness and the goodput sweep (see docs/baselines.md)."""

from servegym.baselines.policy import BasePolicy, Policy, PolicyError
from servegym.baselines.registry import builtin_policies, list_policies, make_policy, register

__all__ = [
    "BasePolicy",
    "Policy",
    "PolicyError",
    "builtin_policies",
    "list_policies",
    "make_policy",
    "register",
]
