"""One iteration of a replica: vLLM-style continuous batching with chunked prefill and preemption.

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

The waiting queue (queues.py), the prefix cache (prefix_cache.py), the running slots (slots.py) and the
lifecycle (lifecycle.py) live beside this file. All helpers are inlined into the few entry points of
``core.py``: numba passes the state tuple to a non-inlined call as its flattened array descriptors, which
costs more than most of these bodies.
"""

from __future__ import annotations

from servegym.envs.perf.model import iteration_time_s
from servegym.envs.sim.disagg import hand_off
from servegym.envs.sim.finish import finish_request, return_latency
from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.kv import blocks_for, kv_limit, kv_touch
from servegym.envs.sim.lifecycle import holds_no_work, turn_off
from servegym.envs.sim.prefix_cache import prefix_hits, prefix_insert
from servegym.envs.sim.queues import expire_and_pick, next_visible_time, queue_remove_at
from servegym.envs.sim.slots import (
    heap_delete_at,
    join_decode,
    leave_decode,
    preempt_slot,
    slot_alloc,
    slot_free,
)
from servegym.envs.sim.state import (
    K_ADMIT_SEQ,
    K_ITERATIONS,
    K_N_TENANTS,
    K_TRACE_N,
    KV_BLOCK_TOKENS,
    LS_HEAP_KEY,
    LS_HEAP_SLOT,
    LS_PREFILL,
    PI_CHUNKED,
    PI_MAX_SEQS,
    PI_MAX_TOKENS,
    PI_PREFIX,
    PI_ROLE,
    PREFIX_BLOCK_TOKENS,
    RF_FIRST,
    RI_CACHED,
    RI_GENERATED,
    RI_OUTPUT,
    RI_PREEMPT,
    RI_PROMPT,
    RI_TENANT,
    ROLE_PREFILL,
    RS_DRAINING,
    SL_ADMIT,
    SL_CHUNK,
    SL_CTX,
    SL_END,
    SL_LEFT,
    SL_PHASE,
    SL_REQ,
    TF_COUNTER,
    TR_DECODE,
    TR_DURATION,
    TR_KV_CTX,
    TR_PREFILL,
    TR_REPLICA,
    TR_START,
    XF_BUSY_S,
    XF_ITER_DT,
    XF_NEXT,
    XI_BUSY,
    XI_DSUM,
    XI_IT,
    XI_KV_CAP,
    XI_KV_USED,
    XI_ND,
    XI_NDEC_ITER,
    XI_NPF,
    XI_NRX,
    XI_POOL,
    XI_STATE,
)

B = KV_BLOCK_TOKENS


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
        heap_delete_at(st, r, 0)
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
