"""Per-replica prefix cache of 512-token prompt blocks: 8-way set-associative with LRU replacement."""

from __future__ import annotations

from servegym.envs.sim.jit import hot
from servegym.envs.sim.state import K_PC_STAMP, PREFIX_WAYS, RI_PFX_LEN, RI_PFX_START, XI_PC_SETS


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
