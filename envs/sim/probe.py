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


# ---------------------------------------------------------------- what planners read between rollouts


def pending_decision(st: SimState) -> str | None:
    """The decision the run waits on ('admit', 'route', 'scale' or 'batch'), None when none."""
    if st.cnt[S.K_PENDING_ADMIT] >= 0:
        return "admit"
    if st.cnt[S.K_PENDING_ROUTE] >= 0:
        return "route"
    if st.cnt[S.K_PENDING_SCALE]:
        return "scale"
    if st.cnt[S.K_FORM_REPLICA] >= 0:
        return "batch"
    return None


def replica_load(st: SimState) -> np.ndarray:
    """Requests waiting in and running on each replica."""
    return st.repi[S.XI_QN] + st.repi[S.XI_ND] + st.repi[S.XI_NPF]


def pool_live_replicas(st: SimState) -> np.ndarray:
    """Replicas of each pool that are on and not failed (starting, active or draining)."""
    live = (st.repi[S.XI_STATE] != S.RS_OFF) & (st.repi[S.XI_STATE] != S.RS_FAILED)
    counts = np.zeros(st.pooli.shape[1], np.int64)
    np.add.at(counts, st.repi[S.XI_POOL], live.astype(np.int64))
    return counts


def pool_bounds(st: SimState) -> tuple[np.ndarray, np.ndarray]:
    """(min replicas, max replicas) of each pool."""
    return st.pooli[S.PI_MIN].copy(), st.pooli[S.PI_MAX].copy()


def billed_gpu_s(st: SimState) -> np.ndarray:
    """GPU-seconds billed so far per pool: closed bills plus the open bills of replicas that are on."""
    on = (st.repi[S.XI_STATE] != S.RS_OFF) & (st.repi[S.XI_STATE] != S.RS_FAILED)
    pool = st.repi[S.XI_POOL]
    open_s = np.where(on, st.clock[S.C_NOW] - st.repf[S.XF_ON_SINCE], 0.0) * st.pooli[S.PI_TP][pool]
    return st.poolf[S.PF_BILLED_GPU_S] + np.bincount(pool, weights=open_s, minlength=st.pooli.shape[1])


def slo_counts(st: SimState) -> tuple[int, int, int]:
    """(finished within SLO, finished past it, dropped) so far."""
    return int(st.cnt[S.K_SLO_MET]), int(st.cnt[S.K_SLO_MISSED_FINISHED]), int(st.cnt[S.K_DROPS])


def replace_future_arrivals(st: SimState, src: SimState) -> SimState:
    """``st`` with its not-yet-arrived open-loop rows replaced by ``src``'s requests arriving after ``st``'s
    clock (a run of the same scenario with another seed): a model-predictive planner's sampled future, so
    that a rollout never sees a real future arrival. Rows ``src`` runs out of never arrive. Returns the new
    state (the prefix-hash table grows by ``src``'s)."""
    now = st.clock[S.C_NOW]
    na, n_open = int(st.cnt[S.K_NEXT_ARRIVAL]), int(st.cnt[S.K_N_OPEN])
    s_open = int(src.cnt[S.K_N_OPEN])
    first = int(np.searchsorted(src.rqf[S.RF_ARRIVAL, :s_open], now, side="right"))
    m = min(n_open - na, s_open - first)
    dst = slice(na, na + m)
    rows = slice(first, first + m)
    st.rqf[:, dst] = src.rqf[:, rows]
    st.rqi[:, dst] = src.rqi[:, rows]
    st.rqf[S.RF_ARRIVAL, na + m : n_open] = np.inf  # the sample ran out of rows: nothing more arrives
    # sampled rows are single calls; their prefix blocks are appended to the fork's hash table
    for f, v in ((S.RI_NEXT, -1), (S.RI_FIRST, -1), (S.RI_STEP, 0), (S.RI_STEPS_LEFT, 0)):
        st.rqi[f, dst] = v
    st.rqi[S.RI_PFX_START, dst] += st.pfx_hash.shape[0]
    return st._replace(pfx_hash=np.concatenate([st.pfx_hash, src.pfx_hash]))
