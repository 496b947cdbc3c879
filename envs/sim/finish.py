"""How a request leaves the core: finished (its SLO judged once, here) or dropped."""

from __future__ import annotations

from servegym.envs.sim.jit import hot
from servegym.envs.sim.sessions import release_next
from servegym.envs.sim.state import (
    K_DROPS,
    K_FINISHED,
    K_SLO_MET,
    K_SLO_MET_TOKENS,
    K_SLO_MISSED_FINISHED,
    PI_REGION,
    RF_ARRIVAL,
    RF_DEADLINE,
    RF_FINISH,
    RF_FIRST,
    RF_TPOT_SLO,
    RF_TTFT_SLO,
    RI_GENERATED,
    RI_NEXT,
    RI_OUTPUT,
    RI_REGION,
    RI_STATUS,
    RI_TIER,
    ST_DROPPED,
    ST_FINISHED,
    TIER_INTERACTIVE,
    XI_POOL,
)


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
    # the SLO rule of envs/slo.py, evaluated once here so that envs can reward per step
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
