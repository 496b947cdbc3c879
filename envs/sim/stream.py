"""Streaming runs: request state bounded by the requests in flight, not by the run's total.

``Simulator`` packs every request of the run into the state up front (~275 B per request at its peak,
measured: 144 B of state (148 B since the admission column), 26 B of request table, ~105 B of outcome copies and metric temporaries; 100M
requests need ~26 GiB, envs/sim/memory.py). ``StreamingSimulator`` keeps the request columns in arrays
of a bounded capacity and drives the same core over arrival windows (``RequestStream``,
envs/workloads/stream.py):

1. run the core up to just before the next window's first possible arrival (``advance(t_limit)`` processes
   every event before the window and none at or after its start, so the event order is the whole run's);
2. retire the finished and dropped rows at the front: hand their SimOutcome fields to the sink, move the
   remaining rows to the front and shift every request id the state holds (running slots, replica queues,
   the hold ring, the arrival pointers) by the same amount;
3. append the next window's rows.

Only a prefix is retired, and only a multiple of 64 rows, so the rows keep their order and their index modulo
64 (the core samples the VTC service gap every 64th request id, core.on_arrival): every comparison and
tie-break by request id is the whole run's, and a streamed run is bit-identical to ``Simulator`` on the same
requests (tests/test_streaming.py). What stays resident is the span from the oldest request not yet retired
to the end of the loaded window; the arrays grow (doubling) when a long-running request holds the prefix.

Runs with the built-in policies only (``run()``), colocated pools, no sessions and no prefix hashes: those
keep request ids in further places (release heap, session links, transfer heap, prefix-hash offsets).
The sink receives ``add(fields)`` per retired block and ``finish(outcome)`` with the final outcome of the rows
still resident: ``CollectingSink`` (here) rebuilds the whole run's ``SimOutcome`` (for tests and modest runs),
``envs/metrics_stream.StreamingMetrics`` folds rows into running metrics in bounded memory.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from servegym.envs.scenario import Scenario, ScenarioError
from servegym.envs.sim import state as S
from servegym.envs.sim.build import build_state, request_arrays
from servegym.envs.sim.memory import check_memory, initial_capacity
from servegym.envs.sim.outcome import SimOutcome
from servegym.envs.sim.simulator import Simulator, open_run, request_fields
from servegym.envs.sim.state import EV_DONE, EV_TIME
from servegym.envs.sim.timing import (
    ContextCounts,
    apply_context_policy,
    resolve_timing,
    tenant_context_limits,
)
from servegym.envs.workloads.requests import RequestTable
from servegym.envs.workloads.stream import RequestStream, streaming_unsupported

RETIRE_ALIGN = 64  # rows are retired in multiples of this (core.on_arrival's every-64th-request sample)
DEFAULT_WINDOW_S = 600.0  # ~11% fewer CPU seconds than 60 s windows on week_global: fewer Python steps


class OutcomeSink(Protocol):
    def add(self, fields: dict[str, np.ndarray]) -> None: ...

    def finish(self, outcome: SimOutcome) -> Any: ...


def streaming_refusal(scenario: Scenario) -> str | None:
    """Why the scenario cannot run streamed (None when it can)."""
    why = streaming_unsupported(scenario)
    if why:
        return why
    if scenario.policies.admission != "admit_all":
        # retired rows do not carry the admission verdicts, and the deferred-request heap is not shifted
        return (
            f"policies.admission is {scenario.policies.admission!r}; streamed runs admit every request "
            "(admit_all)"
        )
    for i, p in enumerate(scenario.pools):
        if p.role != "mixed":
            return f"pools.{i}.role is {p.role!r}; streaming runs colocated (mixed) pools only"
    return None


class CollectingSink:
    """Keeps every retired row: ``finish`` returns the whole run's SimOutcome, equal to ``Simulator``'s."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, fields: dict[str, np.ndarray]) -> None:
        self.parts.append(fields)

    def finish(self, outcome: SimOutcome) -> SimOutcome:
        names = list(self.parts[0]) if self.parts else []
        whole = {k: np.concatenate([p[k] for p in self.parts] + [getattr(outcome, k)]) for k in names}
        return dataclasses.replace(outcome, **whole)


class StreamingSimulator(Simulator):
    """A ``Simulator`` whose requests arrive window by window; ``run(sink)`` returns ``sink.finish(...)``.

    The workload is ``RequestStream(scenario, rng, window_s)``, the same requests ``Simulator`` draws with the
    same seed. ``capacity`` is the initial number of resident rows (default: ``initial_capacity``).
    ``counts()`` and ``audit()`` account for the retired rows; the other observers of ``Simulator`` (``sample``,
    ``scheduling_delays``, ``slo_counts``, forks) see the resident rows only.
    """

    def __init__(
        self,
        scenario: Scenario | str | Path,
        seed: int | None = None,
        overrides: dict[str, Any] | None = None,
        timing: str | None = None,
        window_s: float = DEFAULT_WINDOW_S,
        capacity: int | None = None,
    ) -> None:
        scenario, self.seed, rng, core_seed = open_run(scenario, seed, overrides)
        why = streaming_refusal(scenario)
        if why:
            raise ScenarioError(f"scenario {scenario.name!r}: cannot run streamed: {why}")
        self.scenario = scenario
        self.memory = check_memory(scenario, True, window_s)
        self.stream = RequestStream(scenario, rng, window_s)
        self.timing = resolve_timing(scenario, timing)
        self.context_limit = tenant_context_limits(scenario, self.timing)
        self._windows = self.stream.windows()
        self.context_counts = ContextCounts()
        first = self._next_window()
        self.requests = first  # Simulator reads only its (absent) session columns
        self.state = build_state(scenario, first, core_seed, (), self.timing, 0)
        cap = max(capacity or initial_capacity(scenario, window_s), len(first))
        self._models = list(dict.fromkeys(p.model for p in scenario.pools))
        self._regions = scenario.region_names()
        self._resize(int(math.ceil(cap / RETIRE_ALIGN) * RETIRE_ALIGN))
        self.n_loaded = len(first)
        self.retired = 0  # rows handed to the sink ...
        self.retired_dropped = 0  # ... of which dropped
        self.retired_evictions = 0  # evictions of the retired rows (the core's K_EVICTED counts them all)
        self.peak_rows = self.n_loaded  # most rows resident at once
        self.grown = 0  # times the arrays doubled

    # ------------------------------------------------------------------ windows
    def _next_window(self) -> RequestTable | None:
        table = next(self._windows, None)
        if table is None:
            return None
        table, counts = apply_context_policy(table, self.context_limit, self.scenario.context_policy)
        self.context_counts = ContextCounts(
            rejected=self.context_counts.rejected + counts.rejected,
            truncated=self.context_counts.truncated + counts.truncated,
        )
        return table

    def _resize(self, cap: int) -> None:
        st = self.state
        n = st.rqf.shape[1]
        rqf = np.zeros((S.N_RF, cap))
        rqi = np.zeros((S.N_RI, cap), dtype=np.int32)
        m = min(n, cap)
        rqf[:, :m] = st.rqf[:, :m]
        rqi[:, :m] = st.rqi[:, :m]
        self.state = st._replace(rqf=rqf, rqi=rqi)

    def _retire(self, sink: OutcomeSink) -> None:
        """Hand the finished/dropped prefix (a multiple of RETIRE_ALIGN rows) to the sink and shift the rest."""
        st = self.state
        n = self.n_loaded
        status = st.rqi[S.RI_STATUS, :n]
        live = np.flatnonzero((status == S.ST_FUTURE) | (status == S.ST_INFLIGHT))
        lo = int(live[0]) if live.size else n
        lo = min(lo, _lowest_referenced(st, lo))
        d = lo // RETIRE_ALIGN * RETIRE_ALIGN
        if d == 0:
            return
        sink.add(
            request_fields(st.rqf[:, :d].copy(), st.rqi[:, :d].copy()) | self._context_rows(st.rqi[:, :d])
        )
        m = n - d
        st.rqf[:, :m] = st.rqf[:, d:n]
        st.rqi[:, :m] = st.rqi[:, d:n]
        st.rqf[:, m:n] = 0.0
        st.rqi[:, m:n] = 0
        _shift_ids(st, d)
        self.n_loaded = m
        self.retired += d

    def _context_rows(self, rqi: np.ndarray) -> dict[str, np.ndarray]:
        if self.context_limit is None:
            return {}
        return {"context_limit": self.context_limit[rqi[S.RI_TENANT].astype(np.intp)].astype(np.int32)}

    def _load(self, table: RequestTable) -> None:
        k = len(table)
        st = self.state
        while self.n_loaded + k > st.rqf.shape[1]:
            self._resize(2 * st.rqf.shape[1])
            self.grown += 1
            st = self.state
        rqf, rqi, _ = request_arrays(self.scenario, table, self._models, self._regions)
        a, b = self.n_loaded, self.n_loaded + k
        st.rqf[:, a:b] = rqf
        st.rqi[:, a:b] = rqi
        self.n_loaded = b
        st.cnt[S.K_N_OPEN] = b
        self.peak_rows = max(self.peak_rows, b)

    # ------------------------------------------------------------------ observation, retired rows included
    def counts(self) -> dict[str, int]:
        out = super().counts()
        out["arrived"] += self.retired
        out["dropped"] += self.retired_dropped
        return out

    def audit(self) -> str:
        """The core's audit over the resident rows: the cumulative counters less what the retired rows hold."""
        cnt = self.state.cnt
        saved = cnt.copy()
        cnt[S.K_FINISHED] -= self.retired - self.retired_dropped
        cnt[S.K_EVICTED] -= self.retired_evictions
        try:
            return super().audit()
        finally:
            cnt[:] = saved

    # ------------------------------------------------------------------ driving
    def run(self, sink: OutcomeSink | None = None, progress: bool = False, chunks: int = 100) -> Any:  # type: ignore[override]
        """Simulate to the horizon window by window; returns ``sink.finish(final outcome)`` (default sink:
        ``CollectingSink``, the whole run's SimOutcome)."""
        sink = CollectingSink() if sink is None else sink
        w = self.stream.window_s
        k = 1
        while True:
            table = self._next_window()
            if table is None:
                break
            # every event strictly before the window's start: its arrivals are not loaded yet
            ev = self.advance(float(np.nextafter(k * w, -np.inf)))
            if ev not in (EV_DONE, EV_TIME):
                raise RuntimeError("run() needs a simulator without caller-controlled decisions")
            self._retire(sink)
            self._load(table)
            k += 1
        if self.advance() != EV_DONE:
            raise RuntimeError("run() needs a simulator without caller-controlled decisions")
        out = self.outcome(final=True)
        n = self.n_loaded
        rows = {k: v[:n] for k, v in request_fields(self.state.rqf, self.state.rqi).items()}
        rows |= self._context_rows(self.state.rqi[:, :n])
        out = dataclasses.replace(out, **{k: np.ascontiguousarray(v) for k, v in rows.items()})
        return sink.finish(out)


def _lowest_referenced(st, bound: int) -> int:
    """The lowest request id below ``bound`` that the state still refers to (``bound`` when none)."""
    lo = bound
    req = st.slot[S.SL_REQ]
    held = req[(req >= 0) & (req < lo)]
    if held.size:
        lo = int(held.min())
    n_rep = st.repi.shape[1]
    qn = st.repi[S.XI_QN]
    cols = np.arange(st.queue.shape[1])
    waiting = st.queue[:n_rep][cols[None, :] < qn[:, None]]
    if waiting.size:
        lo = min(lo, int(waiting.min()))
    hold = st.queue[n_rep, (st.cnt[S.K_HOLD_HEAD] + np.arange(st.cnt[S.K_HOLD_N])) % st.queue.shape[1]]
    if hold.size:
        lo = min(lo, int(hold.min()))
    if st.cnt[S.K_PENDING_ROUTE] >= 0:
        lo = min(lo, int(st.cnt[S.K_PENDING_ROUTE]))
    return lo


def _shift_ids(st, d: int) -> None:
    """Subtract ``d`` from every request id the state holds (all are >= d: _lowest_referenced)."""
    req = st.slot[S.SL_REQ]
    req[req >= 0] -= d
    n_rep = st.repi.shape[1]
    qn = st.repi[S.XI_QN]
    cols = np.arange(st.queue.shape[1])
    st.queue[:n_rep][cols[None, :] < qn[:, None]] -= d
    idx = (st.cnt[S.K_HOLD_HEAD] + np.arange(st.cnt[S.K_HOLD_N])) % st.queue.shape[1]
    st.queue[n_rep, idx] -= d
    st.cnt[S.K_NEXT_ARRIVAL] -= d
    st.cnt[S.K_N_OPEN] -= d
