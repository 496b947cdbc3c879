"""Heuristic scheduling rules, each written once as a scoring rule over candidate features.

The simulator core calls these for every decision the caller does not control, and the baseline agents in
``baselines/`` call the very same functions on the features an env exposes. Lower score wins; ties go to the
lower request id (arrival order) or the lower replica index, so every rule is deterministic.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from servegym.envs.rules import ADMISSION, BATCHING, ROUTING, SCALING, ids

# The rules' ids, from their tables in envs/rules.py (numba freezes these module globals as constants).
BATCHING_IDS = ids(BATCHING)
ROUTING_IDS = ids(ROUTING)
SCALING_IDS = ids(SCALING)
ADMISSION_IDS = ids(ADMISSION)

BATCH_FCFS = BATCHING_IDS["fcfs"]
BATCH_EDF = BATCHING_IDS["edf"]
BATCH_SJF = BATCHING_IDS["sjf"]
BATCH_VTC = BATCHING_IDS["vtc"]
BATCH_WFS = BATCHING_IDS["wfs"]
BATCH_TIER = BATCHING_IDS["tier_priority"]
BATCH_SESSION_EDF = BATCHING_IDS["session_edf"]
BATCH_SESSION_LAS = BATCHING_IDS["session_las"]
BATCH_WSC = BATCHING_IDS["wsc"]

ROUTE_RR = ROUTING_IDS["round_robin"]
ROUTE_RANDOM = ROUTING_IDS["random"]
ROUTE_JSQ = ROUTING_IDS["jsq"]
ROUTE_LOR = ROUTING_IDS["lor"]
ROUTE_LEAST_KV = ROUTING_IDS["least_kv"]
ROUTE_P2C = ROUTING_IDS["p2c"]
ROUTE_PREFIX = ROUTING_IDS["prefix_affinity"]
ROUTE_COST = ROUTING_IDS["cost_aware"]
ROUTE_SESSION = ROUTING_IDS["session_affinity"]
ROUTE_SPLITWISE = ROUTING_IDS["splitwise"]
ROUTE_MOONCAKE = ROUTING_IDS["mooncake"]

SCALE_STATIC = SCALING_IDS["static"]
SCALE_REACTIVE = SCALING_IDS["reactive"]
SCALE_TARGET = SCALING_IDS["target_util"]
SCALE_FORECAST = SCALING_IDS["forecast"]
SCALE_REPLACE = SCALING_IDS["reactive_replace"]
SCALE_SPOT_MIX = SCALING_IDS["spot_mix"]

ADMIT_ALL = ADMISSION_IDS["admit_all"]
ADMIT_RPM = ADMISSION_IDS["rpm"]
ADMIT_TPM = ADMISSION_IDS["tpm"]
ADMIT_FAIRSERVE = ADMISSION_IDS["fairserve"]
# admission verdicts (envs/sim/state.py AD_*; repeated here as literals so this module keeps its imports)
_AD_ADMIT, _AD_REJECT = 0, 2

# Tier priority (and a session's calls made) must dominate any arrival time; 1e12 s is ~31,000 years.
_TIER_STRIDE = 1e12
# Prefix hits dominate load in prefix-affinity routing; load (< 1e6 outstanding requests) breaks ties.
_PREFIX_STRIDE = 1e6
# A secondary key that cannot outweigh one unit of the primary (running sequences are < 1e6).
_TIE = 1e-6
# Cost-aware routing: cost ($/replica-hour or $/(req/s)-hour, < 1e6) dominates load (< 1e6 outstanding
# requests), and any replica predicted to meet the SLO beats every replica that is not.
_PRICE_STRIDE = 1e6
_NO_SLO = 1e15
# Kubernetes HPA's default tolerance (--horizontal-pod-autoscaler-tolerance): no change within 10% of target.
_HPA_TOLERANCE = 0.1


@njit(cache=True, inline="always")
def batch_score(
    policy: int,
    arrival: float,
    deadline: float,
    prompt_tokens: int,
    tier: int,
    tenant_counter: float,
    tenant_weight: float,
    session_deadline: float,
    session_step: int,
) -> float:
    """Admission priority of one waiting request (lower is admitted first).

    ``deadline`` is the request's next deadline: the first-token deadline for interactive requests, the
    completion deadline for batch ones. ``tenant_counter`` is the VTC virtual token counter of its tenant
    (Sheng et al., OSDI'24: 1 per input token, 2 per output token served). For a step of an agentic
    session, ``session_deadline`` is the session's end-to-end deadline (its first step's arrival plus the
    tenant's session SLO; inf otherwise) and ``session_step`` the LLM calls the session made before this one.

    The two session rules need no clairvoyance (a session's remaining steps are unknown to a real server):
    ``session_edf`` orders by the least session slack, i.e. the earliest session deadline (a request outside
    a session, or without a session SLO, keeps its own deadline); ``session_las`` is Autellix's program-level
    least-attained-service (Luo et al., 2025) with calls as the unit of service: the session that has made
    the fewest calls first, then arrival order, which favours short sessions without knowing their length.
    """
    if policy == BATCH_EDF:
        return deadline
    if policy == BATCH_SESSION_EDF:
        return session_deadline if session_deadline < np.inf else deadline
    if policy == BATCH_SESSION_LAS:
        return session_step * _TIER_STRIDE + arrival
    if policy == BATCH_SJF:
        return float(prompt_tokens)
    if policy == BATCH_VTC:
        return tenant_counter
    if policy == BATCH_WFS or policy == BATCH_WSC:
        # WSC is WFS over FairServe's weights: in a scenario with applications, a user's tenant weight is its
        # application's expected service per application request (envs/workloads/applications.py), and its
        # VTC counter already counts every LLM call of its application requests
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


@njit(cache=True, inline="always")
def session_route_score(is_home: bool, load: int, max_load: float) -> float:
    """Session-affinity routing with a load-aware fallback (lower wins).

    A session's step goes back to its home replica, the one that served its previous step and so holds the
    session's context in its prefix cache, unless that replica has more than ``max_load`` outstanding
    requests (waiting + running); otherwise, and for requests outside a session, the least-loaded replica.
    """
    if is_home and load <= max_load:
        return -1.0
    return float(load)


@njit(cache=True, inline="always")
def phase_route_score(is_mixed: bool, load: int, overflow: int) -> float:
    """Splitwise's assignment of one phase (Patel et al., ISCA'24, section IV-B), lower wins.

    Each phase joins the shortest queue among the replicas of its own role (prefill replicas for a new
    request, decode replicas for a prefilled one); ``load`` is the candidate's outstanding requests (waiting,
    running, and KV caches arriving). A mixed replica is the overflow: it wins only when every replica of
    the phase's role has more than ``overflow`` requests beyond it. With no role pools (colocated serving)
    every candidate is mixed and this is plain join-the-shortest-queue.
    """
    if is_mixed:
        return float(load + overflow) + _TIE
    return float(load)


@njit(cache=True, inline="always")
def prefill_route_score(queued_prompt_tokens: int, uncached_prompt_tokens: int) -> float:
    """Mooncake's cache-aware prefill selection (Qin et al., FAST'25, section 5: the Conductor), lower wins.

    Mooncake picks the prefill instance with the least estimated time to first token: the queueing time of
    the prompts already waiting there plus the prefill of this request's tokens that the instance does not
    hold in its prefix cache. Prefill time is close to linear in tokens at the prompt lengths that matter, so
    we compare tokens: the prompt tokens still to prefill on the replica (waiting and running) plus this
    request's uncached prompt tokens. Mooncake also weighs the KV transfer of a remote prefix hit from
    another instance's cache; our prefix caches are per replica, so a hit elsewhere is a miss here.
    """
    return float(queued_prompt_tokens + uncached_prompt_tokens)


@njit(cache=True, inline="always")
def replica_cost(price_per_gpu_hour: float, tp: int, capacity_rps: float) -> float:
    """What the cost-aware router minimizes: $ per replica-hour, per request/s of capacity when known.

    A faster GPU can cost more per hour and less per request (Llama-2-70B: an H100 replica serves ~2.5x the
    requests of an A100 one at ~1.9x the price), so with ``capacity_rps`` (NaN: unknown) the router compares
    the cost of serving a request, not of renting the replica.
    """
    per_hour = price_per_gpu_hour * tp
    if capacity_rps == capacity_rps and capacity_rps > 0.0:
        return per_hour / capacity_rps
    return per_hour


@njit(cache=True, inline="always")
def cost_route_score(
    replica_cost: float,
    queue_len: int,
    running: int,
    kv_frac: float,
    max_queue: int,
    max_kv: float,
) -> float:
    """Cost-aware routing for heterogeneous pools: the cheapest replica predicted to meet the SLO.

    A replica is predicted to meet the SLO when at most ``max_queue`` requests wait there and its KV cache is
    at most ``max_kv`` full (the scenario's ``cost_aware_max_kv``). vLLM-style continuous batching admits a
    request at the next iteration whenever the sequence limit, the token budget and the KV cache allow, so a
    short queue predicts a TTFT of about one prefill; the KV fill stands for the batch size, which sets the
    decode iteration time and so the TPOT. Among such replicas the cheapest per replica-hour wins, then the
    least loaded; if none qualifies, the least loaded replica anywhere (least outstanding requests).
    ``replica_cost`` comes from ``replica_cost()``.
    """
    load = float(queue_len + running)
    if queue_len <= max_queue and kv_frac <= max_kv:
        return replica_cost * _PRICE_STRIDE + load
    return _NO_SLO + load


@njit(cache=True)
def reactive_scale_delta(util: float, up: float, down: float, n_up: int, n_min: int, n_max: int) -> int:
    """SageServe's reactive rule: one more replica above ``up`` utilization, one fewer below ``down``."""
    if util > up and n_up < n_max:
        return 1
    if util < down and n_up > n_min:
        return -1
    return 0


@njit(cache=True)
def holt_update(level: float, trend: float, x: float, alpha: float, beta: float) -> tuple[float, float]:
    """One step of Holt's linear (double exponential) smoothing of a series; NaN level = first sample."""
    if level != level:
        return x, 0.0
    new_level = alpha * x + (1.0 - alpha) * (level + trend)
    return new_level, beta * (new_level - level) + (1.0 - beta) * trend


@njit(cache=True)
def holt_forecast(level: float, trend: float, horizon_intervals: float) -> float:
    """Holt's forecast ``horizon_intervals`` ahead (never negative); 0 before the first sample."""
    if level != level:
        return 0.0
    return max(level + trend * horizon_intervals, 0.0)


@njit(cache=True)
def pool_share(routed: float, model_routed: float, capacity_up: float, model_capacity_up: float) -> float:
    """The share of its model's demand a pool serves (pools of one model split it; a lone pool serves all).

    The pool's share of the requests routed to the model's pools in the last interval, so that the scaler
    follows the router (a cost-aware router concentrates load on the cheaper pool, which then grows); with
    nothing routed, its share of the capacity up (replicas up x capacity); with nothing up, all of it.
    """
    if model_routed > 0.0:
        return routed / model_routed
    if model_capacity_up > 0.0:
        return capacity_up / model_capacity_up
    return 1.0


@njit(cache=True)
def demand_replicas(
    model_rate_per_s: float,
    share: float,
    queued: int,
    interval_s: float,
    capacity_rps: float,
    target_util: float,
) -> float:
    """Replicas a pool needs for its share of its model's arrival rate plus its backlog, at ``target_util``.

    Load is measured in requests per second against the per-replica capacity ``capacity_rps`` (the highest
    rate one replica sustains within the SLO, e.g. from the goodput sweep): a signal linear in load, unlike
    KV utilization, which stays low until a replica nears saturation and then jumps. The pool's ``queued``
    waiting requests are to be cleared within one control interval.
    """
    return (share * model_rate_per_s + queued / interval_s) / (target_util * capacity_rps)


@njit(cache=True)
def sized_scale_delta(desired: float, n_up: int, n_min: int, n_max: int, cooling: bool) -> int:
    """Replica delta towards ``desired`` replicas: up at once, down by one per tick and not while ``cooling``.

    Kubernetes HPA's tolerance leaves the pool alone while ``desired`` is within 10% of the replicas up
    (active or starting). Scale-down is damped: one replica per control tick, none during the cooldown after
    a scale-up (HPA's scale-down stabilization window).
    """
    if n_up > 0 and abs(desired / n_up - 1.0) <= _HPA_TOLERANCE:
        return 0
    want = min(max(int(np.ceil(desired - 1e-9)), n_min), n_max)
    if want > n_up:
        return want - n_up
    if want < n_up and not cooling:
        return -1
    return 0


@njit(cache=True)
def replace_scale_delta(reactive_delta: int, lost: int, n_up: int, n_max: int) -> int:
    """Reactive scaling that replaces lost capacity: every replica of the pool that failed or got a spot
    reclaim warning during the last interval is replaced at once (a new start, with its cold start), on top
    of the reactive rule's scale-up; a scale-down waits for a tick without losses."""
    if lost > 0:
        return min(max(reactive_delta, 0) + lost, n_max - n_up)
    return reactive_delta


@njit(cache=True)
def spot_mix_rate(
    spot: bool, interactive_rate: float, total_rate: float, n_same_class: int, other_class: bool
) -> float:
    """On-demand/spot mix: the request rate one pool is sized for.

    A floor of on-demand capacity covers the interactive tier's demand, so that a reclaim never leaves
    latency-critical traffic without servers; spot capacity serves the rest (the batch tier and the
    interactive overflow). Pools of one class and model split their class's rate evenly. When a model has
    pools of only one class, that class serves all of its demand.
    """
    if spot:
        rate = total_rate - interactive_rate if other_class else total_rate
    else:
        rate = interactive_rate if other_class else total_rate
    return max(rate, 0.0) / max(n_same_class, 1)


@njit(cache=True, inline="always")
def admission_cost(policy: int, prompt_tokens: int, output_tokens: int, call_index: int) -> float:
    """What one LLM call costs its user's bucket under an admission rule.

    rpm counts every LLM call; tpm its prompt and output tokens; FairServe counts application requests, so the
    first call of one costs 1 and its later calls (``call_index`` > 0: the steps of an admitted agentic
    request) cost nothing: throttling mid-request would waste the calls already served.
    """
    if policy == ADMIT_RPM:
        return 1.0
    if policy == ADMIT_TPM:
        return float(prompt_tokens + output_tokens)
    if policy == ADMIT_FAIRSERVE:
        return 1.0 if call_index == 0 else 0.0
    return 0.0


@njit(cache=True, inline="always")
def bucket_refill(level: float, since: float, rate: float, burst: float, now: float) -> float:
    """A token bucket's level at ``now``: ``level`` at time ``since``, refilled at ``rate`` up to ``burst``
    (the user's limit of an admission rule; the core's bucket and Admit-v1's per-rule buckets both)."""
    return min(burst, level + rate * (now - since))


@njit(cache=True, inline="always")
def admission_verdict(policy: int, bucket: float, cost: float, overloaded: bool) -> int:
    """Admit (0) or reject (2) an arriving request: its user's bucket must hold its cost, under the fixed
    limits always, under FairServe's only while the system is overloaded. Built-in rules never defer."""
    if policy == ADMIT_ALL or cost == 0.0:
        return _AD_ADMIT
    if policy == ADMIT_FAIRSERVE and not overloaded:
        return _AD_ADMIT
    return _AD_ADMIT if bucket >= cost else _AD_REJECT
