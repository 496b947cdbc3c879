"""Heuristic baselines as agents, the evaluation harness and the goodput sweep (see docs/baselines.md)."""

from baselines.policy import BasePolicy, Policy, PolicyError
from baselines.registry import builtin_policies, list_policies, make_policy, register

__all__ = [
    "BasePolicy",
    "Policy",
    "PolicyError",
    "builtin_policies",
    "list_policies",
    "make_policy",
    "register",
]
