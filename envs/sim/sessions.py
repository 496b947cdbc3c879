"""Agentic sessions in the core: the closed loop that releases a session's next step when its step finishes.

A session is a chain of requests (``RI_NEXT``). Its first step arrives by its arrival time like any request
(rows ``[0, K_N_OPEN)``, which the arrival pointer walks). Every later step waits, status ``ST_FUTURE``, until
its predecessor finishes: then it is pushed into the release heap (``relq``: release time, request id) at
the finish time plus its tool/think pause (``RF_PAUSE``), and ``advance`` takes it from there as an arrival.
Its deadline is kept relative to its arrival until then (``RF_DEADLINE`` holds the budget; the release adds
the arrival time), and ``RI_HOME`` is set to the replica that served the step before, whose prefix cache
holds the session's context.

A predecessor that is dropped (queue full, max wait, unservable) never finishes, so its successors are never
released: the rest of the session is abandoned, and the session counts as failed (``envs/metrics.py``).
Unreleased steps stay ``ST_FUTURE``, so conservation (arrived = finished + dropped + in flight) is untouched.

The heap holds one entry per session at most (a session has one step in flight or waiting at a time), so
pushes and pops are O(log sessions); ties are broken by request id, so a run stays a pure function of its
state. With no sessions the event loop pays one comparison per event for the feature.
"""

from __future__ import annotations

import numpy as np

from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.state import (
    K_REL_N,
    K_RELEASED,
    RF_ARRIVAL,
    RF_DEADLINE,
    RF_PAUSE,
    RI_HOME,
    RI_NEXT,
    RI_REPLICA,
)
from servegym.envs.sim.time_heap import heap_delete_at, heap_push

INF = np.inf


@kernel
def release_push(st, j, t):
    """Schedule session step j to arrive at time t."""
    heap_push(st.relq, st.cnt[K_REL_N], t, j)
    st.cnt[K_REL_N] += 1


@kernel
def release_pop(st):
    """Remove and return the request id of the earliest pending step (the heap must not be empty)."""
    j = heap_delete_at(st.relq, 0, st.cnt[K_REL_N])
    st.cnt[K_REL_N] -= 1
    return j


@hot
def next_release(st):
    """Time of the earliest pending session step, inf when none."""
    return st.relq[0, 0] if st.cnt[K_REL_N] > 0 else INF


@kernel
def release_next(st, i, t):
    """Request i finished at t: its session's next step arrives after its pause, homed on i's replica."""
    j = st.rqi[RI_NEXT, i]
    st.rqi[RI_HOME, j] = st.rqi[RI_REPLICA, i]
    release_push(st, j, t + st.rqf[RF_PAUSE, j])


@hot
def take_released(st, t):
    """Pop the step due at t and make it an arrival: its arrival time, and its deadline made absolute."""
    j = release_pop(st)
    st.rqf[RF_ARRIVAL, j] = t
    st.rqf[RF_DEADLINE, j] += t
    st.rlog[st.cnt[K_RELEASED]] = j
    st.cnt[K_RELEASED] += 1
    return j
