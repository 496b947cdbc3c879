"""Per-replica kernels: waiting queue, prefix cache, vLLM-style continuous batching and the replica lifecycle.

One iteration of a replica is formed in three steps, as in vLLM's scheduler with chunked prefill
(Sarathi-Serve):
1. ``prepare_running``: every decoding sequence gets one token and, when its last KV block is full, a new
   block; when blocks run out the most recently admitted sequence is preempted by recompute (vLLM's default).
   Sequences still prefilling get the next chunk of the token budget.
2. admission of waiting requests in policy order while the sequence limit, the token budget and the KV cache
   (with vLLM's 1% watermark) allow; the first request that does not fit stops admission (head-of-line, as
   vLLM does).
3. ``launch``: the iteration's duration comes from the fitted perf model of the replica's pool.

Decoding sequences are never visited one by one. A sequence that joined the decode set at iteration ``it0``
with context ``ctx0`` has context ``ctx0 + it - it0`` at iteration ``it``; so the replica keeps the sum of the
contexts, a histogram of ``(ctx0 - it0) mod 16`` (the sequences needing a new 16-token block at iteration
``it`` are one bucket of it), per-tenant counts for VTC, and a min-heap of the iteration at which each
sequence emits its last token. An iteration then costs O(prefilling sequences + tenants + completions),
not O(batch size).

All helpers are inlined into the few entry points of ``core.py``: numba passes the state tuple to a
non-inlined call as its flattened array descriptors, which costs more than most of these bodies.
"""

from __future__ import annotations

import numpy as np

from servegym.envs.perf.model import iteration_time_s
from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.policies import BATCH_SESSION_EDF, BATCH_SESSION_LAS, batch_score
from servegym.envs.sim.sessions import release_next
from servegym.envs.sim.state import (
    C_LAST_LEFT_COUNTER,
    C_MAX_GAP,
    C_MAX_WAIT,
    FK_NONE,
    K_ADMIT_SEQ,
    K_BATCH_POLICY,
    K_DROPS,
    K_FINISHED,
    K_HOLD_HEAD,
    K_HOLD_N,
    K_ITERATIONS,
    K_N_TENANTS,
    K_PC_STAMP,
    K_PREEMPTIONS,
    K_SLO_MET,
    K_SLO_MET_TOKENS,
    K_SLO_MISSED_FINISHED,
    K_TRACE_N,
    K_XFER_RETRY,
    K_XW_HEAD,
    K_XW_N,
    KV_BLOCK_TOKENS,
    LS_FREE,
    LS_HEAP_KEY,
    LS_HEAP_SLOT,
    LS_PREFILL,
    PF_BILLED_GPU_S,
    PF_COLD_START,
    PI_CHUNKED,
    PI_MAX_SEQS,
    PI_MAX_TOKENS,
    PI_PREFIX,
    PI_REGION,
    PI_ROLE,
    PI_TP,
    PREFIX_BLOCK_TOKENS,
    PREFIX_WAYS,
    RF_ARRIVAL,
    RF_DEADLINE,
    RF_FINISH,
    RF_FIRST,
    RF_HANDOFF,
    RF_TPOT_SLO,
    RF_TTFT_SLO,
    RF_VISIBLE,
    RF_XOVL,
    RI_CACHED,
    RI_FIRST,
    RI_GENERATED,
    RI_NEXT,
    RI_OUTPUT,
    RI_PFX_LEN,
    RI_PFX_START,
    RI_PREEMPT,
    RI_PROMPT,
    RI_RECOMPUTED,
    RI_REGION,
    RI_STATUS,
    RI_STEP,
    RI_TENANT,
    RI_TIER,
    RI_XCTX,
    RI_XSRC,
    ROLE_PREFILL,
    RS_ACTIVE,
    RS_DRAINING,
    RS_OFF,
    RS_STARTING,
    SL_ADMIT,
    SL_CHUNK,
    SL_CTX,
    SL_END,
    SL_IT0,
    SL_LEFT,
    SL_PHASE,
    SL_REQ,
    ST_DROPPED,
    ST_FINISHED,
    TF_COUNTER,
    TF_SESSION_SLO,
    TF_WAITING,
    TF_WEIGHT,
    TIER_INTERACTIVE,
    TR_DECODE,
    TR_DURATION,
    TR_KV_CTX,
    TR_PREFILL,
    TR_REPLICA,
    TR_START,
    XF_BUSY_S,
    XF_FAULT,
    XF_ITER_DT,
    XF_KV_BLOCK_S,
    XF_KV_T,
    XF_NEXT,
    XF_ON_SINCE,
    XF_READY,
    XF_UP_S,
    XF_UP_SINCE,
    XI_BUSY,
    XI_DSUM,
    XI_FKIND,
    XI_IT,
    XI_KV_CAP,
    XI_KV_USED,
    XI_ND,
    XI_NDEC_ITER,
    XI_NFREE,
    XI_NPF,
    XI_NRX,
    XI_NXF,
    XI_PC_SETS,
    XI_POOL,
    XI_QN,
    XI_STATE,
)

INF = np.inf
# vLLM keeps 1% of KV blocks free when admitting (BlockSpaceManager watermark=0.01) to avoid instant preemption.
KV_WATERMARK = 0.01
B = KV_BLOCK_TOKENS


@hot
def kv_touch(st, r, now):
    """Close the KV-usage integral up to ``now``; call before every change of the used blocks."""
    st.repf[XF_KV_BLOCK_S, r] += st.repi[XI_KV_USED, r] * (now - st.repf[XF_KV_T, r])
    st.repf[XF_KV_T, r] = now


@hot
def kv_limit(st, r):
    """Blocks admission may fill: capacity less vLLM's watermark."""
    cap = st.repi[XI_KV_CAP, r]
    return cap - max(1, int(cap * KV_WATERMARK))


@hot
def blocks_for(tokens):
    return (tokens + B - 1) // B


@hot
def drop_request(st, i, t):
    st.rqi[RI_STATUS, i] = ST_DROPPED
    st.rqf[RF_FINISH, i] = t
    st.cnt[K_DROPS] += 1


@hot
def finish_request(st, i, t):
    out = st.rqi[RI_OUTPUT, i]
    st.rqi[RI_GENERATED, i] = out
    st.rqf[RF_FINISH, i] = t
    st.rqi[RI_STATUS, i] = ST_FINISHED
    st.cnt[K_FINISHED] += 1
    if st.rqi[RI_NEXT, i] >= 0:
        release_next(st, i, t)  # closed loop: the session's next step arrives after its pause
    # the SLO rule of envs/metrics.py, evaluated once here so that envs can reward per step
    if st.rqi[RI_TIER, i] == TIER_INTERACTIVE:
        first = st.rqf[RF_FIRST, i]
        tpot = (t - first) / (out - 1) if out > 1 else 0.0
        met = first - st.rqf[RF_ARRIVAL, i] <= st.rqf[RF_TTFT_SLO, i] and tpot <= st.rqf[RF_TPOT_SLO, i]
    else:
        met = t <= st.rqf[RF_DEADLINE, i]
    if met:
        st.cnt[K_SLO_MET] += 1
        st.cnt[K_SLO_MET_TOKENS] += out
    else:
        st.cnt[K_SLO_MISSED_FINISHED] += 1


@hot
def return_latency(st, r, i):
    return st.region_lat[st.pooli[PI_REGION, st.repi[XI_POOL, r]], st.rqi[RI_REGION, i]]


@hot
def rng_uniform(st):
    """xorshift64* (Vigna 2016): the core's single random stream, seeded from the scenario's generator."""
    x = st.rng[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    st.rng[0] = x
    return float((x * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


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


@hot
def holds_no_work(st, r):
    """Nothing queued, running, arriving (a KV cache in transfer, disagg.py) or held as a transfer source:
    a draining replica may turn off."""
    return (
        st.repi[XI_ND, r] + st.repi[XI_NPF, r] + st.repi[XI_QN, r] + st.repi[XI_NRX, r] + st.repi[XI_NXF, r]
        == 0
    )


@kernel
def xwait_push(st, i):
    """Queue prefilled request i for a decode replica (disaggregation: the ring of KV caches waiting)."""
    cap = st.xwait.shape[0]
    st.xwait[(st.cnt[K_XW_HEAD] + st.cnt[K_XW_N]) % cap] = i
    st.cnt[K_XW_N] += 1


@hot
def hand_off(st, r, k, i, ctx, now):
    """Request i's prefill on prefill replica r ended with ``ctx`` tokens of KV in slot k: free the slot,
    keep the KV blocks on r, and queue the request for a decode replica (envs/sim/disagg.py)."""
    st.rqi[RI_XSRC, i] = r
    st.rqi[RI_XCTX, i] = ctx
    st.rqf[RF_HANDOFF, i] = now
    st.rqf[RF_XOVL, i] = st.repf[XF_ITER_DT, r]  # the prefill iteration that just ended
    st.repi[XI_NXF, r] += 1
    slot_free(st, r, k)
    xwait_push(st, i)
    st.cnt[K_XFER_RETRY] = 1


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


# ---------------------------------------------------------------- prefix cache (8-way set-associative LRU)


@hot
def _pc_set(h, sets):
    # Mooncake hash ids are small consecutive integers: mix them so that they spread over the sets.
    x = (h ^ (h >> 17)) * 0x5BD1E995
    x = x ^ (x >> 15)
    if x < 0:
        x = -x
    return x % sets


@hot
def prefix_hits(st, r, i, touch):
    """Leading 512-token prefix blocks of request i that replica r holds in its prefix cache."""
    sets = st.repi[XI_PC_SETS, r]
    if sets == 0:
        return 0
    hits = 0
    start = st.rqi[RI_PFX_START, i]
    for j in range(start, start + st.rqi[RI_PFX_LEN, i]):
        h = st.pfx_hash[j]
        base = _pc_set(h, sets) * PREFIX_WAYS
        found = -1
        for w in range(PREFIX_WAYS):
            if st.pc[0, r, base + w] == h:
                found = base + w
                break
        if found < 0:
            break
        hits += 1
        if touch:
            st.cnt[K_PC_STAMP] += 1
            st.pc[1, r, found] = st.cnt[K_PC_STAMP]
    return hits


@hot
def prefix_insert(st, r, i):
    sets = st.repi[XI_PC_SETS, r]
    if sets == 0:
        return
    start = st.rqi[RI_PFX_START, i]
    for j in range(start, start + st.rqi[RI_PFX_LEN, i]):
        h = st.pfx_hash[j]
        base = _pc_set(h, sets) * PREFIX_WAYS
        way = base
        for w in range(PREFIX_WAYS):
            if st.pc[0, r, base + w] == h:
                way = base + w
                break
            if st.pc[1, r, base + w] < st.pc[1, r, way]:
                way = base + w
        st.pc[0, r, way] = h
        st.cnt[K_PC_STAMP] += 1
        st.pc[1, r, way] = st.cnt[K_PC_STAMP]


# ---------------------------------------------------------------- slots and the completion heap


@hot
def slot_alloc(st, r):
    n = st.repi[XI_NFREE, r] - 1
    st.repi[XI_NFREE, r] = n
    return st.slot[LS_FREE, r, n]


@hot
def slot_free(st, r, k):
    st.slot[SL_REQ, r, k] = -1
    n = st.repi[XI_NFREE, r]
    st.slot[LS_FREE, r, n] = k
    st.repi[XI_NFREE, r] = n + 1


@hot
def _heap_less(st, r, a, b):
    ka = st.slot[LS_HEAP_KEY, r, a]
    kb = st.slot[LS_HEAP_KEY, r, b]
    return ka < kb or (ka == kb and st.slot[LS_HEAP_SLOT, r, a] < st.slot[LS_HEAP_SLOT, r, b])


@hot
def _heap_swap(st, r, a, b):
    for f in (LS_HEAP_KEY, LS_HEAP_SLOT):
        t = st.slot[f, r, a]
        st.slot[f, r, a] = st.slot[f, r, b]
        st.slot[f, r, b] = t


@hot
def _heap_fix(st, r, p):
    n = st.repi[XI_ND, r]
    while p > 0 and _heap_less(st, r, p, (p - 1) >> 1):
        _heap_swap(st, r, p, (p - 1) >> 1)
        p = (p - 1) >> 1
    while True:
        c = 2 * p + 1
        if c >= n:
            break
        if c + 1 < n and _heap_less(st, r, c + 1, c):
            c += 1
        if not _heap_less(st, r, c, p):
            break
        _heap_swap(st, r, p, c)
        p = c


@hot
def _heap_delete_at(st, r, p):
    last = st.repi[XI_ND, r] - 1
    st.repi[XI_ND, r] = last
    if p != last:
        st.slot[LS_HEAP_KEY, r, p] = st.slot[LS_HEAP_KEY, r, last]
        st.slot[LS_HEAP_SLOT, r, p] = st.slot[LS_HEAP_SLOT, r, last]
        _heap_fix(st, r, p)


@hot
def join_decode(st, r, k, ctx, it):
    """Slot k finished its prefill with ``ctx`` tokens in KV at iteration count ``it``: it decodes from now on."""
    i = st.slot[SL_REQ, r, k]
    st.slot[SL_CTX, r, k] = ctx
    st.slot[SL_IT0, r, k] = it
    st.slot[SL_LEFT, r, k] = 0
    ph = (ctx - it) % B
    st.slot[SL_PHASE, r, k] = ph
    st.slot[SL_END, r, k] = it + st.rqi[RI_OUTPUT, i] - st.rqi[RI_GENERATED, i]
    st.repx[r, ph] += 1
    st.repx[r, B + st.rqi[RI_TENANT, i]] += 1
    st.repi[XI_DSUM, r] += ctx
    n = st.repi[XI_ND, r]
    st.slot[LS_HEAP_KEY, r, n] = st.slot[SL_END, r, k]
    st.slot[LS_HEAP_SLOT, r, n] = k
    st.repi[XI_ND, r] = n + 1
    _heap_fix(st, r, n)


@hot
def leave_decode(st, r, k):
    """Take decoding slot k out of the aggregates (not out of the heap); return its current KV context."""
    i = st.slot[SL_REQ, r, k]
    ctx = st.slot[SL_CTX, r, k] + st.repi[XI_IT, r] - st.slot[SL_IT0, r, k]
    st.repi[XI_DSUM, r] -= ctx
    st.repx[r, st.slot[SL_PHASE, r, k]] -= 1
    st.repx[r, B + st.rqi[RI_TENANT, i]] -= 1
    return ctx


@kernel
def _prefill_list_remove(st, r, k):
    n = st.repi[XI_NPF, r]
    for j in range(n):
        if st.slot[LS_PREFILL, r, j] == k:
            st.slot[LS_PREFILL, r, j] = st.slot[LS_PREFILL, r, n - 1]
            st.repi[XI_NPF, r] = n - 1
            return


@kernel
def preempt_slot(st, r, k, now):
    """Preemption by recompute: free the KV blocks and put the request back in its replica's queue."""
    i = st.slot[SL_REQ, r, k]
    if st.slot[SL_LEFT, r, k] > 0:
        _prefill_list_remove(st, r, k)
        ctx = st.slot[SL_CTX, r, k]
        blocks = blocks_for(st.rqi[RI_PROMPT, i] + st.rqi[RI_GENERATED, i])
    else:
        for p in range(st.repi[XI_ND, r]):
            if st.slot[LS_HEAP_SLOT, r, p] == k:
                _heap_delete_at(st, r, p)
                break
        ctx = leave_decode(st, r, k)
        st.rqi[RI_GENERATED, i] = st.rqi[RI_OUTPUT, i] - (st.slot[SL_END, r, k] - st.repi[XI_IT, r])
        blocks = blocks_for(ctx)
    kv_touch(st, r, now)
    st.repi[XI_KV_USED, r] -= blocks
    st.rqi[RI_RECOMPUTED, i] += ctx
    st.rqi[RI_PREEMPT, i] += 1
    st.cnt[K_PREEMPTIONS] += 1
    slot_free(st, r, k)
    st.rqf[RF_VISIBLE, i] = now  # its wait for max_wait restarts
    if not queue_push(st, r, i):
        drop_request(st, i, now)


@kernel
def _most_recent_slot(st, r):
    v = -1
    for k in range(st.slot.shape[2]):
        # a slot reserved for an incoming KV cache (SL_LEFT < 0, disagg.py) is not running: never preempted
        if (
            st.slot[SL_REQ, r, k] >= 0
            and st.slot[SL_LEFT, r, k] >= 0
            and (v < 0 or st.slot[SL_ADMIT, r, k] > st.slot[SL_ADMIT, r, v])
        ):
            v = k
    return v


@hot
def prepare_running(st, r, now):
    """Schedule the running sequences' work for the next iteration; return the token budget left."""
    it = st.repi[XI_IT, r]
    phase_now = (-it) % B  # decoders whose context is a multiple of 16 need a block this iteration
    need = st.repx[r, phase_now]
    while need > st.repi[XI_KV_CAP, r] - st.repi[XI_KV_USED, r]:
        v = _most_recent_slot(st, r)
        if st.slot[SL_LEFT, r, v] == 0 and st.slot[SL_PHASE, r, v] == phase_now:
            need -= 1
        preempt_slot(st, r, v, now)
    kv_touch(st, r, now)
    st.repi[XI_KV_USED, r] += need
    nd = st.repi[XI_ND, r]
    st.repi[XI_NDEC_ITER, r] = nd
    # vLLM requires max_num_batched_tokens >= max_num_seqs (validated in the scenario), so decodes always fit.
    budget = st.pooli[PI_MAX_TOKENS, st.repi[XI_POOL, r]] - nd
    for j in range(st.repi[XI_NPF, r]):
        k = st.slot[LS_PREFILL, r, j]
        c = min(st.slot[SL_LEFT, r, k], max(budget, 0))
        st.slot[SL_CHUNK, r, k] = c
        budget -= c
    return budget


@hot
def has_prefill(st, r):
    for j in range(st.repi[XI_NPF, r]):
        if st.slot[SL_CHUNK, r, st.slot[LS_PREFILL, r, j]] > 0:
            return True
    return False


@hot
def budget_left(st, r):
    used = st.repi[XI_NDEC_ITER, r]
    for j in range(st.repi[XI_NPF, r]):
        used += st.slot[SL_CHUNK, r, st.slot[LS_PREFILL, r, j]]
    return st.pooli[PI_MAX_TOKENS, st.repi[XI_POOL, r]] - used


@hot
def admit_chunk(st, r, i, budget, prefill_scheduled):
    """Tokens request i would prefill this iteration if admitted now, or 0 if it does not fit."""
    pool = st.repi[XI_POOL, r]
    running = st.repi[XI_ND, r] + st.repi[XI_NPF, r] + st.repi[XI_NRX, r]
    if running >= st.pooli[PI_MAX_SEQS, pool] or budget <= 0:
        return 0
    total = st.rqi[RI_PROMPT, i] + st.rqi[RI_GENERATED, i]
    if st.repi[XI_KV_USED, r] + blocks_for(total) > kv_limit(st, r):
        return 0
    if st.pooli[PI_CHUNKED, pool]:
        return min(total, budget)
    if total <= budget or not prefill_scheduled:
        return total
    return 0


@hot
def admit(st, r, i, budget, now):
    """Move request i (already out of the queue) into a running slot; return its prefill chunk."""
    pool = st.repi[XI_POOL, r]
    total = st.rqi[RI_PROMPT, i] + st.rqi[RI_GENERATED, i]
    cached = 0
    if st.pooli[PI_PREFIX, pool]:
        # vLLM always recomputes at least the last prompt token, so a full hit still prefills one token.
        cached = min(prefix_hits(st, r, i, True) * PREFIX_BLOCK_TOKENS, st.rqi[RI_PROMPT, i] - 1)
    left = total - cached
    c = min(left, budget) if st.pooli[PI_CHUNKED, pool] else left
    if st.rqi[RI_GENERATED, i] == 0 and st.rqi[RI_PREEMPT, i] == 0:
        st.ten[TF_COUNTER, st.rqi[RI_TENANT, i]] += st.rqi[RI_PROMPT, i]  # VTC: 1 per input token
    st.rqi[RI_CACHED, i] += cached
    k = slot_alloc(st, r)
    st.slot[SL_REQ, r, k] = i
    st.cnt[K_ADMIT_SEQ] += 1
    st.slot[SL_ADMIT, r, k] = st.cnt[K_ADMIT_SEQ]
    st.slot[SL_CTX, r, k] = cached
    st.slot[SL_LEFT, r, k] = left
    st.slot[SL_CHUNK, r, k] = c
    n = st.repi[XI_NPF, r]
    st.slot[LS_PREFILL, r, n] = k
    st.repi[XI_NPF, r] = n + 1
    kv_touch(st, r, now)
    st.repi[XI_KV_USED, r] += blocks_for(total)
    return c


@hot
def admit_builtin(st, r, budget, now):
    pool = st.repi[XI_POOL, r]
    if st.repi[XI_ND, r] + st.repi[XI_NPF, r] + st.repi[XI_NRX, r] >= st.pooli[PI_MAX_SEQS, pool]:
        return  # full: skip the queue scan (expired requests are swept at the next control tick)
    if st.repi[XI_KV_USED, r] >= kv_limit(st, r):
        return
    prefill_scheduled = has_prefill(st, r)
    while budget > 0:
        k = expire_and_pick(st, r, now)
        if k < 0:
            break
        i = st.queue[r, k]
        if admit_chunk(st, r, i, budget, prefill_scheduled) == 0:
            break
        queue_remove_at(st, r, k)
        budget -= admit(st, r, i, budget, now)
        prefill_scheduled = True


@hot
def launch(st, r, now):
    """Start the formed iteration (its length from the perf model), or go idle until the next queued arrival."""
    pool = st.repi[XI_POOL, r]
    n_pf = 0
    pairs = 0.0
    for j in range(st.repi[XI_NPF, r]):
        k = st.slot[LS_PREFILL, r, j]
        c = st.slot[SL_CHUNK, r, k]
        n_pf += c
        pairs += c * (st.slot[SL_CTX, r, k] + (c + 1) * 0.5)
    n_dec = st.repi[XI_NDEC_ITER, r]
    if n_pf + n_dec == 0:
        st.repi[XI_BUSY, r] = 0
        if st.repi[XI_STATE, r] == RS_DRAINING and holds_no_work(st, r):
            turn_off(st, r, now)
        else:
            st.repf[XF_NEXT, r] = next_visible_time(st, r, now)
        return
    dt = iteration_time_s(st.coef[pool], n_pf, pairs, n_dec, st.repi[XI_DSUM, r])
    k = st.cnt[K_TRACE_N]
    if k < st.trace.shape[0]:  # per-iteration trace (off: capacity 0)
        st.trace[k, TR_REPLICA] = r
        st.trace[k, TR_START] = now
        st.trace[k, TR_PREFILL] = n_pf
        st.trace[k, TR_DECODE] = n_dec
        st.trace[k, TR_KV_CTX] = st.repi[XI_DSUM, r]
        st.trace[k, TR_DURATION] = dt
        st.cnt[K_TRACE_N] = k + 1
    st.repi[XI_BUSY, r] = 1
    st.repf[XF_ITER_DT, r] = dt
    st.repf[XF_NEXT, r] = now + dt
    st.repf[XF_BUSY_S, r] += dt
    st.cnt[K_ITERATIONS] += 1


@hot
def complete_iteration(st, r, now):
    """Apply the finished iteration: one token per decoding sequence, prefill progress, completions."""
    n_dec = st.repi[XI_NDEC_ITER, r]
    if n_dec > 0:
        st.repi[XI_DSUM, r] += n_dec
        for u in range(st.cnt[K_N_TENANTS]):
            st.ten[TF_COUNTER, u] += 2.0 * st.repx[r, B + u]  # VTC: 2 per output token
    it = st.repi[XI_IT, r] + 1
    st.repi[XI_IT, r] = it
    st.repi[XI_NDEC_ITER, r] = 0
    while st.repi[XI_ND, r] > 0 and st.slot[LS_HEAP_KEY, r, 0] <= it:
        k = st.slot[LS_HEAP_SLOT, r, 0]
        _heap_delete_at(st, r, 0)
        i = st.slot[SL_REQ, r, k]
        ctx = leave_decode(st, r, k)
        kv_touch(st, r, now)
        st.repi[XI_KV_USED, r] -= blocks_for(ctx)
        finish_request(st, i, now + return_latency(st, r, i))
        slot_free(st, r, k)
    prefix_on = st.pooli[PI_PREFIX, st.repi[XI_POOL, r]]
    hands_off = st.pooli[PI_ROLE, st.repi[XI_POOL, r]] == ROLE_PREFILL
    j = st.repi[XI_NPF, r] - 1
    while j >= 0:
        k = st.slot[LS_PREFILL, r, j]
        c = st.slot[SL_CHUNK, r, k]
        if c > 0:
            st.slot[SL_CHUNK, r, k] = 0
            st.slot[SL_CTX, r, k] += c
            st.slot[SL_LEFT, r, k] -= c
            if st.slot[SL_LEFT, r, k] == 0:
                n = st.repi[XI_NPF, r] - 1
                st.slot[LS_PREFILL, r, j] = st.slot[LS_PREFILL, r, n]
                st.repi[XI_NPF, r] = n
                i = st.slot[SL_REQ, r, k]
                if prefix_on:
                    prefix_insert(st, r, i)
                g = st.rqi[RI_GENERATED, i] + 1  # the last prefill chunk samples the next token
                st.rqi[RI_GENERATED, i] = g
                u = st.rqi[RI_TENANT, i]
                st.ten[TF_COUNTER, u] += 2.0
                back = return_latency(st, r, i)
                if g == 1:
                    st.rqf[RF_FIRST, i] = now + back
                if g == st.rqi[RI_OUTPUT, i]:
                    kv_touch(st, r, now)
                    st.repi[XI_KV_USED, r] -= blocks_for(st.slot[SL_CTX, r, k])
                    finish_request(st, i, now + back)
                    slot_free(st, r, k)
                elif hands_off:
                    hand_off(st, r, k, i, st.slot[SL_CTX, r, k], now)
                else:
                    join_decode(st, r, k, st.slot[SL_CTX, r, k], it)
        j -= 1
    st.repi[XI_BUSY, r] = 0


@kernel
def sync_generated(st):
    """Write the exact generated-token count of every decoding sequence back to its request."""
    for r in range(st.repi.shape[1]):
        it = st.repi[XI_IT, r]
        for p in range(st.repi[XI_ND, r]):
            k = st.slot[LS_HEAP_SLOT, r, p]
            i = st.slot[SL_REQ, r, k]
            st.rqi[RI_GENERATED, i] = st.rqi[RI_OUTPUT, i] - (st.slot[SL_END, r, k] - it)


# ---------------------------------------------------------------- lifecycle and billing


@kernel
def turn_on(st, r, now):
    p = st.repi[XI_POOL, r]
    st.repi[XI_STATE, r] = RS_STARTING
    st.repf[XF_ON_SINCE, r] = now
    st.repf[XF_READY, r] = now + st.poolf[PF_COLD_START, p]
    st.repf[XF_NEXT, r] = st.repf[XF_READY, r]


@kernel
def activate(st, r, now):
    st.repi[XI_STATE, r] = RS_ACTIVE
    st.repf[XF_UP_SINCE, r] = now
    st.repf[XF_NEXT, r] = INF
    st.repf[XF_KV_T, r] = now


@kernel
def turn_off(st, r, now):
    p = st.repi[XI_POOL, r]
    s = st.repi[XI_STATE, r]
    if s == RS_ACTIVE or s == RS_DRAINING:
        st.repf[XF_UP_S, r] += now - st.repf[XF_UP_SINCE, r]
        kv_touch(st, r, now)
    if s != RS_OFF:
        st.poolf[PF_BILLED_GPU_S, p] += (now - st.repf[XF_ON_SINCE, r]) * st.pooli[PI_TP, p]
    st.repi[XI_STATE, r] = RS_OFF
    st.repf[XF_NEXT, r] = INF
    st.repi[XI_BUSY, r] = 0
    # a replica that is off cannot fail or be reclaimed (C_NEXT_FAULT may go stale: see state.py)
    st.repf[XF_FAULT, r] = INF
    st.repi[XI_FKIND, r] = FK_NONE


@kernel
def start_drain(st, r, now):
    if st.repi[XI_STATE, r] == RS_STARTING:
        turn_off(st, r, now)
        return
    st.repi[XI_STATE, r] = RS_DRAINING
    if st.repi[XI_BUSY, r] == 0 and holds_no_work(st, r):
        turn_off(st, r, now)


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
