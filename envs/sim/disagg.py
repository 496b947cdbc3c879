"""Prefill/decode disaggregation: the hand-off of a prefilled request's KV cache to a decode replica.

A pool has a role (``PI_ROLE``): mixed replicas run both phases of a request as before; prefill replicas
take new requests and, when a prompt's prefill ends, hand its KV cache over; decode replicas take no new
requests, only KV caches. The life of a request whose prefill ran on a prefill replica (Splitwise, Patel
et al. ISCA'24; DistServe, Zhong et al. OSDI'24):

1. ``hand_off``: the prefill's last chunk produced the first token (its time counts as today). The request
   leaves its slot, but its KV blocks stay on the prefill replica (``XI_NXF``), and it waits in the ring
   ``xwait`` for a decode replica: DistServe's pull model, where prefill memory is the buffer when decode
   is saturated; the wait is the decode phase's queueing (``XQF_XWAIT_S``).
2. ``start_transfer``: a decode replica with a free sequence slot and room for the KV is chosen; the slot and
   the blocks are reserved there at once, so the KV is held on both sides during the transfer (Splitwise's
   token machine allocates before the transfer). The transfer takes the link's time for the KV bytes
   (envs/perf/interconnect.py), overlapped with the last prefill iteration layer by layer when the request
   is sent at its prefill's end and the scenario asks for it. A replica's outgoing link sends one KV cache
   at a time (FIFO), so transfers from one prefill replica queue behind each other on a slow link; the
   receiving side is not modelled as a bottleneck (several prefill replicas may send to one decode replica
   at full rate each), which is right for per-GPU NICs and optimistic for a shared one.
3. ``complete_transfer``: the prefill replica frees its copy; the decode slot is marked arrived and joins
   the decode set at the decode replica's next iteration boundary (``join_arrived``), so no iteration is
   changed while it runs.

Failures lose nothing (``fail_transfers``): when the decode replica fails during a transfer, the prefill
replica still holds the KV, and the request waits for another decode replica; when the prefill replica
fails, the KV in transfer is gone, the reserved decode slot is released, and the request is sent back to be
routed and prefilled again, as a failure does to the requests it runs.

Every kernel here is reached only when some pool has a prefill or decode role (``K_DISAGG``): a colocated
scenario pays one comparison per event for the feature and keeps its dynamics bit for bit.
"""

from __future__ import annotations

import numpy as np

from servegym.envs.perf.interconnect import transfer_time_s
from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.kv import blocks_for, kv_limit, kv_touch
from servegym.envs.sim.lifecycle import holds_no_work, turn_off
from servegym.envs.sim.policies import ROUTE_SPLITWISE, phase_route_score
from servegym.envs.sim.queues import hold_push
from servegym.envs.sim.slots import join_decode, slot_alloc, slot_free
from servegym.envs.sim.state import (
    C_LAYERWISE,
    C_SPLITWISE_OVERFLOW,
    EV_DONE,
    EV_ROUTE,
    K_ADMIT_SEQ,
    K_CTRL_ROUTE,
    K_EVICTED,
    K_FORM_REPLICA,
    K_HOLD_RETRY,
    K_PENDING_ROUTE,
    K_ROUTE_PHASE,
    K_ROUTE_POLICY,
    K_TRANSFERS,
    K_XF_N,
    K_XFER_FAILED,
    K_XFER_RETRY,
    K_XW_HEAD,
    K_XW_N,
    LS_PREFILL,
    PF_KV_TOKEN_BYTES,
    PI_FIRST_REP,
    PI_LAYERS,
    PI_MAX_SEQS,
    PI_MODEL,
    PI_ROLE,
    RF_VISIBLE,
    RI_EVICT,
    RI_GENERATED,
    RI_MODEL,
    RI_OUTPUT,
    RI_PROMPT,
    RI_RECOMPUTED,
    RI_REPLICA,
    ROLE_DECODE,
    ROLE_MIXED,
    ROLE_PREFILL,
    RS_ACTIVE,
    RS_DRAINING,
    RX_PENDING,
    RX_READY,
    SL_ADMIT,
    SL_CHUNK,
    SL_CTX,
    SL_LEFT,
    SL_REQ,
    XF_ITER_DT,
    XF_LINK_FREE,
    XF_NEXT,
    XI_BUSY,
    XI_IT,
    XI_KV_USED,
    XI_ND,
    XI_NPF,
    XI_NRDY,
    XI_NRX,
    XI_NXF,
    XI_POOL,
    XI_QN,
    XI_STATE,
    XQF_BYTES,
    XQF_HANDOFF,
    XQF_OVERLAP,
    XQF_XFER_S,
    XQF_XWAIT_S,
    XQI_CTX,
    XQI_DST,
    XQI_SLOT,
    XQI_SRC,
    XQI_XFERS,
)
from servegym.envs.sim.time_heap import heap_delete_at, heap_push

INF = np.inf


# ---------------------------------------------------------------- the transfer heap and the wait ring


@kernel
def _xf_push(st, t, i):
    heap_push(st.xfq, st.cnt[K_XF_N], t, i)
    st.cnt[K_XF_N] += 1


@kernel
def _xf_delete_at(st, p):
    """Remove heap entry p; return its request id."""
    i = heap_delete_at(st.xfq, p, st.cnt[K_XF_N])
    st.cnt[K_XF_N] -= 1
    return i


@hot
def next_transfer(st):
    """Time the earliest KV transfer in flight completes, inf when none."""
    return st.xfq[0, 0] if st.cnt[K_XF_N] > 0 else INF


@kernel
def xwait_push(st, i):
    """Queue prefilled request i for a decode replica."""
    cap = st.xwait.shape[0]
    st.xwait[(st.cnt[K_XW_HEAD] + st.cnt[K_XW_N]) % cap] = i
    st.cnt[K_XW_N] += 1


@kernel
def _xw_pop(st):
    i = st.xwait[st.cnt[K_XW_HEAD]]
    st.cnt[K_XW_HEAD] = (st.cnt[K_XW_HEAD] + 1) % st.xwait.shape[0]
    st.cnt[K_XW_N] -= 1
    return i


# ---------------------------------------------------------------- roles and candidates


@hot
def takes_new_requests(st, r):
    """Prefill and mixed replicas take newly routed requests; decode replicas take only KV caches."""
    return st.pooli[PI_ROLE, st.repi[XI_POOL, r]] != ROLE_DECODE


@hot
def can_decode(st, d, i):
    """Replica d can take request i's KV cache now: active, decode-capable, same model, a free sequence slot,
    and room for the KV (and, eventually, the whole context) under vLLM's watermark."""
    if st.repi[XI_STATE, d] != RS_ACTIVE:
        return False
    pool = st.repi[XI_POOL, d]
    if st.pooli[PI_ROLE, pool] == ROLE_PREFILL or st.pooli[PI_MODEL, pool] != st.rqi[RI_MODEL, i]:
        return False
    if st.repi[XI_ND, d] + st.repi[XI_NPF, d] + st.repi[XI_NRX, d] >= st.pooli[PI_MAX_SEQS, pool]:
        return False
    limit = kv_limit(st, d)
    if blocks_for(st.rqi[RI_PROMPT, i] + st.rqi[RI_OUTPUT, i]) > limit:
        return False
    return st.repi[XI_KV_USED, d] + blocks_for(st.xqi[XQI_CTX, i]) <= limit


@hot
def decode_load(st, d):
    """Outstanding requests of a replica for decode routing: waiting, running and KV caches arriving."""
    return st.repi[XI_QN, d] + st.repi[XI_ND, d] + st.repi[XI_NPF, d] + st.repi[XI_NRX, d]


@kernel
def decode_fits(st, i):
    """Some decode-capable pool of request i's model could ever hold its whole context (else a prefill
    replica must not take it: its KV cache could never be handed over)."""
    need = blocks_for(st.rqi[RI_PROMPT, i] + st.rqi[RI_OUTPUT, i])
    for p in range(st.pooli.shape[1]):
        if (
            st.pooli[PI_MODEL, p] == st.rqi[RI_MODEL, i]
            and st.pooli[PI_ROLE, p] != ROLE_PREFILL
            and need <= kv_limit(st, st.pooli[PI_FIRST_REP, p])
        ):
            return True
    return False


@kernel
def queued_prefill_tokens(st, r):
    """Prompt tokens replica r still has to prefill: its waiting requests' and its running prefills' rest
    (Mooncake's queueing estimate, policies.prefill_route_score)."""
    n = 0
    for k in range(st.repi[XI_QN, r]):
        i = st.queue[r, k]
        n += st.rqi[RI_PROMPT, i] + st.rqi[RI_GENERATED, i]
    for j in range(st.repi[XI_NPF, r]):
        n += st.slot[SL_LEFT, r, st.slot[LS_PREFILL, r, j]]
    return n


@kernel
def builtin_decode_route(st, i):
    """The decode replica for prefilled request i by the built-in rule, or -1 if none can take it now.

    Splitwise routing joins the shortest queue among decode replicas with the mixed pool as overflow
    (policies.phase_route_score); every other rule joins the shortest queue over all decode-capable replicas.
    """
    overflow = int(st.clock[C_SPLITWISE_OVERFLOW]) if st.cnt[K_ROUTE_POLICY] == ROUTE_SPLITWISE else 0
    best = -1
    best_s = INF
    for d in range(st.repi.shape[1]):
        if not can_decode(st, d, i):
            continue
        mixed = st.pooli[PI_ROLE, st.repi[XI_POOL, d]] == ROLE_MIXED
        s = phase_route_score(mixed, decode_load(st, d), overflow)
        if s < best_s:
            best_s = s
            best = d
    return best


# ---------------------------------------------------------------- the hand-off


@hot
def hand_off(st, r, k, i, ctx, now):
    """Request i's prefill on prefill replica r ended with ``ctx`` tokens of KV in slot k: free the slot,
    keep the KV blocks on r, and queue the request for a decode replica."""
    st.xqi[XQI_SRC, i] = r
    st.xqi[XQI_CTX, i] = ctx
    st.xqf[XQF_HANDOFF, i] = now
    st.xqf[XQF_OVERLAP, i] = st.repf[XF_ITER_DT, r]  # the prefill iteration that just ended
    st.repi[XI_NXF, r] += 1
    slot_free(st, r, k)
    xwait_push(st, i)
    st.cnt[K_XFER_RETRY] = 1


@kernel
def start_transfer(st, i, d, now):
    """Reserve a slot and the KV blocks on decode replica d and start moving request i's KV cache there."""
    src = st.xqi[XQI_SRC, i]
    ctx = st.xqi[XQI_CTX, i]
    k = slot_alloc(st, d)
    st.slot[SL_REQ, d, k] = i
    st.slot[SL_CTX, d, k] = ctx
    st.slot[SL_LEFT, d, k] = RX_PENDING
    st.slot[SL_CHUNK, d, k] = 0
    st.repi[XI_NRX, d] += 1
    kv_touch(st, d, now)
    st.repi[XI_KV_USED, d] += blocks_for(ctx)
    st.xqi[XQI_DST, i] = d
    st.xqi[XQI_SLOT, i] = k
    st.rqi[RI_REPLICA, i] = d
    waited = now - st.xqf[XQF_HANDOFF, i]
    st.xqf[XQF_XWAIT_S, i] += waited
    st.xqf[XQF_HANDOFF, i] = now  # from here: when the transfer started
    ps = st.repi[XI_POOL, src]
    pd = st.repi[XI_POOL, d]
    # the source's link sends one KV cache at a time, in dispatch order
    begin = max(now, st.repf[XF_LINK_FREE, src])
    # layer-wise overlap only when sent as the prefill ends: a KV cache that waited is complete, sent whole
    overlap = (
        st.xqf[XQF_OVERLAP, i] if (st.clock[C_LAYERWISE] > 0.0 and waited == 0.0 and begin == now) else 0.0
    )
    dt = transfer_time_s(
        ctx,
        st.poolf[PF_KV_TOKEN_BYTES, ps],
        st.link[0, ps, pd],
        st.link[1, ps, pd],
        st.pooli[PI_LAYERS, ps],
        overlap,
    )
    st.repf[XF_LINK_FREE, src] = begin + dt
    _xf_push(st, begin + dt, i)


@kernel
def decode_room(st):
    """The most KV blocks any active decode-capable replica with a free sequence slot can still take (-1: no
    such replica): an upper bound for can_decode, whatever the model."""
    room = -1
    for d in range(st.repi.shape[1]):
        pool = st.repi[XI_POOL, d]
        if (
            st.repi[XI_STATE, d] == RS_ACTIVE
            and st.pooli[PI_ROLE, pool] != ROLE_PREFILL
            and st.repi[XI_ND, d] + st.repi[XI_NPF, d] + st.repi[XI_NRX, d] < st.pooli[PI_MAX_SEQS, pool]
        ):
            room = max(room, kv_limit(st, d) - st.repi[XI_KV_USED, d])
    return room


@kernel
def dispatch_transfers(st, now):
    """Send every waiting KV cache that a decode replica can take now (in hand-off order); the rest wait.

    When the caller controls routing, the first one some decode replica can take becomes the pending
    routing decision (its decode phase, ``K_ROUTE_PHASE``) and EV_ROUTE is returned; else EV_DONE.
    """
    st.cnt[K_XFER_RETRY] = 0
    room = decode_room(st)
    n = st.cnt[K_XW_N]
    for k in range(n):
        i = _xw_pop(st)
        # no replica has a slot and this many free blocks: skip the replica scan (a backlog stays O(waiting))
        d = builtin_decode_route(st, i) if blocks_for(st.xqi[XQI_CTX, i]) <= room else -1
        if d < 0:
            xwait_push(st, i)
        elif st.cnt[K_CTRL_ROUTE]:
            st.cnt[K_PENDING_ROUTE] = i
            st.cnt[K_ROUTE_PHASE] = 1
            # the ring now holds the unvisited caches ahead of the skipped ones: rotate them behind, so the
            # ring is in hand-off order again for the next dispatch
            for _ in range(n - k - 1):
                xwait_push(st, _xw_pop(st))
            return EV_ROUTE
        else:
            start_transfer(st, i, d, now)
            room = decode_room(st)
    return EV_DONE


@kernel
def _release_source(st, r, blocks, now):
    """A transfer of replica r's KV is over (done or failed): free its blocks, and let a draining replica go."""
    kv_touch(st, r, now)
    st.repi[XI_KV_USED, r] -= blocks
    st.repi[XI_NXF, r] -= 1
    if st.repi[XI_STATE, r] == RS_DRAINING and st.repi[XI_BUSY, r] == 0 and holds_no_work(st, r):
        turn_off(st, r, now)


@kernel
def complete_transfer(st, now):
    """The earliest transfer in flight is done: free the source's copy and mark the decode slot arrived."""
    i = _xf_delete_at(st, 0)
    src = st.xqi[XQI_SRC, i]
    d = st.xqi[XQI_DST, i]
    k = st.xqi[XQI_SLOT, i]
    ctx = st.xqi[XQI_CTX, i]
    _release_source(st, src, blocks_for(ctx), now)
    st.xqf[XQF_XFER_S, i] += now - st.xqf[XQF_HANDOFF, i]
    st.xqf[XQF_BYTES, i] += ctx * st.poolf[PF_KV_TOKEN_BYTES, st.repi[XI_POOL, src]]
    st.xqi[XQI_XFERS, i] += 1
    st.xqi[XQI_SRC, i] = -1
    st.xqi[XQI_DST, i] = -1
    st.xqi[XQI_SLOT, i] = -1
    st.cnt[K_TRANSFERS] += 1
    st.slot[SL_LEFT, d, k] = RX_READY
    st.repi[XI_NRDY, d] += 1
    if st.repi[XI_BUSY, d] == 0 and st.cnt[K_FORM_REPLICA] != d and now < st.repf[XF_NEXT, d]:
        st.repf[XF_NEXT, d] = now  # an idle decode replica wakes up to decode it


@kernel
def join_arrived(st, r):
    """At an iteration boundary of replica r: arrived KV caches join its decode set."""
    for k in range(st.slot.shape[2]):
        if st.slot[SL_REQ, r, k] >= 0 and st.slot[SL_LEFT, r, k] == RX_READY:
            st.cnt[K_ADMIT_SEQ] += 1
            st.slot[SL_ADMIT, r, k] = st.cnt[K_ADMIT_SEQ]  # preemption takes the most recently admitted
            st.repi[XI_NRX, r] -= 1
            st.repi[XI_NRDY, r] -= 1
            join_decode(st, r, k, st.slot[SL_CTX, r, k], st.repi[XI_IT, r])
    st.repi[XI_NRDY, r] = 0


# ---------------------------------------------------------------- failures


@hot
def _evict_for_recompute(st, i, ctx, now):
    """Request i's KV is gone: it goes back to be routed and prefilled again (as faults.evict_request)."""
    st.rqi[RI_RECOMPUTED, i] += ctx
    st.xqi[XQI_SRC, i] = -1
    st.xqi[XQI_DST, i] = -1
    st.xqi[XQI_SLOT, i] = -1
    st.xqi[XQI_CTX, i] = 0
    st.rqi[RI_EVICT, i] += 1
    st.cnt[K_EVICTED] += 1
    st.rqf[RF_VISIBLE, i] = now
    hold_push(st, i, now)
    st.cnt[K_HOLD_RETRY] = 1


@kernel
def fail_transfers(st, r, now):
    """Replica r fails (or is forced off): settle every transfer it is the source or destination of.

    Call before its slots and KV are reset. A KV cache arriving at r whose source still holds it waits for
    another decode replica; one that had arrived exists only on r and is lost; a KV cache r was sending or
    holding for a transfer is lost, and a decode slot reserved for it elsewhere is released.
    """
    for k in range(st.slot.shape[2]):
        i = st.slot[SL_REQ, r, k]
        if i < 0 or st.slot[SL_LEFT, r, k] >= 0:
            continue
        st.cnt[K_XFER_FAILED] += 1
        if st.slot[SL_LEFT, r, k] == RX_PENDING:
            for p in range(st.cnt[K_XF_N]):
                if int(st.xfq[1, p]) == i:
                    _xf_delete_at(st, p)
                    break
            st.xqf[XQF_XFER_S, i] += now - st.xqf[XQF_HANDOFF, i]
            st.xqf[XQF_HANDOFF, i] = now
            st.xqf[XQF_OVERLAP, i] = 0.0
            st.xqi[XQI_DST, i] = -1
            st.xqi[XQI_SLOT, i] = -1
            xwait_push(st, i)
            st.cnt[K_XFER_RETRY] = 1
        else:
            _evict_for_recompute(st, i, st.slot[SL_CTX, r, k], now)
        st.slot[SL_REQ, r, k] = -1
        st.slot[SL_LEFT, r, k] = 0
    st.repi[XI_NRX, r] = 0
    st.repi[XI_NRDY, r] = 0
    if st.repi[XI_NXF, r] == 0:
        return
    p = 0
    while p < st.cnt[K_XF_N]:  # in flight from r: release the reserved decode slot
        i = int(st.xfq[1, p])
        if st.xqi[XQI_SRC, i] != r:
            p += 1
            continue
        _xf_delete_at(st, p)  # the entry moved into p is examined next
        st.cnt[K_XFER_FAILED] += 1
        d = st.xqi[XQI_DST, i]
        ctx = st.xqi[XQI_CTX, i]
        slot_free(st, d, st.xqi[XQI_SLOT, i])
        st.repi[XI_NRX, d] -= 1
        kv_touch(st, d, now)
        st.repi[XI_KV_USED, d] -= blocks_for(ctx)
        if st.repi[XI_STATE, d] == RS_DRAINING and st.repi[XI_BUSY, d] == 0 and holds_no_work(st, d):
            turn_off(st, d, now)
        st.xqf[XQF_XFER_S, i] += now - st.xqf[XQF_HANDOFF, i]
        _evict_for_recompute(st, i, ctx, now)
        st.cnt[K_XFER_RETRY] = 1  # the released decode slot may take a waiting KV cache
    for _ in range(st.cnt[K_XW_N]):  # waiting on r for a decode replica
        i = _xw_pop(st)
        if st.xqi[XQI_SRC, i] == r:
            st.cnt[K_XFER_FAILED] += 1
            st.xqf[XQF_XWAIT_S, i] += now - st.xqf[XQF_HANDOFF, i]
            _evict_for_recompute(st, i, st.xqi[XQI_CTX, i], now)
        else:
            xwait_push(st, i)
    st.repi[XI_NXF, r] = 0
