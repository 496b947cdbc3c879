"""Public read-outs of a running simulation for evaluation code: a sample of the cluster at one instant and
each request's scheduling delay.

``SimOutcome`` (outcome.py) is the end-of-run record the metrics read; these are what plots and sweeps read
between or after time slices. They keep the state's layout (``state.py``) private to ``envs/sim`` and
``envs/gym``: evaluation code in ``baselines/`` calls ``Simulator.sample()`` and
``Simulator.scheduling_delays()`` and never indexes ``sim.state``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from servegym.envs.perf.model import iteration_time_s
from servegym.envs.sim import state as S
from servegym.envs.sim.state import SimState


@dataclass(frozen=True)
class ClusterSample:
    """The cluster at one instant (``Simulator.sample()``); per-replica arrays are copies."""

    now_s: float
    arrived: int  # open-loop arrivals so far (later session steps not included)
    slo_met: int  # finished requests that met their SLO
    slo_judged: int  # finished (met or missed) plus dropped requests
    waiting: int  # requests in replica queues plus those held for lack of a replica
    replica_state: np.ndarray  # state.RS_* code of each replica
    replica_waiting: np.ndarray  # requests in each replica's queue
    replica_kv_used: np.ndarray  # KV blocks in use
    replica_kv_capacity: np.ndarray  # KV blocks

    @property
    def active(self) -> np.ndarray:
        return self.replica_state == S.RS_ACTIVE

    @property
    def up(self) -> np.ndarray:
        """Replicas starting or active (what a scaler has asked for)."""
        return self.active | (self.replica_state == S.RS_STARTING)

    @property
    def kv_util_active(self) -> float:
        """KV blocks used over capacity, over the active replicas (NaN with none)."""
        cap = float(self.replica_kv_capacity[self.active].sum())
        return float(self.replica_kv_used[self.active].sum()) / cap if cap else float("nan")


def sample(st: SimState) -> ClusterSample:
    met = int(st.cnt[S.K_SLO_MET])
    return ClusterSample(
        now_s=float(st.clock[S.C_NOW]),
        arrived=int(st.cnt[S.K_NEXT_ARRIVAL]),
        slo_met=met,
        slo_judged=met + int(st.cnt[S.K_SLO_MISSED_FINISHED]) + int(st.cnt[S.K_DROPS]),
        waiting=int(st.repi[S.XI_QN].sum() + st.cnt[S.K_HOLD_N]),
        replica_state=st.repi[S.XI_STATE].copy(),
        replica_waiting=st.repi[S.XI_QN].copy(),
        replica_kv_used=st.repi[S.XI_KV_USED].copy(),
        replica_kv_capacity=st.repi[S.XI_KV_CAP].copy(),
    )


@njit(cache=True)  # allocates its result, so not a refcount-free ``kernel``
def _prefill_alone_s(coef, pool, prompt, cached, budget, chunked):  # pragma: no cover - compiled
    """Seconds each request's prefill takes alone on its pool: chunks of the token budget, nothing else."""
    out = np.zeros(prompt.shape[0])
    for i in range(prompt.shape[0]):
        p = pool[i]
        if p < 0:
            out[i] = np.nan
            continue
        done = cached[i]
        left = prompt[i] - cached[i]
        t = 0.0
        while left > 0:
            c = min(left, budget[p]) if chunked[p] else left
            t += iteration_time_s(coef[p], c, c * (done + (c + 1) * 0.5), 0, 0)
            done += c
            left -= c
        out[i] = t
    return out


def scheduling_delays(st: SimState) -> np.ndarray:
    """Per request with a first token: TTFT - its prefill alone on its pool (the perf model's time for its
    uncached prompt in token-budget chunks) - the network both ways; +inf per request dropped before its
    first token. What a scheduler adds to the unavoidable latency (the goodput sweep's delay)."""
    arrived = st.rqi[S.RI_STATUS] != S.ST_FUTURE
    first = st.rqf[S.RF_FIRST]
    has_first = arrived & ~np.isnan(first)
    rep = st.rqi[S.RI_REPLICA].astype(np.int64)
    pool = np.where(rep >= 0, st.repi[S.XI_POOL][np.maximum(rep, 0)], -1)
    lat = st.region_lat[st.rqi[S.RI_REGION], st.pooli[S.PI_REGION][np.maximum(pool, 0)]]
    alone = _prefill_alone_s(
        st.coef,
        np.where(has_first, pool, -1),
        st.rqi[S.RI_PROMPT].astype(np.int64),
        st.rqi[S.RI_CACHED].astype(np.int64),
        st.pooli[S.PI_MAX_TOKENS],
        st.pooli[S.PI_CHUNKED],
    )
    delay = first - st.rqf[S.RF_ARRIVAL] - alone - 2.0 * lat
    dropped_unserved = arrived & (st.rqi[S.RI_STATUS] == S.ST_DROPPED) & np.isnan(first)
    return np.concatenate([np.maximum(delay[has_first], 0.0), np.full(int(dropped_unserved.sum()), np.inf)])
