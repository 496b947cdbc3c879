"""Where requests wait: the hold ring (no replica can take them yet), each replica's waiting queue in
the batching rule's order, and the VTC backlog bookkeeping of the tenants waiting there.

The hold ring is the extra last row of ``st.queue``; a replica's waiting queue is its row, unordered: the
batching rule's best request is found by a scan (``expire_and_pick``) that also drops expired requests.
"""

from __future__ import annotations

import numpy as np

from servegym.envs.sim.finish import drop_request
from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.policies import BATCH_SESSION_EDF, BATCH_SESSION_LAS, batch_score
from servegym.envs.sim.state import (
    C_LAST_LEFT_COUNTER,
    C_MAX_GAP,
    C_MAX_WAIT,
    K_BATCH_POLICY,
    K_HOLD_HEAD,
    K_HOLD_N,
    RF_ARRIVAL,
    RF_DEADLINE,
    RF_TTFT_SLO,
    RF_VISIBLE,
    RI_FIRST,
    RI_PROMPT,
    RI_STEP,
    RI_TENANT,
    RI_TIER,
    TF_COUNTER,
    TF_SESSION_SLO,
    TF_WAITING,
    TF_WEIGHT,
    TIER_INTERACTIVE,
    XI_QN,
)

INF = np.inf


@kernel
def hold_push(st, i, now):
    row = st.queue.shape[0] - 1
    cap = st.queue.shape[1]
    n = st.cnt[K_HOLD_N]
    if n >= cap:
        drop_request(st, i, now)
        return
    st.queue[row, (st.cnt[K_HOLD_HEAD] + n) % cap] = i
    st.cnt[K_HOLD_N] = n + 1


@kernel
def hold_pop(st):
    row = st.queue.shape[0] - 1
    i = st.queue[row, st.cnt[K_HOLD_HEAD]]
    st.cnt[K_HOLD_HEAD] = (st.cnt[K_HOLD_HEAD] + 1) % st.queue.shape[1]
    st.cnt[K_HOLD_N] -= 1
    return i


# ---------------------------------------------------------------- tenants (VTC bookkeeping)


@hot
def backlog_inc(st, u):
    """A tenant joining the backlog has its counter lifted (VTC, Sheng et al. OSDI'24, Algorithm 2)."""
    if st.ten[TF_WAITING, u] == 0:
        lift = INF
        for v in range(st.ten.shape[1]):
            if v != u and st.ten[TF_WAITING, v] > 0 and st.ten[TF_COUNTER, v] < lift:
                lift = st.ten[TF_COUNTER, v]
        if lift == INF:
            lift = st.clock[C_LAST_LEFT_COUNTER]
        if st.ten[TF_COUNTER, u] < lift:
            st.ten[TF_COUNTER, u] = lift
    st.ten[TF_WAITING, u] += 1


@hot
def backlog_dec(st, u):
    st.ten[TF_WAITING, u] -= 1
    if st.ten[TF_WAITING, u] == 0:
        st.clock[C_LAST_LEFT_COUNTER] = st.ten[TF_COUNTER, u]


@kernel
def sample_service_gap(st):
    lo = INF
    hi = -INF
    for v in range(st.ten.shape[1]):
        if st.ten[TF_WAITING, v] > 0:
            c = st.ten[TF_COUNTER, v]
            lo = min(lo, c)
            hi = max(hi, c)
    if hi > lo and hi - lo > st.clock[C_MAX_GAP]:
        st.clock[C_MAX_GAP] = hi - lo


# ---------------------------------------------------------------- waiting queue


@hot
def queue_push(st, r, i):
    n = st.repi[XI_QN, r]
    if n >= st.queue.shape[1]:
        return False
    st.queue[r, n] = i
    st.repi[XI_QN, r] = n + 1
    backlog_inc(st, st.rqi[RI_TENANT, i])
    return True


@hot
def queue_remove_at(st, r, k):
    i = st.queue[r, k]
    last = st.repi[XI_QN, r] - 1
    st.queue[r, k] = st.queue[r, last]
    st.repi[XI_QN, r] = last
    backlog_dec(st, st.rqi[RI_TENANT, i])
    return i


@hot
def next_deadline(st, i):
    """The deadline admission order can still affect: first token for interactive, completion for batch."""
    if st.rqi[RI_TIER, i] == TIER_INTERACTIVE:
        return st.rqf[RF_ARRIVAL, i] + st.rqf[RF_TTFT_SLO, i]
    return st.rqf[RF_DEADLINE, i]


@hot
def session_deadline(st, i):
    """End-to-end deadline of request i's agentic session (its first step's arrival + the tenant's session
    SLO); inf outside a session or for a tenant without a session SLO."""
    f = st.rqi[RI_FIRST, i]
    if f < 0:
        return INF
    return st.rqf[RF_ARRIVAL, f] + st.ten[TF_SESSION_SLO, st.rqi[RI_TENANT, i]]


@hot
def request_batch_score(st, policy, i):
    """The batching rule's score of request i from the state (the env's candidate ranking uses it too)."""
    u = st.rqi[RI_TENANT, i]
    sdl = INF
    step = 0
    if policy == BATCH_SESSION_EDF or policy == BATCH_SESSION_LAS:  # spare the queue scans two loads
        sdl = session_deadline(st, i)
        step = st.rqi[RI_STEP, i]
    return batch_score(
        policy,
        st.rqf[RF_ARRIVAL, i],
        next_deadline(st, i),
        st.rqi[RI_PROMPT, i],
        st.rqi[RI_TIER, i],
        st.ten[TF_COUNTER, u],
        st.ten[TF_WEIGHT, u],
        sdl,
        step,
    )


@hot
def expire_and_pick(st, r, now):
    """Drop requests that waited past max_wait, and return the queue index of the best visible request.

    Returns -1 when no visible request waits. Ties in score go to the lower request id (arrival order).
    """
    policy = st.cnt[K_BATCH_POLICY]
    max_wait = st.clock[C_MAX_WAIT]
    best = -1
    best_s = INF
    best_id = 0
    k = 0
    while k < st.repi[XI_QN, r]:
        i = st.queue[r, k]
        vis = st.rqf[RF_VISIBLE, i]
        if vis > now:
            k += 1
            continue
        if now - vis > max_wait:
            queue_remove_at(st, r, k)
            drop_request(st, i, vis + max_wait)
            continue  # the swapped-in request now sits at k
        s = request_batch_score(st, policy, i)
        if s < best_s or (s == best_s and i < best_id):
            best_s = s
            best = k
            best_id = i
        k += 1
    return best


@kernel
def next_visible_time(st, r, now):
    nxt = INF
    for k in range(st.repi[XI_QN, r]):
        v = st.rqf[RF_VISIBLE, st.queue[r, k]]
        if now < v < nxt:
            nxt = v
    return nxt


@kernel
def expire_queues(st, now):
    """Drop every visible request that has waited past max_wait (run at each control tick, and at the end)."""
    max_wait = st.clock[C_MAX_WAIT]
    for r in range(st.repi.shape[1]):
        k = 0
        while k < st.repi[XI_QN, r]:
            i = st.queue[r, k]
            vis = st.rqf[RF_VISIBLE, i]
            if vis <= now and now - vis > max_wait:
                queue_remove_at(st, r, k)
                drop_request(st, i, vis + max_wait)
            else:
                k += 1
