"""Autoscaling in the core: per-pool counts and load, the per-tick demand statistics and forecast, the
built-in scaling rules, and applying a scaling delta to a pool.

The scoring functions are in policies.py; this module reads the state they score.
"""

from __future__ import annotations

from servegym.envs.sim.faults import arm_faults, reclaim_pending
from servegym.envs.sim.jit import kernel
from servegym.envs.sim.lifecycle import start_drain, turn_on
from servegym.envs.sim.policies import (
    SCALE_FORECAST,
    SCALE_REACTIVE,
    SCALE_REPLACE,
    SCALE_SPOT_MIX,
    SCALE_STATIC,
    demand_replicas,
    holt_forecast,
    holt_update,
    pool_share,
    reactive_scale_delta,
    replace_scale_delta,
    sized_scale_delta,
    spot_mix_rate,
)
from servegym.envs.sim.state import (
    C_DOWN_COOLDOWN,
    C_HOLT_ALPHA,
    C_HOLT_BETA,
    C_REACTIVE_DOWN,
    C_REACTIVE_UP,
    C_TARGET_UTIL,
    C_TICK_S,
    K_HOLD_N,
    K_HOLD_RETRY,
    K_SCALE_POLICY,
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
    PF_ROUTED,
    PF_ROUTED_LAST,
    PI_FIRST_REP,
    PI_MAX,
    PI_MIN,
    PI_MODEL,
    PI_SCALE_DELTA,
    PI_SPOT,
    RS_ACTIVE,
    RS_DRAINING,
    RS_OFF,
    RS_STARTING,
    XF_READY,
    XI_KV_CAP,
    XI_KV_USED,
    XI_ND,
    XI_NPF,
    XI_QN,
    XI_STATE,
)


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
