"""Replica lifecycle and billing: off -> starting (cold start) -> active -> draining -> off.

A replica is billed from the moment it is turned on (cold start included) until it is off; its up time and
KV-usage integral run while it is active or draining.
"""

from __future__ import annotations

import numpy as np

from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.kv import kv_touch
from servegym.envs.sim.state import (
    FK_NONE,
    PF_BILLED_GPU_S,
    PF_COLD_START,
    PI_TP,
    RS_ACTIVE,
    RS_DRAINING,
    RS_OFF,
    RS_STARTING,
    XF_FAULT,
    XF_KV_T,
    XF_NEXT,
    XF_ON_SINCE,
    XF_READY,
    XF_UP_S,
    XF_UP_SINCE,
    XI_BUSY,
    XI_FKIND,
    XI_ND,
    XI_NPF,
    XI_NRX,
    XI_NXF,
    XI_POOL,
    XI_QN,
    XI_STATE,
)

INF = np.inf


@hot
def holds_no_work(st, r):
    """Nothing queued, running, arriving (a KV cache in transfer, disagg.py) or held as a transfer source:
    a draining replica may turn off."""
    return (
        st.repi[XI_ND, r] + st.repi[XI_NPF, r] + st.repi[XI_QN, r] + st.repi[XI_NRX, r] + st.repi[XI_NXF, r]
        == 0
    )


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
