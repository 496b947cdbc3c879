"""Running sequences of a replica: slot allocation, the completion heap of decoding sequences, joining and
leaving the decode aggregates, and preemption by recompute.

A slot holds one running sequence (``SL_*`` fields). Decoding slots are kept in a min-heap on the iteration
at which they emit their last token (``LS_HEAP_KEY``/``LS_HEAP_SLOT``, ties by slot), prefilling slots in
the ``LS_PREFILL`` list; see replica.py for the aggregates that spare visiting decoders one by one.
"""

from __future__ import annotations

from servegym.envs.sim.finish import drop_request
from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.kv import blocks_for, kv_touch
from servegym.envs.sim.queues import queue_push
from servegym.envs.sim.state import (
    K_PREEMPTIONS,
    KV_BLOCK_TOKENS,
    LS_FREE,
    LS_HEAP_KEY,
    LS_HEAP_SLOT,
    LS_PREFILL,
    RF_VISIBLE,
    RI_GENERATED,
    RI_OUTPUT,
    RI_PREEMPT,
    RI_PROMPT,
    RI_RECOMPUTED,
    RI_TENANT,
    SL_CTX,
    SL_END,
    SL_IT0,
    SL_LEFT,
    SL_PHASE,
    SL_REQ,
    XI_DSUM,
    XI_IT,
    XI_KV_USED,
    XI_ND,
    XI_NFREE,
    XI_NPF,
)

B = KV_BLOCK_TOKENS


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
def heap_delete_at(st, r, p):
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
                heap_delete_at(st, r, p)
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
