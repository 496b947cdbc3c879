"""Admission of arriving requests: admit, defer or reject (docs/fairserve.md).

Off unless the scenario names an admission rule other than ``admit_all`` or the caller takes the decision
(``K_ADMISSION``); then every arrival that some pool can serve is presented here before it is routed. The
built-in rules (envs/rules.py ``ADMISSION``, their verdict in ``policies.admission_verdict``) throttle each
user (a tenant) with a token bucket: its refill rate and burst come from the rule (a fixed RPM or TPM, or
FairServe's limit from the user's application), and a request costs what the rule counts
(``policies.admission_cost``). An admitted request pays its cost; a rejected one is dropped and counted
(``K_REJECTED``, and ``RI_ADMIT``'s low bit), so it leaves the core like any drop: a session whose call is
rejected is abandoned. A deferred request stays in flight in the deferral heap (``dfq``) and is presented
again ``C_DEFER_S`` later, or dropped when it would by then have waited past ``max_wait``.
"""

from __future__ import annotations

import numpy as np

from servegym.envs.sim.finish import drop_request
from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.policies import admission_cost, admission_verdict, bucket_refill
from servegym.envs.sim.state import (
    AD_ADMIT,
    AD_DEFER,
    C_DEFER_S,
    C_MAX_WAIT,
    C_OVERLOAD_LOAD,
    K_ADMIT_POLICY,
    K_DEFERRALS,
    K_DF_N,
    K_HOLD_N,
    K_REJECTED,
    RF_ARRIVAL,
    RI_ADMIT,
    RI_OUTPUT,
    RI_PROMPT,
    RI_STEP,
    RI_TENANT,
    RS_ACTIVE,
    TF_BUCKET,
    TF_BUCKET_T,
    TF_LIMIT_BURST,
    TF_LIMIT_RATE,
    XI_ND,
    XI_NPF,
    XI_QN,
    XI_STATE,
)
from servegym.envs.sim.time_heap import heap_delete_at, heap_push

INF = np.inf


@hot
def load_per_replica(st):
    """Requests outstanding (waiting in replica queues or the hold ring, or running) per active replica: the
    overload signal. Running sequences count because a batch full of one user's work slows every decode."""
    load = st.cnt[K_HOLD_N]
    active = 0
    for r in range(st.repi.shape[1]):
        load += st.repi[XI_QN, r] + st.repi[XI_ND, r] + st.repi[XI_NPF, r]
        if st.repi[XI_STATE, r] == RS_ACTIVE:
            active += 1
    return load / max(active, 1)


@hot
def overloaded(st):
    return load_per_replica(st) > st.clock[C_OVERLOAD_LOAD]


@hot
def bucket_level(st, u, now):
    """User u's bucket refilled up to ``now`` (written back, so a refill is never counted twice)."""
    rate = st.ten[TF_LIMIT_RATE, u]
    if rate == INF:
        return INF
    lvl = bucket_refill(st.ten[TF_BUCKET, u], st.ten[TF_BUCKET_T, u], rate, st.ten[TF_LIMIT_BURST, u], now)
    st.ten[TF_BUCKET, u] = lvl
    st.ten[TF_BUCKET_T, u] = now
    return lvl


@hot
def request_cost(st, i):
    """What request i costs under the scenario's admission rule."""
    return admission_cost(
        st.cnt[K_ADMIT_POLICY], st.rqi[RI_PROMPT, i], st.rqi[RI_OUTPUT, i], st.rqi[RI_STEP, i]
    )


@hot
def charge(st, i, now):
    """An admitted request pays its cost from its user's bucket (never below empty)."""
    u = st.rqi[RI_TENANT, i]
    lvl = bucket_level(st, u, now)
    if lvl != INF:
        st.ten[TF_BUCKET, u] = max(lvl - request_cost(st, i), 0.0)


@hot
def builtin_verdict(st, i, now):
    u = st.rqi[RI_TENANT, i]
    return admission_verdict(
        st.cnt[K_ADMIT_POLICY], bucket_level(st, u, now), request_cost(st, i), overloaded(st)
    )


@hot
def mark_spare(st, i):
    """Note that request i is turned away while the fleet is not overloaded (the over-throttling metric)."""
    if not overloaded(st):
        st.rqi[RI_ADMIT, i] |= 2


@hot
def reject(st, i, now):
    mark_spare(st, i)
    st.rqi[RI_ADMIT, i] |= 1
    st.cnt[K_REJECTED] += 1
    drop_request(st, i, now)


@hot
def defer(st, i, now):
    """Present request i again C_DEFER_S from now, or drop it if it would then have waited past max_wait."""
    t = now + st.clock[C_DEFER_S]
    mark_spare(st, i)
    st.rqi[RI_ADMIT, i] += 4
    st.cnt[K_DEFERRALS] += 1
    if t - st.rqf[RF_ARRIVAL, i] > st.clock[C_MAX_WAIT]:
        drop_request(st, i, st.rqf[RF_ARRIVAL, i] + st.clock[C_MAX_WAIT])
        return
    heap_push(st.dfq, st.cnt[K_DF_N], t, i)
    st.cnt[K_DF_N] += 1


@hot
def next_deferred(st):
    """Time the earliest deferred request is presented again, inf when none."""
    return st.dfq[0, 0] if st.cnt[K_DF_N] > 0 else INF


@kernel
def pop_deferred(st):
    i = heap_delete_at(st.dfq, 0, st.cnt[K_DF_N])
    st.cnt[K_DF_N] -= 1
    return i


@hot
def settle(st, i, verdict, now):
    """Carry out a verdict other than admit (the caller routes an admitted request); True if admitted."""
    if verdict == AD_ADMIT:
        charge(st, i, now)
        return True
    if verdict == AD_DEFER:
        defer(st, i, now)
    else:
        reject(st, i, now)
    return False
