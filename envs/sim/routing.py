"""Routing in the core: which replicas may take a request, the built-in routing rules, and sending a
request to a replica's queue (or holding it until one can take it).

The scoring functions are in policies.py; this module reads the state they score.
"""

from __future__ import annotations

import numpy as np

from servegym.envs.sim.disagg import (
    builtin_decode_route,
    can_decode,
    decode_fits,
    queued_prefill_tokens,
    takes_new_requests,
)
from servegym.envs.sim.finish import drop_request
from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.kv import blocks_for, kv_limit
from servegym.envs.sim.policies import (
    ROUTE_COST,
    ROUTE_MOONCAKE,
    ROUTE_P2C,
    ROUTE_PREFIX,
    ROUTE_RANDOM,
    ROUTE_RR,
    ROUTE_SESSION,
    ROUTE_SPLITWISE,
    cost_route_score,
    phase_route_score,
    prefill_route_score,
    replica_cost,
    route_score,
    session_route_score,
)
from servegym.envs.sim.prefix_cache import prefix_hits
from servegym.envs.sim.queues import hold_pop, hold_push, queue_push
from servegym.envs.sim.rng import rng_uniform
from servegym.envs.sim.state import (
    C_COST_MAX_KV,
    C_COST_MAX_QUEUE,
    C_MAX_WAIT,
    C_SESSION_MAX_LOAD,
    C_SPLITWISE_OVERFLOW,
    EV_DONE,
    EV_ROUTE,
    K_CTRL_ROUTE,
    K_FORM_REPLICA,
    K_HOLD_N,
    K_HOLD_RETRY,
    K_PENDING_ROUTE,
    K_ROUTE_PHASE,
    K_ROUTE_POLICY,
    K_RR,
    PF_CAPACITY,
    PF_PRICE,
    PF_ROUTED,
    PI_FIRST_REP,
    PI_MAX_CTX,
    PI_MODEL,
    PI_PREFIX,
    PI_REGION,
    PI_ROLE,
    PI_TP,
    PREFIX_BLOCK_TOKENS,
    RF_VISIBLE,
    RI_HOME,
    RI_MODEL,
    RI_OUTPUT,
    RI_PROMPT,
    RI_REGION,
    RI_REPLICA,
    ROLE_DECODE,
    ROLE_MIXED,
    ROLE_PREFILL,
    RS_ACTIVE,
    XF_NEXT,
    XI_BUSY,
    XI_KV_CAP,
    XI_KV_USED,
    XI_ND,
    XI_NPF,
    XI_POOL,
    XI_QN,
    XI_STATE,
)

INF = np.inf


@hot
def can_serve(st, r, i):
    """Replica r is active, serves request i's model, and could ever hold its whole context in KV."""
    if st.repi[XI_STATE, r] != RS_ACTIVE:
        return False
    if st.pooli[PI_MODEL, st.repi[XI_POOL, r]] != st.rqi[RI_MODEL, i]:
        return False
    if not takes_new_requests(st, r):  # a decode replica takes only KV caches (disagg.py)
        return False
    return blocks_for(st.rqi[RI_PROMPT, i] + st.rqi[RI_OUTPUT, i]) <= kv_limit(st, r)


@hot
def pending_allowed(st, r):
    """Replica r may take the pending routing decision: the new request (can_serve) or, in the decode phase
    of a disaggregated request, its KV cache (disagg.can_decode)."""
    i = st.cnt[K_PENDING_ROUTE]
    if st.cnt[K_ROUTE_PHASE]:
        return can_decode(st, r, i)
    return can_serve(st, r, i)


@kernel
def builtin_pending_route(st):
    """The built-in rule's answer to the pending routing decision, either phase (-1: none can take it)."""
    i = st.cnt[K_PENDING_ROUTE]
    if st.cnt[K_ROUTE_PHASE]:
        return builtin_decode_route(st, i)
    return builtin_route(st, i)


@hot
def fits_any_pool(st, i):
    """Whether some pool serving i's model could hold it when up and within its context (else it can never
    be served)."""
    ctx = st.rqi[RI_PROMPT, i] + st.rqi[RI_OUTPUT, i]
    need = blocks_for(ctx)
    for p in range(st.pooli.shape[1]):
        if (
            st.pooli[PI_MODEL, p] == st.rqi[RI_MODEL, i]
            and st.pooli[PI_ROLE, p] != ROLE_DECODE  # where it can be prefilled (decode_fits: decoded)
            and need <= kv_limit(st, st.pooli[PI_FIRST_REP, p])
            and ctx <= st.pooli[PI_MAX_CTX, p]  # the model's context (timing v1; no limit in v0)
            and (st.pooli[PI_ROLE, p] != ROLE_PREFILL or decode_fits(st, i))
        ):
            return True
    return False


@hot
def n_candidates(st, i):
    n = 0
    for r in range(st.repi.shape[1]):
        if can_serve(st, r, i):
            n += 1
    return n


# A kernel, not inlined: it runs once per arrival, from four call sites, and inlining copied its ~200 lines
# (with the scoring rules) into each of them, a large share of the cold compile; the call costs < 4%.
@kernel
def builtin_route(st, i):
    """Pick a replica for request i with the scenario's routing rule, or -1 if none can serve it now."""
    policy = st.cnt[K_ROUTE_POLICY]
    ncand = 0
    rr = 0
    a = -1
    b = -1
    if policy == ROUTE_RR or policy == ROUTE_P2C:  # these rules need the candidate count first
        ncand = n_candidates(st, i)
        if ncand == 0:
            return -1
        if policy == ROUTE_RR:
            rr = st.cnt[K_RR] % ncand
            st.cnt[K_RR] += 1
        else:
            a = int(rng_uniform(st) * ncand)
            if ncand > 1:
                b = int(rng_uniform(st) * (ncand - 1))
                if b >= a:
                    b += 1
    best = -1
    best_s = INF
    k = 0
    for r in range(st.repi.shape[1]):
        if not can_serve(st, r, i):
            continue
        rand = 0.0
        if policy == ROUTE_RANDOM:
            rand = rng_uniform(st)
        elif policy == ROUTE_P2C:
            rand = -1.0 if (k == a or k == b) else 1.0
        hits = 0
        if policy == ROUTE_PREFIX:
            hits = prefix_hits(st, r, i, False)
        kv_frac = st.repi[XI_KV_USED, r] / st.repi[XI_KV_CAP, r]
        running = st.repi[XI_ND, r] + st.repi[XI_NPF, r]
        if policy == ROUTE_SPLITWISE:
            s = phase_route_score(
                st.pooli[PI_ROLE, st.repi[XI_POOL, r]] == ROLE_MIXED,
                st.repi[XI_QN, r] + running,
                int(st.clock[C_SPLITWISE_OVERFLOW]),
            )
        elif policy == ROUTE_MOONCAKE:
            p = st.repi[XI_POOL, r]
            cached = prefix_hits(st, r, i, False) * PREFIX_BLOCK_TOKENS if st.pooli[PI_PREFIX, p] else 0
            s = prefill_route_score(
                queued_prefill_tokens(st, r), st.rqi[RI_PROMPT, i] - min(cached, st.rqi[RI_PROMPT, i] - 1)
            )
        elif policy == ROUTE_SESSION:
            s = session_route_score(
                r == st.rqi[RI_HOME, i], st.repi[XI_QN, r] + running, st.clock[C_SESSION_MAX_LOAD]
            )
        elif policy == ROUTE_COST:
            p = st.repi[XI_POOL, r]
            s = cost_route_score(
                replica_cost(st.poolf[PF_PRICE, p], st.pooli[PI_TP, p], st.poolf[PF_CAPACITY, p]),
                st.repi[XI_QN, r],
                running,
                kv_frac,
                int(st.clock[C_COST_MAX_QUEUE]),
                st.clock[C_COST_MAX_KV],
            )
        else:
            rank = (k - rr) % ncand if policy == ROUTE_RR else 0
            s = route_score(policy, st.repi[XI_QN, r], running, kv_frac, hits, rank, rand)
        if s < best_s:
            best_s = s
            best = r
        k += 1
    return best


@hot
def enqueue(st, i, r, now):
    """Send request i to replica r: it joins r's queue after the inter-region latency."""
    st.rqi[RI_REPLICA, i] = r
    st.poolf[PF_ROUTED, st.repi[XI_POOL, r]] += 1.0  # the pool's share of its model's demand (scalers)
    vis = now + st.region_lat[st.rqi[RI_REGION, i], st.pooli[PI_REGION, st.repi[XI_POOL, r]]]
    st.rqf[RF_VISIBLE, i] = vis
    if not queue_push(st, r, i):
        drop_request(st, i, now)
        return
    if st.repi[XI_BUSY, r] == 0 and st.cnt[K_FORM_REPLICA] != r and vis < st.repf[XF_NEXT, r]:
        st.repf[XF_NEXT, r] = vis  # an idle replica wakes up when the request reaches it


@kernel
def retry_held(st, now):
    """Route requests held for lack of an active replica; returns EV_ROUTE when the caller must decide."""
    max_wait = st.clock[C_MAX_WAIT]
    for _ in range(st.cnt[K_HOLD_N]):
        i = hold_pop(st)
        # RF_VISIBLE: when it started waiting here (its arrival, or its eviction by a failure or reclaim)
        if now - st.rqf[RF_VISIBLE, i] > max_wait:
            drop_request(st, i, st.rqf[RF_VISIBLE, i] + max_wait)
            continue
        if n_candidates(st, i) == 0:
            hold_push(st, i, now)
            continue
        if st.cnt[K_CTRL_ROUTE]:
            st.cnt[K_PENDING_ROUTE] = i
            return EV_ROUTE
        enqueue(st, i, builtin_route(st, i), now)
    st.cnt[K_HOLD_RETRY] = 0
    return EV_DONE
