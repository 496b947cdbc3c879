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
from numba import njit

from envs.sim.policies import (
    ROUTE_P2C,
    ROUTE_PREFIX,
    ROUTE_RANDOM,
    ROUTE_RR,
    reactive_scale_delta,
    route_score,
)
from envs.sim.replica import (
    activate,
    admit,
    admit_builtin,
    admit_chunk,
    blocks_for,
    complete_iteration,
    drop_request,
    expire_and_pick,
    has_prefill,
    kv_watermark,
    launch,
    prefix_hits,
    prepare_running,
    queue_push,
    queue_remove_at,
    sample_service_gap,
    start_drain,
    turn_on,
)
from envs.sim.state import (
    C_HORIZON,
    C_MAX_WAIT,
    C_NEXT_TICK,
    C_NOW,
    C_REACTIVE_DOWN,
    C_REACTIVE_UP,
    C_TICK_S,
    EV_BATCH,
    EV_DONE,
    EV_ROUTE,
    EV_SCALE,
    EV_TIME,
    K_CTRL_BATCH,
    K_CTRL_ROUTE,
    K_CTRL_SCALE,
    K_EVENTS,
    K_FORM_REPLICA,
    K_HOLD_HEAD,
    K_HOLD_N,
    K_HOLD_RETRY,
    K_NEXT_ARRIVAL,
    K_PENDING_ROUTE,
    K_PENDING_SCALE,
    K_ROUTE_POLICY,
    K_RR,
    K_SCALE_POLICY,
    K_TICKS,
    RS_ACTIVE,
    RS_DRAINING,
    RS_OFF,
    RS_STARTING,
    ST_INFLIGHT,
)

INF = np.inf


@njit(cache=True)
def rng_uniform(st):
    """xorshift64* (Vigna 2016): the core's single random stream, seeded from the scenario's generator."""
    x = st.rng[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    st.rng[0] = x
    return float((x * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


# ---------------------------------------------------------------- routing


@njit(cache=True, inline="always")
def can_serve(st, r, i):
    """Replica r is active, serves request i's model, and could ever hold its whole context in KV."""
    if st.rep_state[r] != RS_ACTIVE:
        return False
    p = st.rep_pool[r]
    if st.p_model[p] != st.r_model[i]:
        return False
    need = blocks_for(st.r_prompt[i] + st.r_output[i])
    return need <= st.rep_kv_cap[r] - kv_watermark(st, r)


@njit(cache=True)
def fits_any_pool(st, i):
    """Whether some replica of a pool serving i's model could hold it when up (else it can never be served)."""
    need = blocks_for(st.r_prompt[i] + st.r_output[i])
    for p in range(st.p_model.shape[0]):
        if st.p_model[p] == st.r_model[i]:
            r = st.p_first_rep[p]
            if need <= st.rep_kv_cap[r] - max(1, int(st.rep_kv_cap[r] * 0.01)):
                return True
    return False


@njit(cache=True)
def n_candidates(st, i):
    n = 0
    for r in range(st.rep_pool.shape[0]):
        if can_serve(st, r, i):
            n += 1
    return n


@njit(cache=True)
def builtin_route(st, i):
    """Pick a replica for request i with the scenario's routing rule, or -1 if none can serve it now."""
    policy = st.cnt[K_ROUTE_POLICY]
    ncand = n_candidates(st, i)
    if ncand == 0:
        return -1
    rr = 0
    if policy == ROUTE_RR:
        rr = st.cnt[K_RR] % ncand
        st.cnt[K_RR] += 1
    a = -1
    b = -1
    if policy == ROUTE_P2C:
        a = int(rng_uniform(st) * ncand)
        if ncand > 1:
            b = int(rng_uniform(st) * (ncand - 1))
            if b >= a:
                b += 1
    best = -1
    best_s = INF
    k = 0
    for r in range(st.rep_pool.shape[0]):
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
        kv_frac = st.rep_kv_used[r] / st.rep_kv_cap[r]
        s = route_score(policy, st.q_n[r], st.s_n[r], kv_frac, hits, (k - rr) % ncand, rand)
        if s < best_s:
            best_s = s
            best = r
        k += 1
    return best


@njit(cache=True)
def enqueue(st, i, r, now):
    """Send request i to replica r: it joins r's queue after the inter-region latency."""
    st.r_replica[i] = r
    vis = now + st.region_lat[st.r_region[i], st.p_region[st.rep_pool[r]]]
    st.r_visible[i] = vis
    if not queue_push(st, r, i):
        drop_request(st, i, now)
        return
    if st.rep_busy[r] == 0 and st.cnt[K_FORM_REPLICA] != r and vis < st.rep_next[r]:
        st.rep_next[r] = vis  # an idle replica wakes up when the request reaches it


@njit(cache=True)
def hold_push(st, i, now):
    cap = st.hold.shape[0]
    n = st.cnt[K_HOLD_N]
    if n >= cap:
        drop_request(st, i, now)
        return
    st.hold[(st.cnt[K_HOLD_HEAD] + n) % cap] = i
    st.cnt[K_HOLD_N] = n + 1


@njit(cache=True)
def hold_pop(st):
    cap = st.hold.shape[0]
    i = st.hold[st.cnt[K_HOLD_HEAD]]
    st.cnt[K_HOLD_HEAD] = (st.cnt[K_HOLD_HEAD] + 1) % cap
    st.cnt[K_HOLD_N] -= 1
    return i


@njit(cache=True)
def retry_held(st, now):
    """Route requests held for lack of an active replica; returns EV_ROUTE when the caller must decide."""
    max_wait = st.clock[C_MAX_WAIT]
    for _ in range(st.cnt[K_HOLD_N]):
        i = hold_pop(st)
        if now - st.r_arrival[i] > max_wait:
            drop_request(st, i, st.r_arrival[i] + max_wait)
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


# ---------------------------------------------------------------- scaling


@njit(cache=True)
def pool_counts(st, p):
    """(replicas starting or active, replicas active) of pool p."""
    n_up = 0
    n_active = 0
    for r in range(st.p_first_rep[p], st.p_first_rep[p] + st.p_max[p]):
        s = st.rep_state[r]
        if s == RS_STARTING or s == RS_ACTIVE:
            n_up += 1
        if s == RS_ACTIVE:
            n_active += 1
    return n_up, n_active


@njit(cache=True)
def scale_pool(st, p, delta, now):
    """Add (delta > 0) or remove replicas of pool p, clamped to [min, max]; returns the applied delta."""
    first = st.p_first_rep[p]
    last = first + st.p_max[p]
    n_up, _ = pool_counts(st, p)
    applied = 0
    if delta > 0:
        for _ in range(min(delta, st.p_max[p] - n_up)):
            pick = -1
            for r in range(first, last):  # a draining replica is warm: revive it before starting a new one
                if st.rep_state[r] == RS_DRAINING:
                    pick = r
                    break
            if pick >= 0:
                st.rep_state[pick] = RS_ACTIVE
                st.cnt[K_HOLD_RETRY] = 1
            else:
                for r in range(first, last):
                    if st.rep_state[r] == RS_OFF:
                        pick = r
                        break
                turn_on(st, pick, now)
            applied += 1
    elif delta < 0:
        for _ in range(min(-delta, n_up - st.p_min[p])):
            pick = -1
            for r in range(first, last):  # cancel the latest cold start first: it holds no work
                if st.rep_state[r] == RS_STARTING and (pick < 0 or st.rep_ready[r] >= st.rep_ready[pick]):
                    pick = r
            if pick < 0:
                load = 1 << 62
                for r in range(first, last):
                    if st.rep_state[r] == RS_ACTIVE and st.q_n[r] + st.s_n[r] < load:
                        load = st.q_n[r] + st.s_n[r]
                        pick = r
            start_drain(st, pick, now)
            applied -= 1
    return applied


@njit(cache=True)
def builtin_scale(st, now):
    if st.cnt[K_SCALE_POLICY] == 0:  # static
        return
    for p in range(st.p_model.shape[0]):
        n_up, n_active = pool_counts(st, p)
        used = 0.0
        for r in range(st.p_first_rep[p], st.p_first_rep[p] + st.p_max[p]):
            if st.rep_state[r] == RS_ACTIVE:
                used += st.rep_kv_used[r] / st.rep_kv_cap[r]
        if n_active > 0:
            util = used / n_active
        else:
            util = 1.0 if st.cnt[K_HOLD_N] > 0 else 0.0  # held requests are unmet demand
        d = reactive_scale_delta(
            util, st.clock[C_REACTIVE_UP], st.clock[C_REACTIVE_DOWN], n_up, st.p_min[p], st.p_max[p]
        )
        if d != 0:
            scale_pool(st, p, d, now)


# ---------------------------------------------------------------- batching decisions


@njit(cache=True)
def form_batch(st, r, now):
    """Replica r is free: schedule its running work, then admit (built-in) or hand admission to the caller."""
    budget = prepare_running(st, r, now)
    if st.cnt[K_CTRL_BATCH]:
        st.cnt[K_FORM_REPLICA] = r
        return
    admit_builtin(st, r, budget, now)
    launch(st, r, now)


@njit(cache=True)
def budget_left(st, r):
    used = 0
    for k in range(st.s_n[r]):
        used += st.s_chunk[r, k]
    return st.p_max_tokens[st.rep_pool[r]] - used


@njit(cache=True)
def admissible(st, r, i, now):
    """Request i waits visibly at replica r and fits into the batch being formed."""
    if st.r_replica[i] != r or st.r_status[i] != ST_INFLIGHT or st.r_visible[i] > now:
        return False
    found = False
    for k in range(st.q_n[r]):
        if st.q_req[r, k] == i:
            found = True
            break
    if not found:
        return False
    return admit_chunk(st, r, i, budget_left(st, r), has_prefill(st, r)) > 0


@njit(cache=True)
def any_admissible(st, r, now):
    expire_and_pick(st, r, now)  # drops expired requests so the caller never sees them
    budget = budget_left(st, r)
    pf = has_prefill(st, r)
    for k in range(st.q_n[r]):
        i = st.q_req[r, k]
        if st.r_visible[i] <= now and admit_chunk(st, r, i, budget, pf) > 0:
            return True
    return False


# ---------------------------------------------------------------- the event loop


@njit(cache=True)
def advance(st, t_limit):
    """Run until the next caller-controlled decision, ``t_limit`` or the horizon; return the event code."""
    n_req = st.r_arrival.shape[0]
    n_rep = st.rep_pool.shape[0]
    while True:
        now = st.clock[C_NOW]
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
        if st.cnt[K_HOLD_RETRY]:
            if retry_held(st, now) == EV_ROUTE:
                return EV_ROUTE

        na = st.cnt[K_NEXT_ARRIVAL]
        t_arr = st.r_arrival[na] if na < n_req else INF
        r_min = -1
        t_rep = INF
        for r in range(n_rep):
            if st.rep_next[r] < t_rep:
                t_rep = st.rep_next[r]
                r_min = r
        t_tick = st.clock[C_NEXT_TICK]
        t = min(t_rep, t_arr, t_tick)
        if t > st.clock[C_HORIZON]:
            st.clock[C_NOW] = max(now, min(st.clock[C_HORIZON], t_limit))
            return EV_DONE if t_limit >= st.clock[C_HORIZON] else EV_TIME
        if t > t_limit:
            st.clock[C_NOW] = max(now, t_limit)
            return EV_TIME
        st.clock[C_NOW] = t
        st.cnt[K_EVENTS] += 1

        if r_min >= 0 and t_rep <= t_arr and t_rep <= t_tick:
            r = r_min
            st.rep_next[r] = INF
            if st.rep_state[r] == RS_STARTING:
                activate(st, r, t)
                st.cnt[K_HOLD_RETRY] = 1
                continue
            if st.rep_busy[r]:
                complete_iteration(st, r, t)
            form_batch(st, r, t)
        elif t_arr <= t_tick:
            i = na
            st.cnt[K_NEXT_ARRIVAL] = na + 1
            st.r_status[i] = ST_INFLIGHT
            if (i & 63) == 0:
                sample_service_gap(st)
            if not fits_any_pool(st, i):
                drop_request(st, i, t)
            elif n_candidates(st, i) == 0:
                hold_push(st, i, t)
            elif st.cnt[K_CTRL_ROUTE]:
                st.cnt[K_PENDING_ROUTE] = i
                return EV_ROUTE
            else:
                enqueue(st, i, builtin_route(st, i), t)
        else:
            st.clock[C_NEXT_TICK] = t + st.clock[C_TICK_S]
            st.cnt[K_TICKS] += 1
            sample_service_gap(st)
            if st.cnt[K_CTRL_SCALE]:
                st.cnt[K_PENDING_SCALE] = 1
                return EV_SCALE
            builtin_scale(st, t)


# ---------------------------------------------------------------- answers to pending decisions


@njit(cache=True)
def apply_route(st, r):
    """Route the pending request to replica r; returns False (and leaves it pending) if r cannot serve it."""
    i = st.cnt[K_PENDING_ROUTE]
    if i < 0 or r < 0 or r >= st.rep_pool.shape[0] or not can_serve(st, r, i):
        return False
    st.cnt[K_PENDING_ROUTE] = -1
    enqueue(st, i, r, st.clock[C_NOW])
    return True


@njit(cache=True)
def apply_admit(st, i):
    """Admit waiting request i into the batch being formed; returns False if it is not admissible."""
    r = st.cnt[K_FORM_REPLICA]
    now = st.clock[C_NOW]
    if r < 0 or i < 0 or i >= st.r_arrival.shape[0] or not admissible(st, r, i, now):
        return False
    for k in range(st.q_n[r]):
        if st.q_req[r, k] == i:
            queue_remove_at(st, r, k)
            break
    admit(st, r, i, budget_left(st, r), now)
    return True


@njit(cache=True)
def apply_start(st):
    """Close admission and start the iteration of the replica being formed."""
    r = st.cnt[K_FORM_REPLICA]
    if r < 0:
        return False
    launch(st, r, st.clock[C_NOW])
    st.cnt[K_FORM_REPLICA] = -1
    return True


@njit(cache=True)
def apply_scale(st):
    """Apply the caller's per-pool deltas in ``st.scale_delta`` (clamped to [min, max]) and clear the tick."""
    now = st.clock[C_NOW]
    for p in range(st.scale_delta.shape[0]):
        if st.scale_delta[p] != 0:
            scale_pool(st, p, st.scale_delta[p], now)
        st.scale_delta[p] = 0
    st.cnt[K_PENDING_SCALE] = 0


@njit(cache=True)
def finalize(st):
    """Close the books at the current time: expire overdue waits and close billing and KV integrals."""
    now = st.clock[C_NOW]
    max_wait = st.clock[C_MAX_WAIT]
    for _ in range(st.cnt[K_HOLD_N]):
        i = hold_pop(st)
        if now - st.r_arrival[i] > max_wait:
            drop_request(st, i, st.r_arrival[i] + max_wait)
        else:
            hold_push(st, i, now)
    for r in range(st.rep_pool.shape[0]):
        k = 0
        while k < st.q_n[r]:
            i = st.q_req[r, k]
            if st.r_visible[i] <= now and now - st.r_visible[i] > max_wait:
                queue_remove_at(st, r, k)
                drop_request(st, i, st.r_visible[i] + max_wait)
            else:
                k += 1


# ---------------------------------------------------------------- what the caller may choose from


@njit(cache=True)
def route_mask(st, out):
    """out[r] = 1 where the pending request may be routed to replica r."""
    i = st.cnt[K_PENDING_ROUTE]
    for r in range(st.rep_pool.shape[0]):
        out[r] = 1 if (i >= 0 and can_serve(st, r, i)) else 0


@njit(cache=True)
def batch_candidates(st, out):
    """Write the ids of the requests admissible into the batch being formed to ``out``; return how many."""
    r = st.cnt[K_FORM_REPLICA]
    if r < 0:
        return 0
    now = st.clock[C_NOW]
    budget = budget_left(st, r)
    pf = has_prefill(st, r)
    n = 0
    for k in range(st.q_n[r]):
        i = st.q_req[r, k]
        if n < out.shape[0] and st.r_visible[i] <= now and admit_chunk(st, r, i, budget, pf) > 0:
            out[n] = i
            n += 1
    return n
