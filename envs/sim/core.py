"""The event loop of the simulator and its decision interface.

``advance(st, t_limit)`` runs the simulation until the next decision that the caller asked to control
(``cnt[K_CTRL_ROUTE|K_CTRL_BATCH|K_CTRL_SCALE]``), until ``t_limit`` or until the horizon, and returns an event
code. Decisions the caller does not control are taken inside, by the built-in rules of ``policies.py``.
The caller answers a pending decision with ``apply_route``, ``apply_admit``/``apply_start`` or ``apply_scale``
and calls ``advance`` again. Events at the same instant are handled in a fixed order (replicas by index, then
arrivals, then the scaling tick), so a run is a pure function of the state it starts from.
"""

from __future__ import annotations

import numpy as np

from servegym.envs.sim.admission import builtin_verdict, next_deferred, pop_deferred, settle
from servegym.envs.sim.disagg import (
    complete_transfer,
    dispatch_transfers,
    join_arrived,
    next_transfer,
    start_transfer,
)
from servegym.envs.sim.faults import handle_fault, next_fault
from servegym.envs.sim.finish import drop_request
from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.lifecycle import activate
from servegym.envs.sim.queues import (
    expire_and_pick,
    expire_queues,
    hold_pop,
    hold_push,
    queue_remove_at,
    sample_service_gap,
)
from servegym.envs.sim.replica import (
    admit,
    admit_builtin,
    admit_chunk,
    budget_left,
    complete_iteration,
    has_prefill,
    launch,
    prepare_running,
)
from servegym.envs.sim.routing import (
    builtin_route,
    enqueue,
    fits_any_pool,
    n_candidates,
    pending_allowed,
    retry_held,
)
from servegym.envs.sim.scaling import builtin_scale, roll_pool_stats, scale_pool
from servegym.envs.sim.sessions import next_release, take_released
from servegym.envs.sim.state import (
    C_HORIZON,
    C_MAX_WAIT,
    C_NEXT_FAULT,
    C_NEXT_TICK,
    C_NOW,
    C_TICK_S,
    EV_ADMIT,
    EV_BATCH,
    EV_DONE,
    EV_ROUTE,
    EV_SCALE,
    EV_TIME,
    K_ADMISSION,
    K_CTRL_ADMIT,
    K_CTRL_BATCH,
    K_CTRL_ROUTE,
    K_CTRL_SCALE,
    K_EVENTS,
    K_FORM_REPLICA,
    K_HOLD_N,
    K_HOLD_RETRY,
    K_N_OPEN,
    K_NEXT_ARRIVAL,
    K_PENDING_ADMIT,
    K_PENDING_ROUTE,
    K_PENDING_SCALE,
    K_ROUTE_PHASE,
    K_TICKS,
    K_XFER_RETRY,
    K_XW_N,
    PF_ARR_INTER,
    PF_ARRIVALS,
    PI_ROLE,
    PI_SCALE_DELTA,
    RF_ARRIVAL,
    RF_VISIBLE,
    RI_MODEL,
    RI_REPLICA,
    RI_STATUS,
    RI_TIER,
    ROLE_PREFILL,
    RS_STARTING,
    ST_INFLIGHT,
    TIER_INTERACTIVE,
    XF_NEXT,
    XI_BUSY,
    XI_NRDY,
    XI_POOL,
    XI_QN,
    XI_STATE,
)

INF = np.inf


# ---------------------------------------------------------------- batching decisions


@hot
def waiting_at(st, r, i):
    for k in range(st.repi[XI_QN, r]):
        if st.queue[r, k] == i:
            return k
    return -1


@kernel
def any_admissible(st, r, now):
    expire_and_pick(st, r, now)  # drops expired requests so the caller never sees them
    budget = budget_left(st, r)
    pf = has_prefill(st, r)
    for k in range(st.repi[XI_QN, r]):
        i = st.queue[r, k]
        if st.rqf[RF_VISIBLE, i] <= now and admit_chunk(st, r, i, budget, pf) > 0:
            return True
    return False


# ---------------------------------------------------------------- the event loop


# no decision pending (event codes are >= 0)
NO_EVENT = -1


@hot
def pending_event(st, now):
    """The event code of a decision the caller still owes, or NO_EVENT; finishes a batch formation the caller
    left with nothing admissible, and retries held requests when a replica became available."""
    if st.cnt[K_PENDING_ADMIT] >= 0:
        return EV_ADMIT
    if st.cnt[K_PENDING_ROUTE] >= 0:
        return EV_ROUTE
    if st.cnt[K_PENDING_SCALE]:
        return EV_SCALE
    fr = st.cnt[K_FORM_REPLICA]
    if fr >= 0:
        if any_admissible(st, fr, now):
            return EV_BATCH
        launch(st, fr, now)
        st.cnt[K_FORM_REPLICA] = -1
    # KV caches waiting for a decode replica (disagg.py): dispatch them when decode capacity may have freed
    if st.cnt[K_XW_N] > 0 and (st.cnt[K_XFER_RETRY] or st.cnt[K_HOLD_RETRY]):
        if dispatch_transfers(st, now) == EV_ROUTE:
            return EV_ROUTE
    if st.cnt[K_HOLD_RETRY]:
        if retry_held(st, now) == EV_ROUTE:
            return EV_ROUTE
    return NO_EVENT


@hot
def next_arrival(st, n_open):
    """(time, released) of the next arrival: the next open-loop request, or a session step released by its
    predecessor (sessions.py) when that comes strictly earlier (at equal times the open-loop arrival goes first)."""
    na = st.cnt[K_NEXT_ARRIVAL]
    t_arr = st.rqf[RF_ARRIVAL, na] if na < n_open else INF
    t_rel = next_release(st)
    released = t_rel < t_arr
    if released:
        t_arr = t_rel
    return t_arr, released


@hot
def next_replica_event(st, n_rep):
    """(replica, time) of the earliest replica event (lowest index on ties); (-1, inf) when none."""
    r_min = -1
    t_rep = INF
    for r in range(n_rep):
        if st.repf[XF_NEXT, r] < t_rep:
            t_rep = st.repf[XF_NEXT, r]
            r_min = r
    return r_min, t_rep


@hot
def on_fault(st, t):
    rf, tf = next_fault(st)
    if tf <= t:
        handle_fault(st, rf, t)
        next_fault(st)


@hot
def on_replica_event(st, r, t):
    """Replica r's cold start ended or its iteration completed: form (or hand the caller) its next batch."""
    st.repf[XF_NEXT, r] = INF
    if st.repi[XI_STATE, r] == RS_STARTING:
        activate(st, r, t)
        st.cnt[K_HOLD_RETRY] = 1
        return
    if st.repi[XI_BUSY, r]:
        complete_iteration(st, r, t)
    if st.repi[XI_NRDY, r] > 0:  # KV caches that arrived during the iteration join the decode set
        join_arrived(st, r)
    # a decode-capable replica's iteration may have freed decode capacity
    if st.cnt[K_XW_N] > 0 and st.pooli[PI_ROLE, st.repi[XI_POOL, r]] != ROLE_PREFILL:
        st.cnt[K_XFER_RETRY] = 1
    budget = prepare_running(st, r, t)
    if st.cnt[K_CTRL_BATCH]:
        st.cnt[K_FORM_REPLICA] = r
        return
    admit_builtin(st, r, budget, t)
    launch(st, r, t)


@hot
def route_arrival(st, i, t):
    """Route arrived request i (or hold it for lack of an active replica). Returns EV_ROUTE when the caller
    must route it, else NO_EVENT."""
    if st.cnt[K_CTRL_ROUTE]:
        if n_candidates(st, i) == 0:
            hold_push(st, i, t)
        else:
            st.cnt[K_PENDING_ROUTE] = i
            return EV_ROUTE
    else:
        r = builtin_route(st, i)
        if r < 0:
            hold_push(st, i, t)
        else:
            enqueue(st, i, r, t)
    return NO_EVENT


@hot
def on_arrival(st, t, released):
    """A request arrives: drop it if no pool could ever serve it, else present it to admission (when on) and
    route it. Returns EV_ADMIT or EV_ROUTE when the caller owes that decision, else NO_EVENT."""
    if released:
        i = take_released(st, t)
    else:
        i = st.cnt[K_NEXT_ARRIVAL]
        st.cnt[K_NEXT_ARRIVAL] = i + 1
    st.rqi[RI_STATUS, i] = ST_INFLIGHT
    st.poolf[PF_ARRIVALS, st.rqi[RI_MODEL, i]] += 1.0  # demand per model, for the forecast scaler
    if st.rqi[RI_TIER, i] == TIER_INTERACTIVE:
        st.poolf[PF_ARR_INTER, st.rqi[RI_MODEL, i]] += 1.0  # the spot-mix scaler's on-demand floor
    st.rqf[RF_VISIBLE, i] = t  # a held request waits from its arrival (retry_held, finalize)
    if (i & 63) == 0:
        sample_service_gap(st)
    if not fits_any_pool(st, i):
        drop_request(st, i, t)
        return NO_EVENT
    return present(st, i, t)


@hot
def present(st, i, t):
    """Admission (admission.py) of request i, arrived or back from a deferral, then its routing."""
    if st.cnt[K_ADMISSION]:
        if st.cnt[K_CTRL_ADMIT]:
            st.cnt[K_PENDING_ADMIT] = i
            return EV_ADMIT
        if not settle(st, i, builtin_verdict(st, i, t), t):
            return NO_EVENT
    return route_arrival(st, i, t)


@hot
def on_deferred(st, t):
    """A deferred request is presented to admission again."""
    i = pop_deferred(st)
    st.rqf[RF_VISIBLE, i] = t
    return present(st, i, t)


@hot
def on_tick(st, t):
    """The control tick: expire waits, roll the demand statistics, and scale (or hand the caller the
    decision: returns EV_SCALE, else NO_EVENT)."""
    st.clock[C_NEXT_TICK] = t + st.clock[C_TICK_S]
    st.cnt[K_TICKS] += 1
    expire_queues(st, t)
    sample_service_gap(st)
    roll_pool_stats(st)
    if st.cnt[K_CTRL_SCALE]:
        st.cnt[K_PENDING_SCALE] = 1
        return EV_SCALE
    builtin_scale(st, t)
    return NO_EVENT


@kernel
def advance(st, t_limit):
    """Run until the next caller-controlled decision, ``t_limit`` or the horizon; return the event code."""
    n_open = st.cnt[K_N_OPEN]
    n_rep = st.repi.shape[1]
    while True:
        now = st.clock[C_NOW]
        ev = pending_event(st, now)
        if ev != NO_EVENT:
            return ev
        t_arr, released = next_arrival(st, n_open)
        r_min, t_rep = next_replica_event(st, n_rep)
        t_tick = st.clock[C_NEXT_TICK]
        t_fault = st.clock[C_NEXT_FAULT]
        t_xfer = next_transfer(st)  # KV transfers in flight (disagg.py); inf without disaggregation
        t_def = next_deferred(st)  # deferred requests (admission.py); inf without admission
        t = min(t_rep, t_arr, t_tick, t_fault, t_xfer, t_def)
        if t > st.clock[C_HORIZON]:
            st.clock[C_NOW] = max(now, min(st.clock[C_HORIZON], t_limit))
            return EV_DONE if t_limit >= st.clock[C_HORIZON] else EV_TIME
        if t > t_limit:
            st.clock[C_NOW] = max(now, t_limit)
            return EV_TIME
        st.clock[C_NOW] = t
        st.cnt[K_EVENTS] += 1
        # simultaneous events: faults first (rare: one comparison on the hot path), then KV transfers (so a
        # decode replica due at the same time sees the arrival), then deferred requests, then replicas by
        # index, then arrivals, then the control tick
        if t_fault <= t:
            on_fault(st, t)
        elif t_xfer <= t:
            complete_transfer(st, t)
        elif t_def <= t:
            ev = on_deferred(st, t)
            if ev != NO_EVENT:
                return ev
        elif r_min >= 0 and t_rep <= t_arr and t_rep <= t_tick:
            on_replica_event(st, r_min, t)
        elif t_arr <= t_tick:
            ev = on_arrival(st, t, released)
            if ev != NO_EVENT:
                return ev
        elif on_tick(st, t) == EV_SCALE:
            return EV_SCALE


# ---------------------------------------------------------------- answers to pending decisions


@kernel
def apply_route(st, r):
    """Route the pending request to replica r; returns False (and leaves it pending) if r cannot serve it."""
    i = st.cnt[K_PENDING_ROUTE]
    if i < 0 or r < 0 or r >= st.repi.shape[1] or not pending_allowed(st, r):
        return False
    st.cnt[K_PENDING_ROUTE] = -1
    if st.cnt[K_ROUTE_PHASE]:  # the decode phase: send the KV cache there (disagg.py)
        st.cnt[K_ROUTE_PHASE] = 0
        start_transfer(st, i, r, st.clock[C_NOW])
        st.cnt[K_XFER_RETRY] = 1  # the next waiting KV cache may go too
        return True
    enqueue(st, i, r, st.clock[C_NOW])
    return True


@kernel
def apply_admission(st, action):
    """Answer the pending admission decision: AD_ADMIT (then route it), AD_DEFER or AD_REJECT (state.py);
    returns False (and leaves it pending) for any other action."""
    i = st.cnt[K_PENDING_ADMIT]
    if i < 0 or action < 0 or action > 2:
        return False
    st.cnt[K_PENDING_ADMIT] = -1
    now = st.clock[C_NOW]
    if settle(st, i, action, now):
        route_arrival(st, i, now)  # a routing decision the caller owns stays pending (pending_event)
    return True


@kernel
def apply_admit(st, i):
    """Admit waiting request i into the batch being formed; returns False if it is not admissible."""
    r = st.cnt[K_FORM_REPLICA]
    now = st.clock[C_NOW]
    if r < 0 or i < 0 or i >= st.rqf.shape[1]:
        return False
    if st.rqi[RI_REPLICA, i] != r or st.rqi[RI_STATUS, i] != ST_INFLIGHT or st.rqf[RF_VISIBLE, i] > now:
        return False
    k = waiting_at(st, r, i)
    budget = budget_left(st, r)
    if k < 0 or admit_chunk(st, r, i, budget, has_prefill(st, r)) == 0:
        return False
    queue_remove_at(st, r, k)
    admit(st, r, i, budget, now)
    return True


@kernel
def apply_start(st):
    """Close admission and start the iteration of the replica being formed."""
    r = st.cnt[K_FORM_REPLICA]
    if r < 0:
        return False
    launch(st, r, st.clock[C_NOW])
    st.cnt[K_FORM_REPLICA] = -1
    return True


@kernel
def apply_scale(st):
    """Apply the caller's per-pool deltas (pooli[PI_SCALE_DELTA], clamped to [min, max]); clear the tick."""
    now = st.clock[C_NOW]
    for p in range(st.pooli.shape[1]):
        d = st.pooli[PI_SCALE_DELTA, p]
        if d != 0:
            scale_pool(st, p, d, now)
        st.pooli[PI_SCALE_DELTA, p] = 0
    st.cnt[K_PENDING_SCALE] = 0


@kernel
def finalize(st):
    """End of episode: drop every request whose wait is already past max_wait."""
    now = st.clock[C_NOW]
    max_wait = st.clock[C_MAX_WAIT]
    for _ in range(st.cnt[K_HOLD_N]):
        i = hold_pop(st)
        if now - st.rqf[RF_VISIBLE, i] > max_wait:
            drop_request(st, i, st.rqf[RF_VISIBLE, i] + max_wait)
        else:
            hold_push(st, i, now)
    expire_queues(st, now)


# ---------------------------------------------------------------- what the caller may choose from


@kernel
def route_mask(st, out):
    """out[r] = 1 where the pending request may be routed to replica r (in its decode phase: where its KV
    cache may go)."""
    i = st.cnt[K_PENDING_ROUTE]
    for r in range(st.repi.shape[1]):
        out[r] = 1 if (i >= 0 and pending_allowed(st, r)) else 0


@kernel
def batch_candidates(st, out):
    """Write the ids of the requests admissible into the batch being formed to ``out``; return how many."""
    r = st.cnt[K_FORM_REPLICA]
    if r < 0:
        return 0
    now = st.clock[C_NOW]
    budget = budget_left(st, r)
    pf = has_prefill(st, r)
    n = 0
    for k in range(st.repi[XI_QN, r]):
        i = st.queue[r, k]
        if n < out.shape[0] and st.rqf[RF_VISIBLE, i] <= now and admit_chunk(st, r, i, budget, pf) > 0:
            out[n] = i
            n += 1
    return n
