"""Heuristic scheduling rules, each written once as a scoring rule over candidate features.

The simulator core calls these for every decision the caller does not control, and the baseline agents in
``baselines/`` call the very same functions on the features an env exposes. Lower score wins; ties go to the
lower request id (arrival order) or the lower replica index, so every rule is deterministic.
"""

from __future__ import annotations

import numpy as np
from numba import njit

BATCH_FCFS, BATCH_EDF, BATCH_SJF, BATCH_VTC, BATCH_WFS, BATCH_TIER = range(6)
BATCHING_IDS = {"fcfs": 0, "edf": 1, "sjf": 2, "vtc": 3, "wfs": 4, "tier_priority": 5}

ROUTE_RR, ROUTE_RANDOM, ROUTE_JSQ, ROUTE_LOR, ROUTE_LEAST_KV, ROUTE_P2C, ROUTE_PREFIX = range(7)
ROUTING_IDS = {
    "round_robin": 0,
    "random": 1,
    "jsq": 2,
    "lor": 3,
    "least_kv": 4,
    "p2c": 5,
    "prefix_affinity": 6,
}

SCALE_STATIC, SCALE_REACTIVE = range(2)
SCALING_IDS = {"static": 0, "reactive": 1}

# Tier priority must dominate any arrival time; 1e12 s is ~31,000 years of simulated time.
_TIER_STRIDE = 1e12
# Prefix hits dominate load in prefix-affinity routing; load (< 1e6 outstanding requests) breaks ties.
_PREFIX_STRIDE = 1e6
# A secondary key that cannot outweigh one unit of the primary (running sequences are < 1e6).
_TIE = 1e-6


@njit(cache=True, inline="always")
def batch_score(
    policy: int,
    arrival: float,
    deadline: float,
    prompt_tokens: int,
    tier: int,
    tenant_counter: float,
    tenant_weight: float,
) -> float:
    """Admission priority of one waiting request (lower is admitted first).

    ``deadline`` is the request's next deadline: the first-token deadline for interactive requests, the
    completion deadline for batch ones. ``tenant_counter`` is the VTC virtual token counter of its tenant
    (Sheng et al., OSDI'24: 1 per input token, 2 per output token served).
    """
    if policy == BATCH_EDF:
        return deadline
    if policy == BATCH_SJF:
        return float(prompt_tokens)
    if policy == BATCH_VTC:
        return tenant_counter
    if policy == BATCH_WFS:
        return tenant_counter / tenant_weight
    if policy == BATCH_TIER:
        return tier * _TIER_STRIDE + arrival
    return arrival  # FCFS


@njit(cache=True, inline="always")
def route_score(
    policy: int,
    queue_len: int,
    running: int,
    kv_frac: float,
    prefix_hit_blocks: int,
    rr_rank: int,
    rand: float,
) -> float:
    """Routing preference for one candidate replica (lower wins).

    ``rr_rank`` is the candidate's distance from the round-robin pointer; ``rand`` a uniform draw in [0, 1)
    for random routing, or, for power-of-two-choices, negative when the candidate is one of the two sampled.
    """
    if policy == ROUTE_RR:
        return float(rr_rank)
    if policy == ROUTE_RANDOM:
        return rand
    if policy == ROUTE_JSQ:
        # shortest waiting queue; among equal queues the one running fewer sequences
        return float(queue_len) + running * _TIE

    if policy == ROUTE_LOR:
        return float(queue_len + running)
    if policy == ROUTE_LEAST_KV:
        return kv_frac
    if policy == ROUTE_P2C:
        if rand >= 0.0:
            return np.inf
        return float(queue_len + running)
    # prefix affinity: the longest cached prefix, then the least outstanding work
    return -prefix_hit_blocks * _PREFIX_STRIDE + float(queue_len + running)


@njit(cache=True)
def reactive_scale_delta(util: float, up: float, down: float, n_up: int, n_min: int, n_max: int) -> int:
    """SageServe's reactive rule: one more replica above ``up`` utilization, one fewer below ``down``."""
    if util > up and n_up < n_max:
        return 1
    if util < down and n_up > n_min:
        return -1
    return 0
