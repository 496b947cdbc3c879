"""Observation kernels of the envs: one ``hot`` function per observation group (docs/envs.md), and the small
helpers they share; every function here is inlined (see envs/sim/jit.py) into ``decisions.observe``.

Each feature is written at its named position (``obs[b + REPLICA.KV_FRAC]``): the names come from the
feature tuples of config.py (``config.feature_index``), so adding a feature is one name in its tuple and one
write here. numba's on-disk cache is keyed by the source of every compiled module and what it imports
(envs/__init__.py), so an edit here recompiles what inlines it.
"""

from __future__ import annotations

import math

from servegym.envs.gym.aux_state import (
    AF_BIN_S,
    AF_DAY,
    AF_N_COLD,
    AF_N_COST,
    AF_N_COUNTER,
    AF_N_PRICE,
    AF_N_PROMPT,
    AF_N_QUEUE,
    AF_N_RATE,
    AF_N_SLACK,
    AF_N_STEPS,
    AF_N_TPOT,
    AF_N_WAIT,
    AF_PREV_COST,
    AI_FS,
    AI_H,
    AI_IS,
    AI_M_SCALE,
    AI_O_GLOB,
    AI_O_POOL,
    AI_O_REP,
    AI_O_SESS,
    AI_O_SREP,
    AI_P,
    AI_PPAD,
    AI_R,
    AI_REL_FILLED,
    AI_RPAD,
    AI_SK,
    F_GLOB0,
    F_POOL,
    F_REP0,
    F_SREP,
    INF,
    N_AI,
)
from servegym.envs.gym.config import (
    GLOBAL,
    POOL,
    REPLICA,
    REQUEST,
    SESSION,
    SESSION_REPLICA,
    SESSION_STEP,
)
from servegym.envs.perf.model import iteration_time_s
from servegym.envs.sim.jit import hot
from servegym.envs.sim.queues import next_deadline, session_deadline
from servegym.envs.sim.state import (
    C_HORIZON,
    C_NOW,
    C_REACTIVE_DOWN,
    C_REACTIVE_UP,
    C_TICK_S,
    FK_KILL,
    K_DROPS,
    K_FINISHED,
    K_HOLD_N,
    K_N_OPEN,
    K_NEXT_ARRIVAL,
    K_PENDING_ROUTE,
    K_REL_N,
    K_RELEASED,
    K_SLO_MET,
    K_SLO_MISSED_FINISHED,
    PF_BILLED_GPU_S,
    PF_COLD_START,
    PF_LOST_LAST,
    PI_FIRST_REP,
    PI_MAX,
    PI_MAX_SEQS,
    PI_MAX_TOKENS,
    PI_MIN,
    PI_SPOT,
    PI_TP,
    RF_ARRIVAL,
    RF_TPOT_SLO,
    RI_FIRST,
    RI_GENERATED,
    RI_HOME,
    RI_PROMPT,
    RI_STEP,
    RI_TENANT,
    RI_TIER,
    RS_ACTIVE,
    RS_DRAINING,
    RS_FAILED,
    RS_OFF,
    RS_STARTING,
    TF_COUNTER,
    TF_SESSION_SLO,
    TF_WEIGHT,
    TIER_INTERACTIVE,
    XF_NEXT,
    XF_ON_SINCE,
    XF_READY,
    XI_BUSY,
    XI_DSUM,
    XI_FKIND,
    XI_KV_CAP,
    XI_KV_USED,
    XI_ND,
    XI_NPF,
    XI_POOL,
    XI_QN,
    XI_STATE,
)

# ---------------------------------------------------------------- small helpers


@hot
def clip01(x):
    return 0.0 if x < 0.0 else (1.0 if x > 1.0 else x)


@hot
def clip11(x):
    return -1.0 if x < -1.0 else (1.0 if x > 1.0 else x)


@hot
def arrived_by(st, n, t, released):
    """How many of the first ``n`` arrivals came at or before ``t``: first arrivals (the rows, sorted by
    arrival), or with ``released`` the later session steps in the release log (also in arrival order)."""
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        row = st.rlog[mid] if released else mid
        if st.rqf[RF_ARRIVAL, row] <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo


@hot
def sync_released(st, ax):
    """Extend ``cumrel`` over the session steps released since the last observation."""
    nr = st.cnt[K_RELEASED]
    for k in range(ax.ai[AI_REL_FILLED], nr):
        j = st.rlog[k]
        inter = 1 if st.rqi[RI_TIER, j] == TIER_INTERACTIVE else 0
        ax.cumrel[0, k + 1] = ax.cumrel[0, k] + inter
        ax.cumrel[1, k + 1] = ax.cumrel[1, k] + 1 - inter
        ax.cumrel[2, k + 1] = ax.cumrel[2, k] + st.rqi[RI_PROMPT, j]
    ax.ai[AI_REL_FILLED] = nr


@hot
def tenant_counter_rel(st, u, norm):
    """Tenant u's VTC counter above the least-served tenant's, scaled: how far ahead of the others it is."""
    lo = INF
    for v in range(st.ten.shape[1]):
        if st.ten[TF_COUNTER, v] < lo:
            lo = st.ten[TF_COUNTER, v]
    return clip01((st.ten[TF_COUNTER, u] - lo) / norm)


@hot
def max_weight(st):
    w = 0.0
    for v in range(st.ten.shape[1]):
        w = max(w, st.ten[TF_WEIGHT, v])
    return w


@hot
def cost_usd(st, ax):
    """GPU cost billed so far: closed intervals plus the open ones of replicas that are on."""
    now = st.clock[C_NOW]
    c = 0.0
    for p in range(ax.ai[AI_P]):
        c += ax.price[p] * st.poolf[PF_BILLED_GPU_S, p]
    for r in range(ax.ai[AI_R]):
        if st.repi[XI_STATE, r] != RS_OFF:
            p = st.repi[XI_POOL, r]
            c += ax.price[p] * (now - st.repf[XF_ON_SINCE, r]) * st.pooli[PI_TP, p]
    return c / 3600.0


@hot
def drained(st):
    """Every request of the workload has arrived and none is in flight: nothing can happen any more."""
    na = st.cnt[K_NEXT_ARRIVAL]
    arrived = na + st.cnt[K_RELEASED]
    # session steps still unreleased when this holds belong to abandoned sessions: they never arrive
    return (
        na == st.cnt[K_N_OPEN]
        and st.cnt[K_REL_N] == 0
        and arrived - st.cnt[K_FINISHED] - st.cnt[K_DROPS] == 0
    )


# ---------------------------------------------------------------- observation groups


@hot
def request_features(st, ax, obs, o, i, now):
    af = ax.af
    dl = next_deadline(st, i)
    budget = dl - st.rqf[RF_ARRIVAL, i]
    obs[o + REQUEST.VALID] = 1.0
    obs[o + REQUEST.PROMPT_TOKENS] = clip01(
        (st.rqi[RI_PROMPT, i] + st.rqi[RI_GENERATED, i]) / af[AF_N_PROMPT]
    )
    inter = st.rqi[RI_TIER, i] == TIER_INTERACTIVE
    obs[o + REQUEST.TIER_INTERACTIVE] = 1.0 if inter else 0.0
    obs[o + REQUEST.TIER_BATCH] = 0.0 if inter else 1.0
    obs[o + REQUEST.SLACK] = clip11((dl - now) / af[AF_N_SLACK])
    obs[o + REQUEST.SLACK_FRACTION] = clip11((dl - now) / budget) if budget > 0 else 0.0
    u = st.rqi[RI_TENANT, i]
    obs[o + REQUEST.TENANT_COUNTER] = tenant_counter_rel(st, u, af[AF_N_COUNTER])
    obs[o + REQUEST.TENANT_WEIGHT] = st.ten[TF_WEIGHT, u] / max_weight(st)
    obs[o + REQUEST.TPOT_SLO] = clip01(st.rqf[RF_TPOT_SLO, i] / af[AF_N_TPOT]) if inter else 0.0


@hot
def replica_features(st, ax, obs, now):
    ai = ax.ai
    af = ax.af
    o = ai[AI_O_REP]
    f = F_REP0 + ai[AI_PPAD]
    na = st.cnt[K_NEXT_ARRIVAL]
    nr = st.cnt[K_RELEASED]
    seen = na + nr  # the mean of the requests seen so far: no peeking ahead
    mean_prompt = (ax.cum[2, na] + ax.cumrel[2, nr]) / seen if seen > 0 else 0.0
    for r in range(ai[AI_R]):
        b = o + r * f
        s = st.repi[XI_STATE, r]
        p = st.repi[XI_POOL, r]
        obs[b + REPLICA.EXISTS] = 1.0
        if s == RS_STARTING:
            obs[b + REPLICA.STARTING] = 1.0
            cold = st.poolf[PF_COLD_START, p]
            obs[b + REPLICA.STARTUP_LEFT] = clip01((st.repf[XF_READY, r] - now) / cold) if cold > 0 else 0.0
        elif s == RS_ACTIVE:
            obs[b + REPLICA.ACTIVE] = 1.0
        elif s == RS_DRAINING:
            obs[b + REPLICA.DRAINING] = 1.0
        qn = st.repi[XI_QN, r]
        nd = st.repi[XI_ND, r]
        obs[b + REPLICA.QUEUE_LEN] = clip01(qn / af[AF_N_QUEUE])
        obs[b + REPLICA.RUNNING] = clip01((nd + st.repi[XI_NPF, r]) / st.pooli[PI_MAX_SEQS, p])
        obs[b + REPLICA.KV_FRAC] = st.repi[XI_KV_USED, r] / st.repi[XI_KV_CAP, r]
        busy = st.repi[XI_BUSY, r]
        wait = st.repf[XF_NEXT, r] - now if busy else 0.0
        if qn > 0:
            # queued prompt tokens over the prefill budget, times one full iteration beside the decoders
            bud = max(1, st.pooli[PI_MAX_TOKENS, p] - nd)
            t_it = iteration_time_s(st.coef[p], bud, bud * (bud + 1) * 0.5, nd, st.repi[XI_DSUM, r])
            wait += qn * mean_prompt / bud * t_it
        obs[b + REPLICA.WAIT_ESTIMATE] = clip01(wait / af[AF_N_WAIT])
        obs[b + REPLICA.BUSY] = 1.0 if busy else 0.0
        obs[b + F_REP0 + p] = 1.0


@hot
def pool_features(st, ax, obs, mask, ii, ff, now, scale_pending):
    """Pool group of the observation; when a scaling tick is pending, its mask and info features too."""
    ai = ax.ai
    af = ax.af
    o = ai[AI_O_POOL]
    sk = ai[AI_SK]
    ns = 2 * sk + 1
    pp = ai[AI_PPAD]
    n_pool = ai[AI_P]
    for p in range(n_pool):
        first = st.pooli[PI_FIRST_REP, p]
        mx = st.pooli[PI_MAX, p]
        n_start = 0
        n_act = 0
        n_drain = 0
        n_failed = 0
        n_reclaim = 0
        used = 0.0
        qsum = 0
        for r in range(first, first + mx):
            s = st.repi[XI_STATE, r]
            qsum += st.repi[XI_QN, r]
            if s == RS_STARTING:
                n_start += 1
            elif s == RS_ACTIVE:
                n_act += 1
                used += st.repi[XI_KV_USED, r] / st.repi[XI_KV_CAP, r]
            elif s == RS_DRAINING:
                n_drain += 1
                if st.repi[XI_FKIND, r] == FK_KILL:
                    n_reclaim += 1
            elif s == RS_FAILED:
                n_failed += 1
        n_up = n_start + n_act
        # the utilization the built-in reactive rule sees (scaling.builtin_scale): held requests are demand
        if n_act > 0:
            util = used / n_act
        else:
            util = 1.0 if st.cnt[K_HOLD_N] > 0 else 0.0
        tp = st.pooli[PI_TP, p]
        if o >= 0:
            b = o + p * F_POOL
            obs[b + POOL.EXISTS] = 1.0
            obs[b + POOL.N_UP] = n_up / mx
            obs[b + POOL.N_ACTIVE] = n_act / mx
            obs[b + POOL.N_STARTING] = n_start / mx
            obs[b + POOL.N_DRAINING] = n_drain / mx
            obs[b + POOL.MIN_REPLICAS] = st.pooli[PI_MIN, p] / mx
            obs[b + POOL.MAX_REPLICAS] = clip01(mx / ai[AI_RPAD])
            obs[b + POOL.KV_UTIL] = clip01(util)
            obs[b + POOL.QUEUE_LEN] = clip01(qsum / (af[AF_N_QUEUE] * mx))
            obs[b + POOL.PRICE] = clip01(ax.price[p] * tp / af[AF_N_PRICE])
            obs[b + POOL.COLD_START] = clip01(st.poolf[PF_COLD_START, p] / af[AF_N_COLD])
            obs[b + POOL.TP] = clip01(tp / 8.0)
            obs[b + POOL.SPOT] = 1.0 if st.pooli[PI_SPOT, p] else 0.0
            obs[b + POOL.N_FAILED] = n_failed / mx
            obs[b + POOL.N_RECLAIMING] = n_reclaim / mx
        if scale_pending:
            m = ai[AI_M_SCALE] + p * ns
            lo = st.pooli[PI_MIN, p]
            for j in range(ns):
                k = n_up + j - sk
                mask[m + j] = 1 if (lo <= k <= mx or j == sk) else 0
            i0 = ai[AI_IS]
            ii[i0 + p] = n_up
            ii[i0 + pp + p] = n_act
            ii[i0 + 2 * pp + p] = lo
            ii[i0 + 3 * pp + p] = mx
            ii[i0 + 4 * pp + p] = qsum
            ii[i0 + 5 * pp + p] = tp
            f0 = ai[AI_FS]
            ff[f0 + p] = util
            ff[f0 + pp + p] = st.poolf[PF_COLD_START, p]
            ff[f0 + 2 * pp + p] = ax.price[p]
    if scale_pending:
        na = st.cnt[K_NEXT_ARRIVAL]
        nr = st.cnt[K_RELEASED]
        lo_i = arrived_by(st, na, now - st.clock[C_TICK_S], False)
        lo_r = arrived_by(st, nr, now - st.clock[C_TICK_S], True)
        i0 = ai[AI_IS] + 6 * pp
        for tier in range(2):
            ii[i0 + tier] = (
                ax.cum[tier, na] - ax.cum[tier, lo_i] + ax.cumrel[tier, nr] - ax.cumrel[tier, lo_r]
            )
        for p in range(n_pool):  # after the per-tier arrivals, so that older offsets stay put
            ii[i0 + 2 + p] = st.pooli[PI_SPOT, p]
            ii[i0 + 2 + pp + p] = int(st.poolf[PF_LOST_LAST, p])
        f0 = ai[AI_FS] + 3 * pp
        ff[f0] = st.clock[C_REACTIVE_UP]
        ff[f0 + 1] = st.clock[C_REACTIVE_DOWN]


@hot
def global_features(st, ax, obs, now):
    ai = ax.ai
    af = ax.af
    o = ai[AI_O_GLOB]
    ph = 2.0 * math.pi * now / af[AF_DAY]
    obs[o + GLOBAL.TIME_OF_DAY_SIN] = math.sin(ph)
    obs[o + GLOBAL.TIME_OF_DAY_COS] = math.cos(ph)
    obs[o + GLOBAL.PROGRESS] = clip01(now / st.clock[C_HORIZON])
    obs[o + GLOBAL.COST_RATE] = clip01(
        af[AF_PREV_COST] / max(now, 1.0) * 3600.0 / af[AF_N_COST]
    )  # cost set by mark_counters
    met = st.cnt[K_SLO_MET]
    judged = met + st.cnt[K_SLO_MISSED_FINISHED] + st.cnt[K_DROPS]
    obs[o + GLOBAL.SLO_ATTAINMENT] = met / judged if judged > 0 else 1.0
    na = st.cnt[K_NEXT_ARRIVAL]
    obs[o + GLOBAL.DROP_FRACTION] = st.cnt[K_DROPS] / na if na > 0 else 0.0
    obs[o + GLOBAL.HELD] = clip01(st.cnt[K_HOLD_N] / af[AF_N_QUEUE])
    h = ai[AI_H]
    w = af[AF_BIN_S]
    nr = st.cnt[K_RELEASED]
    hi = na
    hi_r = nr
    for b in range(h):
        # ai[N_AI + b] / ai[N_AI + h + b]: first arrivals / released session steps by the bin's left edge;
        # edges only move forward, so no search
        lo = ai[N_AI + b]
        lo_r = ai[N_AI + h + b]
        t = now - (b + 1) * w
        while lo < na and st.rqf[RF_ARRIVAL, lo] <= t:
            lo += 1
        while lo_r < nr and st.rqf[RF_ARRIVAL, st.rlog[lo_r]] <= t:
            lo_r += 1
        ai[N_AI + b] = lo
        ai[N_AI + h + b] = lo_r
        for tier in range(2):
            n = ax.cum[tier, hi] - ax.cum[tier, lo] + ax.cumrel[tier, hi_r] - ax.cumrel[tier, lo_r]
            obs[o + F_GLOB0 + tier * h + b] = clip01(n / w / af[AF_N_RATE])
        hi = lo
        hi_r = lo_r


@hot
def session_step_features(st, ax, obs, o, i, now):
    """in_session, step, session_slack of request i at obs[o:o+3] (zeros outside a session)."""
    if st.rqi[RI_FIRST, i] < 0:
        return
    obs[o + SESSION_STEP.IN_SESSION] = 1.0
    obs[o + SESSION_STEP.STEP] = clip01(st.rqi[RI_STEP, i] / ax.af[AF_N_STEPS])
    slo = st.ten[TF_SESSION_SLO, st.rqi[RI_TENANT, i]]
    if slo < INF:
        obs[o + SESSION_STEP.SESSION_SLACK] = clip11((session_deadline(st, i) - now) / slo)


@hot
def session_features(st, ax, obs, now, route_pending):
    """The session groups (config.SESSION_GROUPS) but the per-candidate one: the request being routed, and
    the sessions waiting on a tool, whose next call will follow soon, in total and per home replica."""
    ai = ax.ai
    o = ai[AI_O_SESS]
    o_rep = ai[AI_O_SREP]
    nq = ax.af[AF_N_QUEUE]
    n_rel = st.cnt[K_REL_N]
    obs[o + SESSION.TOOLS_WAITING] = clip01(n_rel / nq)
    if o_rep >= 0:
        for e in range(n_rel):
            r = st.rqi[RI_HOME, int(st.relq[1, e])]
            if r >= 0:
                obs[o_rep + r * F_SREP + SESSION_REPLICA.TOOLS_WAITING] += 1.0
        for r in range(ai[AI_R]):
            obs[o_rep + r * F_SREP + SESSION_REPLICA.TOOLS_WAITING] = clip01(
                obs[o_rep + r * F_SREP + SESSION_REPLICA.TOOLS_WAITING] / nq
            )
    if route_pending:
        i = st.cnt[K_PENDING_ROUTE]
        session_step_features(st, ax, obs, o, i, now)
        home = st.rqi[RI_HOME, i]
        if home >= 0:
            obs[o + SESSION.HAS_HOME] = 1.0
            if o_rep >= 0:
                obs[o_rep + home * F_SREP + SESSION_REPLICA.HOME] = 1.0
