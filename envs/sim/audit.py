"""A full consistency check of the simulator state, recomputing every incrementally kept aggregate.

The hot path keeps sums, histograms and a heap instead of visiting sequences; ``audit`` recomputes them the
slow way and compares. Tests call it at every stop of fuzzed runs; it is not used by the simulator itself.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from servegym.envs.sim.state import (
    C_NEXT_FAULT,
    C_NOW,
    FK_KILL,
    FK_NONE,
    FK_REPAIR,
    K_DF_N,
    K_EVICTED,
    K_FAILURES,
    K_FINISHED,
    K_FORM_REPLICA,
    K_HOLD_N,
    K_N_OPEN,
    K_NEXT_ARRIVAL,
    K_PENDING_ADMIT,
    K_PENDING_ROUTE,
    K_REL_N,
    K_RELEASED,
    K_ROUTE_PHASE,
    K_XF_N,
    K_XW_HEAD,
    K_XW_N,
    KV_BLOCK_TOKENS,
    LS_HEAP_KEY,
    LS_HEAP_SLOT,
    LS_PREFILL,
    RF_ARRIVAL,
    RF_FINISH,
    RF_FIRST,
    RI_EVICT,
    RI_GENERATED,
    RI_NEXT,
    RI_OUTPUT,
    RI_PROMPT,
    RI_STATUS,
    RI_TENANT,
    RS_DRAINING,
    RS_FAILED,
    RS_OFF,
    RX_PENDING,
    RX_READY,
    SL_CTX,
    SL_END,
    SL_IT0,
    SL_LEFT,
    SL_PHASE,
    SL_REQ,
    ST_DROPPED,
    ST_FINISHED,
    ST_FUTURE,
    ST_INFLIGHT,
    XF_FAULT,
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
    XI_NRDY,
    XI_NRX,
    XI_NXF,
    XI_QN,
    XI_STATE,
    XQI_CTX,
    XQI_DST,
    XQI_SLOT,
    XQI_SRC,
)

AUDIT_MESSAGES = {
    1: "KV blocks used outside [0, capacity]",
    2: "KV blocks used differ from the blocks the running sequences hold",
    3: "sum of decoding contexts is off",
    4: "KV phase histogram is off",
    5: "per-tenant decode counts are off",
    6: "completion heap order violated",
    7: "slots lost: decoding + prefilling + free != slots",
    8: "conservation: arrived != finished + dropped + in flight",
    9: "in-flight requests are not all queued, running, held or pending",
    10: "generated tokens out of range",
    11: "token times out of order",
    12: "finished counter differs from finished requests",
    13: "eviction counter differs from the requests' evictions",
    14: "a replica that is off or failed holds work, KV blocks or a running iteration",
    15: "fault bookkeeping: next-fault bound, pending fault of an off replica, or fault kind vs state",
    16: "sessions: release heap order or entries, release log order, or released steps != finished steps with a successor",
    18: "admission: a deferred request in the deferral heap is not in flight, or the heap is out of order",
    17: "KV transfers: heap order or entries, wait ring entries, or a replica's transfer counts (XI_NRX, XI_NRDY, XI_NXF) are off",
}


@njit(cache=True)
def audit(st):
    """Return (0, -1) when consistent, else (error code, replica or request index)."""
    B = KV_BLOCK_TOKENS
    n_rep = st.repi.shape[1]
    n_slots = st.slot.shape[2]
    running = 0
    fault_min = np.inf
    n_failed = 0
    # KV caches held by prefill replicas as transfer sources: in flight (heap) or waiting (ring)
    src_blocks = np.zeros(n_rep, dtype=np.int64)
    src_count = np.zeros(n_rep, dtype=np.int64)
    for p in range(st.cnt[K_XF_N]):
        i = int(st.xfq[1, p])
        if i < 0 or i >= st.rqf.shape[1] or st.rqi[RI_STATUS, i] != ST_INFLIGHT or st.xqi[XQI_DST, i] < 0:
            return 17, i
        if p > 0:
            q = (p - 1) >> 1
            if st.xfq[0, q] > st.xfq[0, p] or (st.xfq[0, q] == st.xfq[0, p] and st.xfq[1, q] > st.xfq[1, p]):
                return 17, i
        d = st.xqi[XQI_DST, i]
        if (
            st.slot[SL_REQ, d, st.xqi[XQI_SLOT, i]] != i
            or st.slot[SL_LEFT, d, st.xqi[XQI_SLOT, i]] != RX_PENDING
        ):
            return 17, i
        s = st.xqi[XQI_SRC, i]
        src_blocks[s] += (st.xqi[XQI_CTX, i] + B - 1) // B
        src_count[s] += 1
    for e in range(st.cnt[K_XW_N]):
        i = st.xwait[(st.cnt[K_XW_HEAD] + e) % st.xwait.shape[0]]
        if st.rqi[RI_STATUS, i] != ST_INFLIGHT or st.xqi[XQI_DST, i] >= 0 or st.xqi[XQI_SRC, i] < 0:
            return 17, i
        s = st.xqi[XQI_SRC, i]
        src_blocks[s] += (st.xqi[XQI_CTX, i] + B - 1) // B
        src_count[s] += 1
    i = st.cnt[K_PENDING_ROUTE]
    if i >= 0 and st.cnt[K_ROUTE_PHASE]:  # a decode-phase routing decision: out of the ring, KV at its source
        s = st.xqi[XQI_SRC, i]
        if s < 0 or st.xqi[XQI_DST, i] >= 0:
            return 17, i
        src_blocks[s] += (st.xqi[XQI_CTX, i] + B - 1) // B
        src_count[s] += 1
    for r in range(n_rep):
        if src_count[r] != st.repi[XI_NXF, r]:
            return 17, r
    for r in range(n_rep):
        s = st.repi[XI_STATE, r]
        kind = st.repi[XI_FKIND, r]
        fault_min = min(fault_min, st.repf[XF_FAULT, r])
        if s == RS_OFF or s == RS_FAILED:
            if (
                st.repi[XI_QN, r] + st.repi[XI_ND, r] + st.repi[XI_NPF, r] + st.repi[XI_KV_USED, r] != 0
                or st.repi[XI_NRX, r] + st.repi[XI_NXF, r] != 0
                or st.repi[XI_BUSY, r] != 0
            ):
                return 14, r
        if s == RS_OFF and kind != FK_NONE:
            return 15, r
        if (s == RS_FAILED) != (kind == FK_REPAIR) or (kind == FK_KILL and s != RS_DRAINING):
            return 15, r
        if (kind == FK_NONE) != (st.repf[XF_FAULT, r] == np.inf):
            return 15, r
        n_failed += 1 if s == RS_FAILED else 0
        it = st.repi[XI_IT, r]
        used = st.repi[XI_KV_USED, r]
        if used < 0 or used > st.repi[XI_KV_CAP, r]:
            return 1, r
        nd = st.repi[XI_ND, r]
        npf = st.repi[XI_NPF, r]
        nrx = st.repi[XI_NRX, r]
        if nd + npf + nrx + st.repi[XI_NFREE, r] != n_slots:
            return 7, r
        blocks = src_blocks[r]
        # slots reserved for incoming KV caches hold their blocks (disagg.py)
        n_rx = 0
        n_rdy = 0
        for k in range(n_slots):
            left = st.slot[SL_LEFT, r, k]
            if st.slot[SL_REQ, r, k] >= 0 and left < 0:
                i = st.slot[SL_REQ, r, k]
                n_rx += 1
                n_rdy += 1 if left == RX_READY else 0
                if left == RX_PENDING and (st.xqi[XQI_DST, i] != r or st.xqi[XQI_SLOT, i] != k):
                    return 17, r
                blocks += (st.slot[SL_CTX, r, k] + B - 1) // B
        if n_rx != nrx or n_rdy != st.repi[XI_NRDY, r]:
            return 17, r
        dsum = 0
        hist = np.zeros(B, dtype=np.int64)
        scheduled = 1 if st.repi[XI_NDEC_ITER, r] > 0 else 0
        per_tenant = np.zeros(st.repx.shape[1] - B, dtype=np.int64)
        for j in range(npf):
            k = st.slot[LS_PREFILL, r, j]
            i = st.slot[SL_REQ, r, k]
            blocks += (st.rqi[RI_PROMPT, i] + st.rqi[RI_GENERATED, i] + B - 1) // B
        for p in range(nd):
            k = st.slot[LS_HEAP_SLOT, r, p]
            i = st.slot[SL_REQ, r, k]
            if st.slot[SL_LEFT, r, k] != 0 or st.slot[LS_HEAP_KEY, r, p] != st.slot[SL_END, r, k]:
                return 6, r
            if p > 0 and st.slot[LS_HEAP_KEY, r, (p - 1) >> 1] > st.slot[LS_HEAP_KEY, r, p]:
                return 6, r
            ctx = st.slot[SL_CTX, r, k] + it - st.slot[SL_IT0, r, k]
            # during an iteration each decoder already holds the block for the token it is computing
            blocks += (ctx + scheduled + B - 1) // B
            dsum += ctx
            hist[st.slot[SL_PHASE, r, k]] += 1
            per_tenant[st.rqi[RI_TENANT, i]] += 1
            if st.slot[SL_END, r, k] <= it:
                return 6, r
        if blocks != used:
            return 2, r
        if dsum != st.repi[XI_DSUM, r]:
            return 3, r
        for b in range(B):
            if hist[b] != st.repx[r, b]:
                return 4, r
        for u in range(per_tenant.shape[0]):
            if per_tenant[u] != st.repx[r, B + u]:
                return 5, r
        running += nd + npf + nrx

    n_open = st.cnt[K_N_OPEN]
    arrived = st.cnt[K_NEXT_ARRIVAL] + st.cnt[K_RELEASED]
    if st.clock[C_NEXT_FAULT] > fault_min or n_failed > st.cnt[K_FAILURES]:
        return 15, -1
    # session release heap (sessions.py): heap order; entries are distinct later steps not yet arrived
    n_rel = st.cnt[K_REL_N]
    for e in range(n_rel):
        j = int(st.relq[1, e])
        if j < n_open or j >= st.rqf.shape[1] or st.rqi[RI_STATUS, j] != ST_FUTURE:
            return 16, j
        if not st.relq[0, e] >= st.clock[C_NOW]:  # a release in the past was missed (or NaN)
            return 16, j
        if e > 0:
            p = (e - 1) >> 1
            if st.relq[0, p] > st.relq[0, e] or (
                st.relq[0, p] == st.relq[0, e] and st.relq[1, p] > st.relq[1, e]
            ):
                return 16, j
    # release log (sessions.py): the released later steps, in nondecreasing arrival order
    for e in range(st.cnt[K_RELEASED]):
        j = st.rlog[e]
        if j < n_open or j >= st.rqf.shape[1] or st.rqi[RI_STATUS, j] == ST_FUTURE:
            return 16, j
        if e > 0 and st.rqf[RF_ARRIVAL, st.rlog[e - 1]] > st.rqf[RF_ARRIVAL, j]:
            return 16, j
    fin = 0
    drop = 0
    infl = 0
    evicted = 0
    released = 0
    finished_with_next = 0
    for i in range(st.rqf.shape[1]):
        s = st.rqi[RI_STATUS, i]
        if s == ST_FUTURE:
            if i < st.cnt[K_NEXT_ARRIVAL] or st.rqi[RI_GENERATED, i] != 0:
                return 8, i
            continue
        if i >= st.cnt[K_NEXT_ARRIVAL] and i < n_open:
            return 8, i  # an open-loop request arrived ahead of the arrival pointer
        if i >= n_open:
            released += 1
        if s == ST_FINISHED and st.rqi[RI_NEXT, i] >= 0:
            finished_with_next += 1
        evicted += st.rqi[RI_EVICT, i]
        if s == ST_FINISHED:
            fin += 1
            if st.rqi[RI_GENERATED, i] != st.rqi[RI_OUTPUT, i]:
                return 10, i
            if not (st.rqf[RF_ARRIVAL, i] <= st.rqf[RF_FIRST, i] <= st.rqf[RF_FINISH, i]):
                return 11, i
        elif s == ST_DROPPED:
            drop += 1
        elif s == ST_INFLIGHT:
            infl += 1
        if st.rqi[RI_GENERATED, i] < 0 or st.rqi[RI_GENERATED, i] > st.rqi[RI_OUTPUT, i]:
            return 10, i
    if fin + drop + infl != arrived:
        return 8, -1
    # every finished step with a successor released it: it is pending in the heap or has arrived
    if released != st.cnt[K_RELEASED] or finished_with_next != released + n_rel:
        return 16, -1
    if fin != st.cnt[K_FINISHED]:
        return 12, -1
    if evicted != st.cnt[K_EVICTED]:
        return 13, -1
    queued = 0
    for r in range(n_rep):
        queued += st.repi[XI_QN, r]
    pending = 1 if st.cnt[K_PENDING_ROUTE] >= 0 else 0
    pending += 1 if st.cnt[K_PENDING_ADMIT] >= 0 else 0
    # deferred requests (admission.py) are in flight in the deferral heap, which keeps heap order
    for e in range(st.cnt[K_DF_N]):
        j = int(st.dfq[1, e])
        if j < 0 or j >= st.rqf.shape[1] or st.rqi[RI_STATUS, j] != ST_INFLIGHT:
            return 18, j
        if e > 0:
            p = (e - 1) >> 1
            if st.dfq[0, p] > st.dfq[0, e] or (st.dfq[0, p] == st.dfq[0, e] and st.dfq[1, p] > st.dfq[1, e]):
                return 18, j
    if infl != queued + running + st.cnt[K_HOLD_N] + pending + st.cnt[K_XW_N] + st.cnt[K_DF_N]:
        return 9, st.cnt[K_FORM_REPLICA]
    return 0, -1
