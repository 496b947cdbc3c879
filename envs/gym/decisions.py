"""The pending decision's features, mask and info, and ``observe``, the kernel that writes one env's
observation, action mask and raw info features (docs/envs.md) into zeroed buffers.

Routing: the request being routed, each replica's prefix hits and the replicas that can serve it. Batching:
the K best waiting requests of the forming replica in the ranking rule's order, and that replica's state.
Scaling's mask and info are written with the pool group (features.pool_features).
"""

from __future__ import annotations

from servegym.envs.gym.aux_state import (
    AF_N_COUNTER,
    AF_N_PROMPT,
    AF_N_QUEUE,
    AF_N_SLACK,
    AF_N_WAIT,
    AI_BORDER,
    AI_EV,
    AI_FB,
    AI_IB,
    AI_K,
    AI_M_BATCH,
    AI_M_ROUTE,
    AI_M_SCALE,
    AI_O_CAND,
    AI_O_DEC,
    AI_O_DISAGG,
    AI_O_FORM,
    AI_O_PFX,
    AI_O_REP,
    AI_O_REQ,
    AI_O_SCAND,
    AI_O_SESS,
    AI_PPAD,
    AI_R,
    AI_ROUTES,
    AI_RPAD,
    AI_SK,
    F_CAND,
    F_FORM0,
    F_SCAND,
)
from servegym.envs.gym.config import (
    CANDIDATE,
    DISAGG,
    FORMING,
)
from servegym.envs.gym.features import (
    clip01,
    clip11,
    global_features,
    max_weight,
    pool_features,
    replica_features,
    request_features,
    session_features,
    session_step_features,
    sync_released,
    tenant_counter_rel,
)
from servegym.envs.sim.disagg import queued_prefill_tokens
from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.prefix_cache import prefix_hits
from servegym.envs.sim.queues import next_deadline, request_batch_score, session_deadline
from servegym.envs.sim.replica import admit_chunk, budget_left, has_prefill
from servegym.envs.sim.routing import pending_allowed
from servegym.envs.sim.state import (
    C_NOW,
    EV_BATCH,
    EV_ROUTE,
    EV_SCALE,
    K_BATCH_POLICY,
    K_FORM_REPLICA,
    K_PENDING_ROUTE,
    K_ROUTE_PHASE,
    K_XF_N,
    K_XW_N,
    PI_MAX_SEQS,
    PI_MAX_TOKENS,
    PI_ROLE,
    PI_TP,
    RF_ARRIVAL,
    RF_DEADLINE,
    RF_TPOT_SLO,
    RF_TTFT_SLO,
    RF_VISIBLE,
    RI_GENERATED,
    RI_HOME,
    RI_OUTPUT,
    RI_PFX_LEN,
    RI_PREEMPT,
    RI_PROMPT,
    RI_STEP,
    RI_TENANT,
    RI_TIER,
    TF_COUNTER,
    TF_WEIGHT,
    TIER_INTERACTIVE,
    XI_KV_CAP,
    XI_KV_USED,
    XI_ND,
    XI_NPF,
    XI_NRX,
    XI_POOL,
    XI_QN,
)


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
        obs[o + DISAGG.DECODE_DECISION] = 1.0 if (ev == EV_ROUTE and st.cnt[K_ROUTE_PHASE]) else 0.0
        obs[o + DISAGG.TRANSFER_WAITING] = clip01(st.cnt[K_XW_N] / nq)
        obs[o + DISAGG.TRANSFERS_IN_FLIGHT] = clip01(st.cnt[K_XF_N] / nq)
    if ev == EV_ROUTE:
        route_decision(st, ax, obs, mask, ii, ff, now)
    elif ev == EV_BATCH:  # 'start now' stays enabled from inert_masks
        batch_decision(st, ax, obs, mask, ii, ff, now)
