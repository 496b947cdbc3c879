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

from servegym.envs.sim.disagg import (
    complete_transfer,
    decode_fits,
    dispatch_transfers,
    join_arrived,
    next_transfer,
    queued_prefill_tokens,
    takes_new_requests,
)
from servegym.envs.sim.faults import arm_faults, handle_fault, next_fault, reclaim_pending
from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.policies import (
    ROUTE_COST,
    ROUTE_MOONCAKE,
    ROUTE_P2C,
    ROUTE_PREFIX,
    ROUTE_RANDOM,
    ROUTE_RR,
    ROUTE_SESSION,
    ROUTE_SPLITWISE,
    SCALE_FORECAST,
    SCALE_REACTIVE,
    SCALE_REPLACE,
    SCALE_SPOT_MIX,
    SCALE_STATIC,
    cost_route_score,
    demand_replicas,
    holt_forecast,
    holt_update,
    phase_route_score,
    pool_share,
    prefill_route_score,
    reactive_scale_delta,
    replace_scale_delta,
    replica_cost,
    route_score,
    session_route_score,
    sized_scale_delta,
    spot_mix_rate,
)
from servegym.envs.sim.replica import (
    activate,
    admit,
    admit_builtin,
    admit_chunk,
    blocks_for,
    budget_left,
    complete_iteration,
    drop_request,
    expire_and_pick,
    expire_queues,
    has_prefill,
    hold_pop,
    hold_push,
    kv_limit,
    launch,
    prefix_hits,
    prepare_running,
    queue_push,
    queue_remove_at,
    rng_uniform,
    sample_service_gap,
    start_drain,
    turn_on,
)
from servegym.envs.sim.sessions import next_release, take_released
from servegym.envs.sim.state import (
    C_COST_MAX_KV,
    C_COST_MAX_QUEUE,
    C_DOWN_COOLDOWN,
    C_HOLT_ALPHA,
    C_HOLT_BETA,
    C_HORIZON,
    C_MAX_WAIT,
    C_NEXT_FAULT,
    C_NEXT_TICK,
    C_NOW,
    C_REACTIVE_DOWN,
    C_REACTIVE_UP,
    C_SESSION_MAX_LOAD,
    C_SPLITWISE_OVERFLOW,
    C_TARGET_UTIL,
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
    K_HOLD_N,
    K_HOLD_RETRY,
    K_N_OPEN,
    K_NEXT_ARRIVAL,
    K_PENDING_ROUTE,
    K_PENDING_SCALE,
    K_ROUTE_POLICY,
    K_RR,
    K_SCALE_POLICY,
    K_TICKS,
    K_XFER_RETRY,
    K_XW_N,
    PF_ARR_INTER,
    PF_ARR_INTER_LAST,
    PF_ARR_LAST,
    PF_ARRIVALS,
    PF_CAPACITY,
    PF_COLD_START,
    PF_FC_LEVEL,
    PF_FC_TREND,
    PF_LAST_UP,
    PF_LOST,
    PF_LOST_LAST,
    PF_PRICE,
    PF_ROUTED,
    PF_ROUTED_LAST,
    PI_FIRST_REP,
    PI_MAX,
    PI_MAX_CTX,
    PI_MIN,
    PI_MODEL,
    PI_PREFIX,
    PI_REGION,
    PI_ROLE,
    PI_SCALE_DELTA,
    PI_SPOT,
    PI_TP,
    PREFIX_BLOCK_TOKENS,
    RF_ARRIVAL,
    RF_VISIBLE,
    RI_HOME,
    RI_MODEL,
    RI_OUTPUT,
    RI_PROMPT,
    RI_REGION,
    RI_REPLICA,
    RI_STATUS,
    RI_TIER,
    ROLE_DECODE,
    ROLE_MIXED,
    ROLE_PREFILL,
    RS_ACTIVE,
    RS_DRAINING,
    RS_OFF,
    RS_STARTING,
    ST_INFLIGHT,
    TIER_INTERACTIVE,
    XF_NEXT,
    XF_READY,
    XI_BUSY,
    XI_KV_CAP,
    XI_KV_USED,
    XI_ND,
    XI_NPF,
    XI_NRDY,
    XI_POOL,
    XI_QN,
    XI_STATE,
)

INF = np.inf


# ---------------------------------------------------------------- routing


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


@hot
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


# ---------------------------------------------------------------- scaling


@kernel
def pool_counts(st, p):
    """(replicas starting or active, replicas active) of pool p."""
    n_up = 0
    n_active = 0
    first = st.pooli[PI_FIRST_REP, p]
    for r in range(first, first + st.pooli[PI_MAX, p]):
        s = st.repi[XI_STATE, r]
        if s == RS_STARTING or s == RS_ACTIVE:
            n_up += 1
        if s == RS_ACTIVE:
            n_active += 1
    return n_up, n_active


@kernel
def scale_pool(st, p, delta, now):
    """Add (delta > 0) or remove replicas of pool p, clamped to [min, max]; returns the applied delta."""
    first = st.pooli[PI_FIRST_REP, p]
    last = first + st.pooli[PI_MAX, p]
    n_up, _ = pool_counts(st, p)
    applied = 0
    if delta > 0:
        for _ in range(min(delta, st.pooli[PI_MAX, p] - n_up)):
            pick = -1
            for r in range(first, last):  # a draining replica is warm: revive it before starting a new one
                if st.repi[XI_STATE, r] == RS_DRAINING and not reclaim_pending(st, r):
                    pick = r
                    break
            if pick >= 0:
                st.repi[XI_STATE, pick] = RS_ACTIVE
                st.cnt[K_HOLD_RETRY] = 1
            else:
                for r in range(first, last):
                    if st.repi[XI_STATE, r] == RS_OFF:
                        pick = r
                        break
                if pick < 0:
                    break  # the rest are failed (in repair) or under a reclaim warning
                turn_on(st, pick, now)
                arm_faults(st, pick, now)
            applied += 1
    elif delta < 0:
        for _ in range(min(-delta, n_up - st.pooli[PI_MIN, p])):
            pick = -1
            for r in range(first, last):  # cancel the latest cold start first: it holds no work
                if st.repi[XI_STATE, r] == RS_STARTING and (
                    pick < 0 or st.repf[XF_READY, r] >= st.repf[XF_READY, pick]
                ):
                    pick = r
            if pick < 0:
                load = 1 << 62
                for r in range(first, last):
                    work = st.repi[XI_QN, r] + st.repi[XI_ND, r] + st.repi[XI_NPF, r]
                    if st.repi[XI_STATE, r] == RS_ACTIVE and work < load:
                        load = work
                        pick = r
            start_drain(st, pick, now)
            applied -= 1
    return applied


@kernel
def roll_pool_stats(st):
    """At a control tick: close the interval's arrival counts per pool (its model's) and update their forecast.

    Runs at every tick whoever scales, so that an external scaler sees the same counts; O(pools).
    """
    alpha = st.clock[C_HOLT_ALPHA]
    beta = st.clock[C_HOLT_BETA]
    n_pool = st.pooli.shape[1]
    for p in range(n_pool):  # PF_ARRIVALS is indexed by model id
        st.poolf[PF_ARR_LAST, p] = st.poolf[PF_ARRIVALS, st.pooli[PI_MODEL, p]]
        st.poolf[PF_ROUTED_LAST, p] = st.poolf[PF_ROUTED, p]
        st.poolf[PF_ROUTED, p] = 0.0
        st.poolf[PF_ARR_INTER_LAST, p] = st.poolf[PF_ARR_INTER, st.pooli[PI_MODEL, p]]
        st.poolf[PF_LOST_LAST, p] = st.poolf[PF_LOST, p]
        st.poolf[PF_LOST, p] = 0.0
    for p in range(n_pool):
        st.poolf[PF_ARRIVALS, p] = 0.0
        st.poolf[PF_ARR_INTER, p] = 0.0
    for p in range(n_pool):
        x = st.poolf[PF_ARR_LAST, p]
        level, trend = holt_update(st.poolf[PF_FC_LEVEL, p], st.poolf[PF_FC_TREND, p], x, alpha, beta)
        st.poolf[PF_FC_LEVEL, p] = level
        st.poolf[PF_FC_TREND, p] = trend


@kernel
def pool_load(st, p):
    """(mean KV utilization of the active replicas, waiting requests on them) of pool p.

    With no active replica, requests held for lack of one are its unmet demand (utilization 1, all queued).
    """
    n_active = 0
    used = 0.0
    queued = 0
    first = st.pooli[PI_FIRST_REP, p]
    for r in range(first, first + st.pooli[PI_MAX, p]):
        if st.repi[XI_STATE, r] == RS_ACTIVE:
            n_active += 1
            used += st.repi[XI_KV_USED, r] / st.repi[XI_KV_CAP, r]
            queued += st.repi[XI_QN, r]
    if n_active > 0:
        return used / n_active, queued
    held = st.cnt[K_HOLD_N]
    return (1.0 if held > 0 else 0.0), held


@kernel
def model_totals(st, p):
    """(requests routed last interval, replicas up x capacity) summed over the pools of pool p's model."""
    routed = 0.0
    cap_up = 0.0
    for q in range(st.pooli.shape[1]):
        if st.pooli[PI_MODEL, q] == st.pooli[PI_MODEL, p]:
            n_up, _ = pool_counts(st, q)
            routed += st.poolf[PF_ROUTED_LAST, q]
            cap_up += n_up * st.poolf[PF_CAPACITY, q]
    return routed, cap_up


@kernel
def spot_mix_desired(st, p, queued, interval):
    """Replicas pool p wants under the on-demand/spot mix rule (policies.spot_mix_rate).

    Demand is the Holt forecast of the model's arrivals one interval plus a cold start ahead (as the
    forecast scaler), its interactive part scaled by the interactive share of the last interval.
    """
    horizon = 1.0 + st.poolf[PF_COLD_START, p] / interval
    total = holt_forecast(st.poolf[PF_FC_LEVEL, p], st.poolf[PF_FC_TREND, p], horizon) / interval
    last = st.poolf[PF_ARR_LAST, p]
    inter = total * (st.poolf[PF_ARR_INTER_LAST, p] / last) if last > 0 else 0.0
    spot = st.pooli[PI_SPOT, p] != 0
    n_same = 0
    other = False
    for q in range(st.pooli.shape[1]):
        if st.pooli[PI_MODEL, q] == st.pooli[PI_MODEL, p]:
            if (st.pooli[PI_SPOT, q] != 0) == spot:
                n_same += 1
            else:
                other = True
    rate = spot_mix_rate(spot, inter, total, n_same, other)
    return demand_replicas(rate, 1.0, queued, interval, st.poolf[PF_CAPACITY, p], st.clock[C_TARGET_UTIL])


@kernel
def builtin_scale(st, now):
    policy = st.cnt[K_SCALE_POLICY]
    if policy == SCALE_STATIC:
        return
    interval = st.clock[C_TICK_S]
    # decide every pool on the same snapshot: a pool scaled first must not change the next one's share
    for p in range(st.pooli.shape[1]):
        st.pooli[PI_SCALE_DELTA, p] = 0
        n_up, n_active = pool_counts(st, p)
        util, queued = pool_load(st, p)
        n_min = st.pooli[PI_MIN, p]
        n_max = st.pooli[PI_MAX, p]
        if policy == SCALE_REACTIVE or policy == SCALE_REPLACE:
            d = reactive_scale_delta(
                util, st.clock[C_REACTIVE_UP], st.clock[C_REACTIVE_DOWN], n_up, n_min, n_max
            )
            if policy == SCALE_REPLACE:
                d = replace_scale_delta(d, int(st.poolf[PF_LOST_LAST, p]), n_up, n_max)
        elif policy == SCALE_SPOT_MIX:
            desired = spot_mix_desired(st, p, queued, interval)
            cooling = now - st.poolf[PF_LAST_UP, p] < st.clock[C_DOWN_COOLDOWN]
            d = sized_scale_delta(desired, n_up, n_min, n_max, cooling)
            if d > 0:
                st.poolf[PF_LAST_UP, p] = now
        else:
            if policy == SCALE_FORECAST:
                horizon = 1.0 + st.poolf[PF_COLD_START, p] / interval
                count = holt_forecast(st.poolf[PF_FC_LEVEL, p], st.poolf[PF_FC_TREND, p], horizon)
            else:
                count = st.poolf[PF_ARR_LAST, p]
            routed, cap_up = model_totals(st, p)
            cap = st.poolf[PF_CAPACITY, p]
            share = pool_share(st.poolf[PF_ROUTED_LAST, p], routed, n_up * cap, cap_up)
            desired = demand_replicas(count / interval, share, queued, interval, cap, st.clock[C_TARGET_UTIL])
            cooling = now - st.poolf[PF_LAST_UP, p] < st.clock[C_DOWN_COOLDOWN]
            d = sized_scale_delta(desired, n_up, n_min, n_max, cooling)
            if d > 0:
                st.poolf[PF_LAST_UP, p] = now
        st.pooli[PI_SCALE_DELTA, p] = d
    for p in range(st.pooli.shape[1]):
        d = st.pooli[PI_SCALE_DELTA, p]
        if d != 0:
            scale_pool(st, p, d, now)
        st.pooli[PI_SCALE_DELTA, p] = 0


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


@kernel
def advance(st, t_limit):
    """Run until the next caller-controlled decision, ``t_limit`` or the horizon; return the event code."""
    n_open = st.cnt[K_N_OPEN]
    n_rep = st.repi.shape[1]
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
        # KV caches waiting for a decode replica: dispatch them when decode capacity may have freed
        if st.cnt[K_XW_N] > 0 and (st.cnt[K_XFER_RETRY] or st.cnt[K_HOLD_RETRY]):
            dispatch_transfers(st, now)
        if st.cnt[K_HOLD_RETRY]:
            if retry_held(st, now) == EV_ROUTE:
                return EV_ROUTE

        na = st.cnt[K_NEXT_ARRIVAL]
        t_arr = st.rqf[RF_ARRIVAL, na] if na < n_open else INF
        t_rel = next_release(st)  # session steps released by their predecessor (sessions.py)
        released = t_rel < t_arr  # at equal times the open-loop arrival goes first
        if released:
            t_arr = t_rel
        r_min = -1
        t_rep = INF
        for r in range(n_rep):
            if st.repf[XF_NEXT, r] < t_rep:
                t_rep = st.repf[XF_NEXT, r]
                r_min = r
        t_tick = st.clock[C_NEXT_TICK]
        t_fault = st.clock[C_NEXT_FAULT]
        t_xfer = next_transfer(st)  # KV transfers in flight (disagg.py); inf without disaggregation
        t = min(t_rep, t_arr, t_tick, t_fault, t_xfer)
        if t > st.clock[C_HORIZON]:
            st.clock[C_NOW] = max(now, min(st.clock[C_HORIZON], t_limit))
            return EV_DONE if t_limit >= st.clock[C_HORIZON] else EV_TIME
        if t > t_limit:
            st.clock[C_NOW] = max(now, t_limit)
            return EV_TIME
        st.clock[C_NOW] = t
        st.cnt[K_EVENTS] += 1

        if t_fault <= t:  # faults first among simultaneous events (rare: one comparison on the hot path)
            rf, tf = next_fault(st)
            if tf <= t:
                handle_fault(st, rf, t)
                next_fault(st)
            continue
        if t_xfer <= t:  # after faults, before the replicas: a decode replica due now sees the arrival
            complete_transfer(st, t)
            continue
        if r_min >= 0 and t_rep <= t_arr and t_rep <= t_tick:
            r = r_min
            st.repf[XF_NEXT, r] = INF
            if st.repi[XI_STATE, r] == RS_STARTING:
                activate(st, r, t)
                st.cnt[K_HOLD_RETRY] = 1
                continue
            if st.repi[XI_BUSY, r]:
                complete_iteration(st, r, t)
            if st.repi[XI_NRDY, r] > 0:  # KV caches that arrived during the iteration join the decode set
                join_arrived(st, r)
            if st.cnt[K_XW_N] > 0:  # the iteration may have freed decode capacity
                st.cnt[K_XFER_RETRY] = 1
            budget = prepare_running(st, r, t)
            if st.cnt[K_CTRL_BATCH]:
                st.cnt[K_FORM_REPLICA] = r
                continue
            admit_builtin(st, r, budget, t)
            launch(st, r, t)
        elif t_arr <= t_tick:
            if released:
                i = take_released(st, t)
            else:
                i = na
                st.cnt[K_NEXT_ARRIVAL] = na + 1
            st.rqi[RI_STATUS, i] = ST_INFLIGHT
            st.poolf[PF_ARRIVALS, st.rqi[RI_MODEL, i]] += 1.0  # demand per model, for the forecast scaler
            if st.rqi[RI_TIER, i] == TIER_INTERACTIVE:
                st.poolf[PF_ARR_INTER, st.rqi[RI_MODEL, i]] += 1.0  # the spot-mix scaler's on-demand floor
            st.rqf[RF_VISIBLE, i] = t  # a held request waits from its arrival (retry_held, finalize)
            if (i & 63) == 0:
                sample_service_gap(st)
            if not fits_any_pool(st, i):
                drop_request(st, i, t)
            elif st.cnt[K_CTRL_ROUTE]:
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
        else:
            st.clock[C_NEXT_TICK] = t + st.clock[C_TICK_S]
            st.cnt[K_TICKS] += 1
            expire_queues(st, t)
            sample_service_gap(st)
            roll_pool_stats(st)
            if st.cnt[K_CTRL_SCALE]:
                st.cnt[K_PENDING_SCALE] = 1
                return EV_SCALE
            builtin_scale(st, t)


# ---------------------------------------------------------------- answers to pending decisions


@kernel
def apply_route(st, r):
    """Route the pending request to replica r; returns False (and leaves it pending) if r cannot serve it."""
    i = st.cnt[K_PENDING_ROUTE]
    if i < 0 or r < 0 or r >= st.repi.shape[1] or not can_serve(st, r, i):
        return False
    st.cnt[K_PENDING_ROUTE] = -1
    enqueue(st, i, r, st.clock[C_NOW])
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
    """out[r] = 1 where the pending request may be routed to replica r."""
    i = st.cnt[K_PENDING_ROUTE]
    for r in range(st.repi.shape[1]):
        out[r] = 1 if (i >= 0 and can_serve(st, r, i)) else 0


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
