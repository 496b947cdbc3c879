"""Replica failures and spot reclaims: rare events drawn from the core's random stream.

Each replica that is on carries at most one pending fault (``XF_FAULT`` time, ``XI_FKIND`` kind), drawn when
it turns on: a failure after an exponential time with the pool's MTBF and, for a spot pool, a reclaim warning
after an exponential time with its mean time between reclaims (the earlier of the two; exponentials are
memoryless, so the later draw is simply forgotten). The event loop keeps one lower bound of the next fault
time (``C_NEXT_FAULT``) and pays one comparison per event for the feature.

- **Failure**: every request on the replica goes back to be routed again: its running sequences lose their
  KV state (the tokens they had in KV are counted in ``RI_RECOMPUTED``, as vLLM's preemption by recompute
  counts them), its waiting queue is emptied, its prefix cache is lost. Billing stops; the replica is
  ``RS_FAILED`` for an exponential repair time, then off (the scaler may start it again, with a cold start).
- **Spot reclaim** (SageServe, Jaiswal et al. 2025: a 65 s warning before a low-priority VM is taken back):
  at the warning the replica drains (no new work; it may finish what it runs) and after ``reclaim_warning_s``
  it is forced off, evicting what is left as a failure does. A reclaimed replica is off at once: getting spot
  capacity back is a new VM start (the pool's cold start, SageServe's 155 s).

Evicted requests join the hold ring and are re-routed at once (``K_HOLD_RETRY``), by the built-in rule or by
the caller; nothing is lost silently: a request that cannot be held is dropped and counted.
"""

from __future__ import annotations

import numpy as np

from servegym.envs.sim.disagg import fail_transfers, holds_no_work
from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.kv import kv_touch
from servegym.envs.sim.lifecycle import turn_off
from servegym.envs.sim.queues import backlog_dec, hold_push
from servegym.envs.sim.rng import rng_uniform
from servegym.envs.sim.state import (
    C_NEXT_FAULT,
    FK_FAIL,
    FK_KILL,
    FK_NONE,
    FK_REPAIR,
    FK_WARN,
    K_DISAGG,
    K_EVICTED,
    K_FAILURES,
    K_HOLD_RETRY,
    K_RECLAIMS,
    LS_FREE,
    PF_LOST,
    PF_MTBF,
    PF_RECLAIM_MTBR,
    PF_RECLAIM_WARN,
    PF_REPAIR,
    PI_SPOT,
    RF_VISIBLE,
    RI_EVICT,
    RI_GENERATED,
    RI_OUTPUT,
    RI_RECOMPUTED,
    RI_TENANT,
    RS_ACTIVE,
    RS_DRAINING,
    RS_FAILED,
    RS_OFF,
    RS_STARTING,
    SL_CTX,
    SL_END,
    SL_IT0,
    SL_LEFT,
    SL_REQ,
    XF_FAULT,
    XF_NEXT,
    XI_BUSY,
    XI_DSUM,
    XI_FKIND,
    XI_IT,
    XI_KV_USED,
    XI_ND,
    XI_NDEC_ITER,
    XI_NFREE,
    XI_NPF,
    XI_POOL,
    XI_QN,
    XI_STATE,
)

INF = np.inf


@hot
def exp_draw(st, mean):
    """Exponential draw with the given mean from the core's stream (inverse CDF; 1 - u lies in (0, 1])."""
    return -mean * np.log(1.0 - rng_uniform(st))


@hot
def set_fault(st, r, t, kind):
    st.repf[XF_FAULT, r] = t
    st.repi[XI_FKIND, r] = kind
    if t < st.clock[C_NEXT_FAULT]:
        st.clock[C_NEXT_FAULT] = t


@kernel
def arm_faults(st, r, now):
    """Draw the first fault of replica r, which just turned on (no draw at all when its pool has none)."""
    p = st.repi[XI_POOL, r]
    t = INF
    kind = FK_NONE
    if st.poolf[PF_MTBF, p] > 0.0:
        t = now + exp_draw(st, st.poolf[PF_MTBF, p])
        kind = FK_FAIL
    if st.pooli[PI_SPOT, p] and st.poolf[PF_RECLAIM_MTBR, p] > 0.0:
        tw = now + exp_draw(st, st.poolf[PF_RECLAIM_MTBR, p])
        if tw < t:
            t = tw
            kind = FK_WARN
    if kind != FK_NONE:
        set_fault(st, r, t, kind)


@kernel
def arm_initial_faults(st):
    """At build: draw the faults of the replicas that start warm (in replica order, for determinism)."""
    for r in range(st.repi.shape[1]):
        if st.repi[XI_STATE, r] != RS_OFF:
            arm_faults(st, r, 0.0)


@hot
def evict_request(st, i, now):
    st.rqi[RI_EVICT, i] += 1
    st.cnt[K_EVICTED] += 1
    st.rqf[RF_VISIBLE, i] = now  # its wait for max_wait restarts, as after a preemption
    hold_push(st, i, now)


@kernel
def evict_all(st, r, now):
    """Send every request of replica r back for routing and reset the replica to empty (its KV is gone)."""
    if st.cnt[K_DISAGG]:
        fail_transfers(st, r, now)  # KV caches it sends or receives (disagg.py), before its slots are reset
    it = st.repi[XI_IT, r]
    n_slots = st.slot.shape[2]
    for k in range(n_slots):
        i = st.slot[SL_REQ, r, k]
        if i < 0:
            continue
        if st.slot[SL_LEFT, r, k] > 0:
            ctx = st.slot[SL_CTX, r, k]  # prefill chunks done; the iteration in progress is lost
        else:
            ctx = st.slot[SL_CTX, r, k] + it - st.slot[SL_IT0, r, k]
            st.rqi[RI_GENERATED, i] = st.rqi[RI_OUTPUT, i] - (st.slot[SL_END, r, k] - it)
        st.rqi[RI_RECOMPUTED, i] += ctx
        st.slot[SL_REQ, r, k] = -1
        evict_request(st, i, now)
    for k in range(st.repi[XI_QN, r]):
        i = st.queue[r, k]
        backlog_dec(st, st.rqi[RI_TENANT, i])
        evict_request(st, i, now)
    st.repi[XI_QN, r] = 0
    for k in range(n_slots):  # the free-slot stack as build_state lays it out: slot 0 popped first
        st.slot[LS_FREE, r, k] = n_slots - 1 - k
    st.repi[XI_NFREE, r] = n_slots
    st.repi[XI_ND, r] = 0
    st.repi[XI_NPF, r] = 0
    st.repi[XI_DSUM, r] = 0
    st.repi[XI_NDEC_ITER, r] = 0
    for b in range(st.repx.shape[1]):
        st.repx[r, b] = 0
    kv_touch(st, r, now)
    st.repi[XI_KV_USED, r] = 0
    for w in range(st.pc.shape[2]):
        st.pc[0, r, w] = -1
        st.pc[1, r, w] = 0
    st.repi[XI_BUSY, r] = 0
    st.repf[XF_NEXT, r] = INF
    st.cnt[K_HOLD_RETRY] = 1


@kernel
def next_fault(st):
    """(replica, time) of the earliest pending fault; (-1, inf) when none. Makes C_NEXT_FAULT exact."""
    best = -1
    t = INF
    for r in range(st.repi.shape[1]):
        if st.repf[XF_FAULT, r] < t:
            t = st.repf[XF_FAULT, r]
            best = r
    st.clock[C_NEXT_FAULT] = t
    return best, t


@kernel
def handle_fault(st, r, now):
    """Apply replica r's pending fault, due now."""
    p = st.repi[XI_POOL, r]
    kind = st.repi[XI_FKIND, r]
    st.repf[XF_FAULT, r] = INF
    st.repi[XI_FKIND, r] = FK_NONE
    if kind == FK_FAIL:
        st.cnt[K_FAILURES] += 1
        st.poolf[PF_LOST, p] += 1.0
        evict_all(st, r, now)
        turn_off(st, r, now)  # closes billing and up time
        st.repi[XI_STATE, r] = RS_FAILED
        set_fault(st, r, now + exp_draw(st, st.poolf[PF_REPAIR, p]), FK_REPAIR)
    elif kind == FK_REPAIR:
        st.repi[XI_STATE, r] = RS_OFF
    elif kind == FK_WARN:
        st.cnt[K_RECLAIMS] += 1
        st.poolf[PF_LOST, p] += 1.0
        s = st.repi[XI_STATE, r]
        if s == RS_STARTING:
            turn_off(st, r, now)  # reclaimed before it was ready: nothing to drain
        elif s == RS_ACTIVE or s == RS_DRAINING:
            st.repi[XI_STATE, r] = RS_DRAINING
            if st.repi[XI_BUSY, r] == 0 and holds_no_work(st, r):
                turn_off(st, r, now)
            else:
                set_fault(st, r, now + st.poolf[PF_RECLAIM_WARN, p], FK_KILL)
    elif kind == FK_KILL:
        evict_all(st, r, now)
        turn_off(st, r, now)


@hot
def reclaim_pending(st, r):
    """A draining replica under a reclaim warning: the scaler cannot take it back."""
    return st.repi[XI_FKIND, r] == FK_KILL
