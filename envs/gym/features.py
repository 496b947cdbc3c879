"""Observation, mask and info-feature kernels of the envs, and the env-side state they read (``EnvAux``).

``EnvAux`` holds what an env keeps beside its simulator for one episode: sizes and offsets (``ai``, filled
from ``config.Layout`` by ``make_aux``), normalization constants and reward weights (``af``), the batch
candidates on offer (``cand``), per-tier cumulative arrival counts and prompt-token sums (``cum``, so rates
need no scan) and pool prices. ``observe`` writes one env's observation, action mask and raw info
features (docs/envs.md) into zeroed buffers; every helper is ``hot`` (inlined, see envs/sim/jit.py).

Each feature is written at its named position (``obs[b + REPLICA.KV_FRAC]``): the names come from the
feature tuples of config.py (``config.feature_index``), so adding a feature is one name in its tuple and one
write here. kernels.py inlines this file; numba's on-disk cache is keyed by the source of every compiled
module and what it imports (envs/__init__.py), so an edit here recompiles what inlines it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from servegym.envs.gym import config as C
from servegym.envs.gym.config import (
    CANDIDATE,
    FORMING,
    GLOBAL,
    POOL,
    REPLICA,
    REQUEST,
    SESSION,
    SESSION_REPLICA,
    SESSION_STEP,
)
from servegym.envs.perf.model import iteration_time_s
from servegym.envs.scenario import Scenario
from servegym.envs.sim import state as S
from servegym.envs.sim.build import pool_price_per_gpu_hour
from servegym.envs.sim.disagg import queued_prefill_tokens
from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.policies import BATCHING_IDS
from servegym.envs.sim.prefix_cache import prefix_hits
from servegym.envs.sim.queues import next_deadline, request_batch_score, session_deadline
from servegym.envs.sim.replica import admit_chunk, budget_left, has_prefill
from servegym.envs.sim.routing import pending_allowed
from servegym.envs.sim.simulator import Simulator
from servegym.envs.sim.state import (
    C_HORIZON,
    C_NOW,
    C_REACTIVE_DOWN,
    C_REACTIVE_UP,
    C_TICK_S,
    EV_BATCH,
    EV_ROUTE,
    EV_SCALE,
    FK_KILL,
    K_BATCH_POLICY,
    K_DROPS,
    K_FINISHED,
    K_FORM_REPLICA,
    K_HOLD_N,
    K_N_OPEN,
    K_NEXT_ARRIVAL,
    K_PENDING_ROUTE,
    K_REL_N,
    K_RELEASED,
    K_ROUTE_PHASE,
    K_SLO_MET,
    K_SLO_MISSED_FINISHED,
    K_XF_N,
    K_XW_N,
    PF_BILLED_GPU_S,
    PF_COLD_START,
    PF_LOST_LAST,
    PI_FIRST_REP,
    PI_MAX,
    PI_MAX_SEQS,
    PI_MAX_TOKENS,
    PI_MIN,
    PI_ROLE,
    PI_SPOT,
    PI_TP,
    RF_ARRIVAL,
    RF_DEADLINE,
    RF_TPOT_SLO,
    RF_TTFT_SLO,
    RF_VISIBLE,
    RI_FIRST,
    RI_GENERATED,
    RI_HOME,
    RI_OUTPUT,
    RI_PFX_LEN,
    RI_PREEMPT,
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
    XI_NRX,
    XI_POOL,
    XI_QN,
    XI_STATE,
)

INF = np.inf

# ---- ai[] int64 fields
(
    AI_MODE,
    AI_R,  # replicas of the running scenario (<= AI_RPAD)
    AI_P,
    AI_RPAD,
    AI_PPAD,
    AI_K,
    AI_SK,  # scale step: action j of a pool is the delta j - SK
    AI_H,  # rate bins
    AI_BORDER,  # batch ranking policy, -1: the scenario's
    AI_NOOP,  # 1: invalid actions become penalized no-ops
    AI_EV,  # pending decision (EV_ROUTE/EV_BATCH/EV_SCALE) or EV_DONE
    AI_DONE,
    AI_ROUTES,  # routing decisions taken this episode (the round-robin pointer a baseline needs)
    AI_PREV_MET,
    AI_PREV_TOK,
    AI_PREV_MISS,
    AI_PREV_DROPS,
    AI_O_DEC,  # observation offsets, -1 when the env has no such group
    AI_O_REQ,
    AI_O_PFX,
    AI_O_CAND,
    AI_O_FORM,
    AI_O_REP,
    AI_O_POOL,
    AI_O_GLOB,
    AI_OBS_N,
    AI_A_ROUTE,  # action index of each decision's dim(s), -1 when absent
    AI_A_BATCH,
    AI_A_SCALE,
    AI_NACT,
    AI_M_ROUTE,  # mask offsets
    AI_M_BATCH,
    AI_M_SCALE,
    AI_MASK_N,
    AI_IB,  # info int buffer: batch section, scale section, size
    AI_IS,
    AI_NI,
    AI_FB,  # info float buffer: batch section, scale section, size
    AI_FS,
    AI_NF,
    AI_REL_FILLED,  # released session steps already summed into cumrel
    AI_O_SESS,  # session group offsets (config.SESSION_GROUPS), -1 without session features
    AI_O_SREP,
    AI_O_SCAND,
    AI_O_DISAGG,  # disaggregation group offset (config.DISAGG_FEATURES), -1 without it
) = range(45)
N_AI = 45

# ---- af[] float64 fields: norms (config.NORM_KEYS order), reward weights (config.REWARD_KEYS order), misc
(
    AF_N_PROMPT,
    AF_N_QUEUE,
    AF_N_SLACK,
    AF_N_WAIT,
    AF_N_COUNTER,
    AF_N_RATE,
    AF_N_COST,
    AF_N_PRICE,
    AF_N_COLD,
    AF_N_TPOT,
    AF_N_STEPS,
) = range(11)
AF_W = 11  # 7 weights, already multiplied by their sign
AF_DAY, AF_BIN_S, AF_PREV_COST, AF_PREV_GAP = 18, 19, 20, 21
N_AF = 22

# features per entity (a replica's and a forming batch's are followed by a one-hot of their pool)
F_REQ, F_POOL, F_CAND = len(C.REQUEST_FEATURES), len(C.POOL_FEATURES), len(C.CANDIDATE_FEATURES)
F_GLOB0, F_FORM0, F_REP0 = len(C.GLOBAL_FEATURES), len(C.FORMING_FEATURES), len(C.REPLICA_FEATURES)
F_SREP, F_SCAND = len(C.SESSION_REPLICA_FEATURES), len(C.SESSION_CANDIDATE_FEATURES)
# Route info: ints (7 per replica + 9 request scalars), floats (2 per replica + 5 request scalars).
N_ROUTE_I, N_ROUTE_F = 9, 5
# Batch info: ints and floats per candidate slot.
N_BATCH_I, N_BATCH_F = 5, 5


class EnvAux(NamedTuple):
    # i8[N_AI + 2 x rate bins]: the fields above, then the left-edge pointer of each rate bin into the rows
    # (first arrivals), then into the release log (later session steps)
    ai: np.ndarray
    af: np.ndarray  # f8[N_AF]
    cand: np.ndarray  # i8[2, K]: request id (-1: empty slot) and admissible flag of each batch slot
    cscore: np.ndarray  # f8[K]: scratch for ranking the batch candidates
    cum: (
        np.ndarray
    )  # i8[3, N + 1]: interactive arrivals, batch arrivals, prompt tokens among the first n requests
    price: np.ndarray  # f8[P]: USD per GPU-hour
    # i8[3, H + 1]: cum's sums over the release log's first k entries (later session steps, whose arrival
    # order only the simulation decides), extended as steps are released (sync_released)
    cumrel: np.ndarray


def info_sizes(r_pad: int, p_pad: int, k: int) -> tuple[int, int, int, int, int, int]:
    """(IB, IS, NI, FB, FS, NF): section offsets and sizes of the info buffers (see docs/envs.md)."""
    ib = 7 * r_pad + N_ROUTE_I
    i_s = ib + N_BATCH_I * k
    fb = 2 * r_pad + N_ROUTE_F
    f_s = fb + N_BATCH_F * k
    return ib, i_s, i_s + 8 * p_pad + 2, fb, f_s, f_s + 3 * p_pad + 2


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


@hot
def route_decision(st, ax, obs, mask, ii, ff, now):
    ai = ax.ai
    i = st.cnt[K_PENDING_ROUTE]
    rp = ai[AI_RPAD]
    if ai[AI_O_REQ] >= 0:
        request_features(st, ax, obs, ai[AI_O_REQ], i, now)
    m = ai[AI_M_ROUTE]
    mask[m] = 0  # the placeholder set by inert_masks
    o = ai[AI_O_PFX]
    npfx = max(1, st.rqi[RI_PFX_LEN, i])
    decode = st.cnt[K_ROUTE_PHASE]  # the decode phase of a disaggregated request: where its KV cache goes
    for r in range(ai[AI_R]):
        if not pending_allowed(st, r):
            continue
        mask[m + r] = 1
        p = st.repi[XI_POOL, r]
        hits = prefix_hits(st, r, i, False)
        if o >= 0:
            obs[o + r] = hits / npfx
        ii[r] = st.repi[XI_QN, r]
        # running sequences; for a decode decision with the slots holding KV caches arriving (decode load)
        ii[rp + r] = st.repi[XI_ND, r] + st.repi[XI_NPF, r] + (st.repi[XI_NRX, r] if decode else 0)
        ii[2 * rp + r] = hits
        ii[3 * rp + r] = p
        ii[4 * rp + r] = st.pooli[PI_TP, p]
        ii[5 * rp + r] = st.pooli[PI_ROLE, p]  # disaggregation: 0 mixed, 1 prefill, 2 decode
        ii[6 * rp + r] = queued_prefill_tokens(st, r)  # Mooncake's queueing estimate (policies)
        ff[r] = st.repi[XI_KV_USED, r] / st.repi[XI_KV_CAP, r]
        ff[rp + r] = ax.price[p]
    b = 7 * rp
    ii[b + 0] = i
    ii[b + 1] = st.rqi[RI_PROMPT, i]
    ii[b + 2] = st.rqi[RI_OUTPUT, i]
    ii[b + 3] = st.rqi[RI_TIER, i]
    ii[b + 4] = st.rqi[RI_TENANT, i]
    ii[b + 5] = ai[AI_ROUTES]
    ii[b + 6] = st.rqi[RI_HOME, i]
    ii[b + 7] = st.rqi[RI_STEP, i]
    ii[b + 8] = decode
    b = 2 * rp
    ff[b + 0] = st.rqf[RF_ARRIVAL, i]
    ff[b + 1] = st.rqf[RF_TTFT_SLO, i]
    ff[b + 2] = st.rqf[RF_TPOT_SLO, i]
    ff[b + 3] = st.rqf[RF_DEADLINE, i]
    ff[b + 4] = session_deadline(st, i)


@hot
def rank_candidates(st, ax, r, now):
    """Fill ``cand`` with the K best visible waiting requests of replica r (score, then request id)."""
    k = ax.ai[AI_K]
    policy = ax.ai[AI_BORDER]
    if policy < 0:
        policy = st.cnt[K_BATCH_POLICY]
    n = 0
    for q in range(st.repi[XI_QN, r]):
        i = st.queue[r, q]
        if st.rqf[RF_VISIBLE, i] > now:
            continue
        s = request_batch_score(st, policy, i)
        if n == k and (s > ax.cscore[k - 1] or (s == ax.cscore[k - 1] and i > ax.cand[0, k - 1])):
            continue
        j = n if n < k else k - 1  # insertion sort into the K best
        while j > 0 and (s < ax.cscore[j - 1] or (s == ax.cscore[j - 1] and i < ax.cand[0, j - 1])):
            ax.cscore[j] = ax.cscore[j - 1]
            ax.cand[0, j] = ax.cand[0, j - 1]
            j -= 1
        ax.cscore[j] = s
        ax.cand[0, j] = i
        if n < k:
            n += 1
    budget = budget_left(st, r)
    pf = has_prefill(st, r)
    for j in range(k):
        if j < n:
            ax.cand[1, j] = 1 if admit_chunk(st, r, ax.cand[0, j], budget, pf) > 0 else 0
        else:
            ax.cand[0, j] = -1
            ax.cand[1, j] = 0
    return n


@hot
def batch_decision(st, ax, obs, mask, ii, ff, now):
    ai = ax.ai
    af = ax.af
    r = st.cnt[K_FORM_REPLICA]
    k = ai[AI_K]
    n = rank_candidates(st, ax, r, now)
    m = ai[AI_M_BATCH]
    oc = ai[AI_O_CAND]
    wmax = max_weight(st)
    i0 = ai[AI_IB]
    f0 = ai[AI_FB]
    for j in range(k):
        ii[i0 + j] = -1
    for j in range(n):
        i = ax.cand[0, j]
        mask[m + j] = ax.cand[1, j]
        u = st.rqi[RI_TENANT, i]
        dl = next_deadline(st, i)
        if oc >= 0:
            b = oc + j * F_CAND
            budget = dl - st.rqf[RF_ARRIVAL, i]
            inter = st.rqi[RI_TIER, i] == TIER_INTERACTIVE
            obs[b + CANDIDATE.PRESENT] = 1.0
            obs[b + CANDIDATE.ADMISSIBLE] = ax.cand[1, j]
            obs[b + CANDIDATE.PROMPT_TOKENS] = clip01(
                (st.rqi[RI_PROMPT, i] + st.rqi[RI_GENERATED, i]) / af[AF_N_PROMPT]
            )
            obs[b + CANDIDATE.TIER_INTERACTIVE] = 1.0 if inter else 0.0
            obs[b + CANDIDATE.TIER_BATCH] = 0.0 if inter else 1.0
            obs[b + CANDIDATE.SLACK] = clip11((dl - now) / af[AF_N_SLACK])
            obs[b + CANDIDATE.SLACK_FRACTION] = clip11((dl - now) / budget) if budget > 0 else 0.0
            obs[b + CANDIDATE.WAITED] = clip01((now - st.rqf[RF_VISIBLE, i]) / af[AF_N_WAIT])
            obs[b + CANDIDATE.TENANT_COUNTER] = tenant_counter_rel(st, u, af[AF_N_COUNTER])
            obs[b + CANDIDATE.TENANT_WEIGHT] = st.ten[TF_WEIGHT, u] / wmax
            obs[b + CANDIDATE.PREEMPTED] = 1.0 if st.rqi[RI_PREEMPT, i] > 0 else 0.0
        ii[i0 + j] = i
        ii[i0 + k + j] = st.rqi[RI_PROMPT, i]
        ii[i0 + 2 * k + j] = st.rqi[RI_TIER, i]
        ii[i0 + 3 * k + j] = u
        ff[f0 + j] = st.rqf[RF_ARRIVAL, i]
        ff[f0 + k + j] = dl
        ff[f0 + 2 * k + j] = st.ten[TF_COUNTER, u]
        ff[f0 + 3 * k + j] = st.ten[TF_WEIGHT, u]
        ii[i0 + 4 * k + j] = st.rqi[RI_STEP, i]
        ff[f0 + 4 * k + j] = session_deadline(st, i)
        if ai[AI_O_SCAND] >= 0:
            session_step_features(st, ax, obs, ai[AI_O_SCAND] + j * F_SCAND, i, now)
    of = ai[AI_O_FORM]
    if of >= 0:
        p = st.repi[XI_POOL, r]
        seqs = st.pooli[PI_MAX_SEQS, p]
        vis = 0
        for q in range(st.repi[XI_QN, r]):
            if st.rqf[RF_VISIBLE, st.queue[r, q]] <= now:
                vis += 1
        obs[of + FORMING.VALID] = 1.0
        obs[of + FORMING.RUNNING] = clip01((st.repi[XI_ND, r] + st.repi[XI_NPF, r]) / seqs)
        obs[of + FORMING.KV_FRAC] = st.repi[XI_KV_USED, r] / st.repi[XI_KV_CAP, r]
        obs[of + FORMING.BUDGET_LEFT] = clip01(budget_left(st, r) / st.pooli[PI_MAX_TOKENS, p])
        obs[of + FORMING.PREFILLING] = clip01(st.repi[XI_NPF, r] / seqs)
        obs[of + FORMING.QUEUE_LEN] = clip01(st.repi[XI_QN, r] / af[AF_N_QUEUE])
        obs[of + FORMING.VISIBLE_WAITING] = clip01(vis / af[AF_N_QUEUE])
        obs[of + F_FORM0 + p] = 1.0


@hot
def inert_masks(ax, mask):
    """One placeholder value per dim (route 0, batch 'start', scale 'hold'), so no dim is ever empty."""
    ai = ax.ai
    if ai[AI_M_ROUTE] >= 0:
        mask[ai[AI_M_ROUTE]] = 1
    if ai[AI_M_BATCH] >= 0:
        mask[ai[AI_M_BATCH] + ai[AI_K]] = 1
    if ai[AI_M_SCALE] >= 0:
        ns = 2 * ai[AI_SK] + 1
        for p in range(ai[AI_PPAD]):
            mask[ai[AI_M_SCALE] + p * ns + ai[AI_SK]] = 1


@kernel
def observe(st, ax, obs, mask, ii, ff):
    """Write the observation, mask and info features of the pending decision into zeroed buffers."""
    ai = ax.ai
    now = st.clock[C_NOW]
    ev = ai[AI_EV]
    sync_released(st, ax)
    inert_masks(ax, mask)
    if ai[AI_O_DEC] >= 0 and EV_ROUTE <= ev <= EV_SCALE:
        obs[ai[AI_O_DEC] + ev - EV_ROUTE] = 1.0
    if ai[AI_O_REP] >= 0:
        replica_features(st, ax, obs, now)
    # a pending tick overwrites the mask rows of the real pools; padded pools keep 'hold' only
    pool_features(st, ax, obs, mask, ii, ff, now, ai[AI_M_SCALE] >= 0 and ev == EV_SCALE)
    global_features(st, ax, obs, now)
    if ai[AI_O_SESS] >= 0:
        session_features(st, ax, obs, now, ev == EV_ROUTE)
    o = ai[AI_O_DISAGG]
    if o >= 0:  # prefill/decode disaggregation (config.DISAGG_FEATURES)
        nq = ax.af[AF_N_QUEUE]
        obs[o + C.DISAGG.DECODE_DECISION] = 1.0 if (ev == EV_ROUTE and st.cnt[K_ROUTE_PHASE]) else 0.0
        obs[o + C.DISAGG.TRANSFER_WAITING] = clip01(st.cnt[K_XW_N] / nq)
        obs[o + C.DISAGG.TRANSFERS_IN_FLIGHT] = clip01(st.cnt[K_XF_N] / nq)
    if ev == EV_ROUTE:
        route_decision(st, ax, obs, mask, ii, ff, now)
    elif ev == EV_BATCH:  # 'start now' stays enabled from inert_masks
        batch_decision(st, ax, obs, mask, ii, ff, now)


# ---------------------------------------------------------------- building the aux state (Python)


def pool_prices(scenario: Scenario) -> np.ndarray:
    """USD per GPU-hour of each pool: the scenario's price, else the GPU's default (build.py)."""
    return np.array([pool_price_per_gpu_hour(p) for p in scenario.pools], dtype=np.float64)


def day_period(cfg: dict[str, Any], scenario: Scenario) -> float:
    if cfg["day_period_s"] is not None:
        return float(cfg["day_period_s"])
    for src in scenario.sources:
        diurnal = getattr(getattr(src, "arrival", None), "diurnal", None)
        if diurnal is not None:
            return float(diurnal.period_s)
    return 86400.0


def make_aux(lay: C.Layout, cfg: dict[str, Any], scenario: Scenario, sim: Simulator) -> EnvAux:
    """The env-side state of one episode."""
    ai = np.zeros(N_AI + 2 * lay.rate_bins, np.int64)
    ai[AI_MODE] = lay.mode
    ai[AI_R] = sum(p.max_replicas for p in scenario.pools)
    ai[AI_P] = len(scenario.pools)
    ai[AI_RPAD], ai[AI_PPAD], ai[AI_K] = lay.r_pad, lay.p_pad, lay.k
    ai[AI_SK], ai[AI_H] = lay.scale_step, lay.rate_bins
    ai[AI_BORDER] = -1 if cfg["batch_order"] == "scenario" else BATCHING_IDS[cfg["batch_order"]]
    ai[AI_NOOP] = cfg["invalid_action"] == "noop_penalty"
    for f, g in (
        (AI_O_DEC, "decision"),
        (AI_O_REQ, "request"),
        (AI_O_PFX, "prefix_hits"),
        (AI_O_CAND, "candidates"),
        (AI_O_FORM, "forming"),
        (AI_O_REP, "replicas"),
        (AI_O_POOL, "pools"),
        (AI_O_GLOB, "global"),
        (AI_O_SESS, "session"),
        (AI_O_SREP, "session_replicas"),
        (AI_O_SCAND, "session_candidates"),
        (AI_O_DISAGG, "disagg"),
    ):
        ai[f] = lay.off(g)
    ai[AI_OBS_N] = lay.obs_size
    ai[AI_A_ROUTE], ai[AI_A_BATCH], ai[AI_A_SCALE] = lay.act_offsets
    ai[AI_NACT] = len(lay.nvec)
    ai[AI_M_ROUTE], ai[AI_M_BATCH], ai[AI_M_SCALE] = lay.mask_offsets
    ai[AI_MASK_N] = lay.mask_size
    (ai[AI_IB], ai[AI_IS], ai[AI_NI], ai[AI_FB], ai[AI_FS], ai[AI_NF]) = info_sizes(
        lay.r_pad, lay.p_pad, lay.k
    )
    af = np.zeros(N_AF)
    af[: len(C.NORM_KEYS)] = [float(cfg["norm"][k]) for k in C.NORM_KEYS]
    af[AF_W : AF_W + len(C.REWARD_KEYS)] = [
        s * float(cfg["reward"][k]) for k, s in zip(C.REWARD_KEYS, C.REWARD_SIGNS, strict=True)
    ]
    af[AF_DAY] = day_period(cfg, scenario)
    af[AF_BIN_S] = float(cfg["rate_bin_s"])
    st = sim.state
    n = st.rqf.shape[1]
    cum = np.zeros((3, n + 1), np.int64)
    tier = st.rqi[S.RI_TIER]
    np.cumsum(tier == S.TIER_INTERACTIVE, out=cum[0, 1:])
    np.cumsum(tier == S.TIER_BATCH, out=cum[1, 1:])
    np.cumsum(st.rqi[S.RI_PROMPT], out=cum[2, 1:])
    cand = np.full((2, lay.k), -1, np.int64)
    cand[1] = 0
    price = np.zeros(lay.p_pad)
    price[: len(scenario.pools)] = pool_prices(scenario)
    n_later = st.rlog.shape[0]
    return EnvAux(ai, af, cand, np.zeros(lay.k), cum, price, np.zeros((3, n_later + 1), np.int64))
