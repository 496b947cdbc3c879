"""Python front end of the numba core: build a run from a scenario, drive it, and take its outcome.

``Simulator.run()`` simulates to the horizon with the scenario's built-in policies in a handful of kernel calls.
``Simulator.advance()`` with the ``apply_*`` methods is the decision interface the Gym envs build on.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from servegym.envs.scenario import CAPACITY_SCALERS, Scenario, load_scenario
from servegym.envs.sim import core, probe
from servegym.envs.sim import state as S
from servegym.envs.sim.audit import AUDIT_MESSAGES, audit
from servegym.envs.sim.build import build_state, pool_capacities, pool_price_per_gpu_hour
from servegym.envs.sim.fork import copy_into, copy_state, release_control
from servegym.envs.sim.memory import check_memory
from servegym.envs.sim.outcome import SimOutcome
from servegym.envs.sim.policies import BATCHING_IDS, ROUTING_IDS, SCALING_IDS
from servegym.envs.sim.probe import ClusterSample, sample, scheduling_delays
from servegym.envs.sim.replica import sync_generated
from servegym.envs.sim.state import EV_DONE, EV_TIME, SimState, state_nbytes
from servegym.envs.sim.timing import (
    TIMING_BUSY_TO_NOW,
    apply_context_policy,
    context_fields,
    resolve_timing,
    tenant_context_limits,
)
from servegym.envs.sim.trace import iteration_trace
from servegym.envs.workloads.requests import RequestTable
from servegym.envs.workloads.scenario_requests import requests_for_scenario


def request_fields(rqf: np.ndarray, rqi: np.ndarray) -> dict[str, np.ndarray]:
    """SimOutcome's per-request fields from the state's request columns (the streaming run hands its retired
    rows to its sink through the same function, envs/sim/stream.py)."""
    status = rqi[S.RI_STATUS].astype(np.int8)
    dropped = status == S.ST_DROPPED
    finish = rqf[S.RF_FINISH]
    return dict(
        arrival_s=rqf[S.RF_ARRIVAL],
        prompt_tokens=rqi[S.RI_PROMPT],
        output_tokens=rqi[S.RI_OUTPUT],
        tenant=rqi[S.RI_TENANT].astype(np.int16),
        tier=rqi[S.RI_TIER].astype(np.int8),
        ttft_slo_s=rqf[S.RF_TTFT_SLO].astype(np.float32),
        tpot_slo_s=rqf[S.RF_TPOT_SLO].astype(np.float32),
        deadline_s=rqf[S.RF_DEADLINE],
        status=status,
        first_token_s=rqf[S.RF_FIRST].copy(),
        finish_s=np.where(dropped, np.nan, finish),
        drop_s=np.where(dropped, finish, np.nan),
        generated_tokens=rqi[S.RI_GENERATED].copy(),
        cached_prompt_tokens=rqi[S.RI_CACHED].copy(),
        preemptions=rqi[S.RI_PREEMPT].astype(np.int16),
        recomputed_tokens=rqi[S.RI_RECOMPUTED].copy(),
        evictions=rqi[S.RI_EVICT].astype(np.int16),
    )


def open_run(
    scenario: Scenario | str | Path, seed: int | None, overrides: dict[str, Any] | None
) -> tuple[Scenario, int, np.random.Generator, int]:
    """(scenario, seed, the run's generator, the core's seed): the scenario loaded with its overrides, and the
    seed's one stream, whose first draw seeds the core and whose later draws make the workload (the whole
    table here, the streamed windows in envs/sim/stream.py)."""
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario, overrides)
    elif overrides:
        raise ValueError("overrides apply to a scenario name or path, not to a loaded Scenario")
    run_seed = scenario.seed if seed is None else int(seed)
    rng = np.random.default_rng(run_seed)
    core_seed = int(rng.integers(1, 2**63 - 1))
    return scenario, run_seed, rng, core_seed


class Simulator:
    """One simulated episode of a scenario.

    ``seed`` overrides the scenario's seed. ``requests`` replaces the scenario's workload sources with a
    ready request table (tenant indices refer to the scenario's tenants). Every random draw of the run (workload and core) comes from
    ``np.random.default_rng(seed)``: the same seed and scenario give bit-identical results.
    ``timing`` is the timing version when the scenario names none (envs/sim/timing.py; default v1).
    ``trace`` > 0 records up to that many iterations (``iteration_trace()``); 0 records nothing.
    """

    def __init__(
        self,
        scenario: Scenario | str | Path,
        seed: int | None = None,
        overrides: dict[str, Any] | None = None,
        control: tuple[str, ...] = (),
        requests: RequestTable | None = None,
        timing: str | None = None,
        trace: int = 0,
    ) -> None:
        scenario, self.seed, rng, core_seed = open_run(scenario, seed, overrides)
        self.scenario = scenario
        if requests is None:
            # before anything is drawn: a clear refusal, not a MemoryError
            check_memory(scenario, streaming=False)
            requests = requests_for_scenario(scenario, rng)
        else:
            requests.validate("Simulator(requests=...)")
            if len(requests) and int(requests.tenant.max()) >= len(scenario.tenants):
                raise ValueError(
                    f"Simulator(requests=...): tenant index {int(requests.tenant.max())} but the scenario "
                    f"has {len(scenario.tenants)} tenants"
                )
        self.timing = resolve_timing(scenario, timing)
        self.context_limit = tenant_context_limits(scenario, self.timing)
        self.requests, self.context_counts = apply_context_policy(
            requests, self.context_limit, scenario.context_policy
        )
        self.state: SimState = build_state(scenario, self.requests, core_seed, control, self.timing, trace)

    # ------------------------------------------------------------------ driving
    @property
    def now(self) -> float:
        return float(self.state.clock[S.C_NOW])

    def advance(self, t_limit: float = np.inf) -> int:
        """Run until a decision the caller controls is pending, ``t_limit``, or the horizon (EV_* code)."""
        return int(core.advance(self.state, float(t_limit)))

    def run(self, progress: bool = False, chunks: int = 100) -> SimOutcome:
        """Simulate to the horizon with the built-in policies; ``progress`` shows a bar over simulated time."""
        horizon = self.scenario.horizon_s
        if not progress:
            if self.advance() != EV_DONE:
                raise RuntimeError("run() needs a simulator without caller-controlled decisions")
            return self.outcome(final=True)
        from tqdm import tqdm

        # compile (or load) the core before the bar starts, so that its ETA measures simulation only
        if self.advance(0.0) not in (EV_DONE, EV_TIME):
            raise RuntimeError("run() needs a simulator without caller-controlled decisions")
        with tqdm(total=horizon, unit="sim-s", desc=self.scenario.name, leave=False) as bar:
            for k in range(1, chunks + 1):
                ev = self.advance(horizon * k / chunks)
                if ev not in (EV_DONE, EV_TIME):
                    raise RuntimeError("run() needs a simulator without caller-controlled decisions")
                bar.update(self.now - bar.n)
                if ev == EV_DONE:
                    break
        return self.outcome(final=True)

    def apply_route(self, replica: int) -> bool:
        return bool(core.apply_route(self.state, int(replica)))

    def apply_admit(self, request: int) -> bool:
        return bool(core.apply_admit(self.state, int(request)))

    def apply_admission(self, action: int) -> bool:
        """Answer the pending admission decision: 0 admit, 1 defer, 2 reject (envs/sim/admission.py)."""
        return bool(core.apply_admission(self.state, int(action)))

    def pending_admission(self) -> int:
        """The request waiting for an admission decision, -1 when none."""
        return int(self.state.cnt[S.K_PENDING_ADMIT])

    def apply_start(self) -> bool:
        return bool(core.apply_start(self.state))

    def apply_scale(self, deltas: np.ndarray) -> None:
        self.state.pooli[S.PI_SCALE_DELTA] = np.asarray(deltas, dtype=np.int64)
        core.apply_scale(self.state)

    def route_mask(self) -> np.ndarray:
        """Replicas the pending request may go to (active, serving its model, with room for its context); in
        its decode phase (``pending_phase``), the decode replicas that can take its KV cache now."""
        out = np.zeros(self.state.repi.shape[1], dtype=np.int8)
        core.route_mask(self.state, out)
        return out.astype(bool)

    def batch_candidates(self, limit: int | None = None) -> np.ndarray:
        """Ids of the waiting requests admissible into the batch being formed, in queue order."""
        cap = limit if limit is not None else int(self.state.queue.shape[1])
        out = np.empty(cap, dtype=np.int64)
        n = core.batch_candidates(self.state, out)
        return out[:n].copy()

    @property
    def pending_request(self) -> int:
        return int(self.state.cnt[S.K_PENDING_ROUTE])

    @property
    def pending_phase(self) -> str:
        """Which phase the pending routing decision routes: "prefill" (a new request; colocated serving
        routes only these) or "decode" (a prefilled request's KV cache, disaggregation)."""
        return "decode" if self.state.cnt[S.K_ROUTE_PHASE] else "prefill"

    def request_replica(self, request: int) -> int:
        """The replica request ``request`` was routed to (-1 while unrouted or held)."""
        return int(self.state.rqi[S.RI_REPLICA, int(request)])

    def queued_requests(self, replica: int) -> np.ndarray:
        """Ids of the requests waiting in ``replica``'s queue, in queue order."""
        r = int(replica)
        return self.state.queue[r, : self.state.repi[S.XI_QN, r]].copy()

    def request_dropped(self, request: int) -> bool:
        return bool(self.state.rqi[S.RI_STATUS, int(request)] == S.ST_DROPPED)

    @property
    def forming_replica(self) -> int:
        return int(self.state.cnt[S.K_FORM_REPLICA])

    # ------------------------------------------------------------------ forking (planning, search)
    def snapshot(self) -> SimState:
        """A copy of the whole run state (the packed arrays, the core's random stream included)."""
        return copy_state(self.state)

    def restore(self, snap: SimState) -> None:
        """Put this run back to ``snap`` (taken from it by ``snapshot``); the arrays keep their identity."""
        copy_into(self.state, snap)

    def fork(self) -> Simulator:
        """An independent copy of this run: continued with the same decisions it gives bit-identical results.

        The scenario and the request table are shared (the core never writes to them); the state is copied.
        """
        twin = copy.copy(self)
        twin.state = copy_state(self.state)
        return twin

    def release_control(self) -> None:
        """Settle the pending decision with the scenario's built-in rule and take every later one by the
        rules too (a planner's rollout); the caller controls nothing in this run afterwards."""
        release_control(self.state)

    def use_rule(self, kind: str, name: str) -> None:
        """Take this decision kind's built-in decisions by rule ``name`` from now on, instead of the
        scenario's ``policies`` rule: a planner's rollouts follow a base heuristic this way (the rollout
        algorithm's base policy). Only the built-in decisions change; the caller's controls stay as they are."""
        table = {
            "batch": (BATCHING_IDS, S.K_BATCH_POLICY),
            "route": (ROUTING_IDS, S.K_ROUTE_POLICY),
            "scale": (SCALING_IDS, S.K_SCALE_POLICY),
        }
        if kind not in table:
            raise ValueError(f"use_rule: kind must be one of {sorted(table)}, got {kind!r}")
        ids, slot = table[kind]
        if name not in ids:
            raise ValueError(f"use_rule: no {kind} rule {name!r}; known: {sorted(ids)}")
        if kind == "scale" and name in CAPACITY_SCALERS and np.isnan(pool_capacities(self.scenario)).any():
            raise ValueError(
                f"use_rule: scaling rule {name!r} sizes pools from policies.replica_capacity_rps, which "
                f"scenario {self.scenario.name!r} does not give for every pool"
            )
        self.state.cnt[slot] = ids[name]

    # ------------------------------------------------------------------ observation of the state
    def counts(self) -> dict[str, int]:
        """Conservation counters: arrived = finished + dropped + in_flight must always hold."""
        st = self.state
        status = st.rqi[S.RI_STATUS]
        return {
            "arrived": int(st.cnt[S.K_NEXT_ARRIVAL] + st.cnt[S.K_RELEASED]),
            "finished": int(st.cnt[S.K_FINISHED]),
            "dropped": int(np.count_nonzero(status == S.ST_DROPPED)),
            "in_flight": int(np.count_nonzero(status == S.ST_INFLIGHT)),
            "queued": int(st.repi[S.XI_QN].sum()),
            # decoding, prefilling, and decode slots holding KV caches in transfer or arrived (disagg.py)
            "running": int(st.repi[S.XI_ND].sum() + st.repi[S.XI_NPF].sum() + st.repi[S.XI_NRX].sum()),
            "held": int(st.cnt[S.K_HOLD_N]),
            "pending_route": int(st.cnt[S.K_PENDING_ROUTE] >= 0),
            "events": int(st.cnt[S.K_EVENTS]),
            "iterations": int(st.cnt[S.K_ITERATIONS]),
            "preemptions": int(st.cnt[S.K_PREEMPTIONS]),
            "failures": int(st.cnt[S.K_FAILURES]),
            "reclaims": int(st.cnt[S.K_RECLAIMS]),
            "evicted": int(st.cnt[S.K_EVICTED]),
            "failed_replicas": int(np.count_nonzero(st.repi[S.XI_STATE] == S.RS_FAILED)),
            "session_steps_released": int(st.cnt[S.K_RELEASED]),
            "session_steps_pending": int(st.cnt[S.K_REL_N]),
            "transfers_in_flight": int(st.cnt[S.K_XF_N]),
            "transfer_waiting": int(st.cnt[S.K_XW_N]),
            "transfers_done": int(st.cnt[S.K_TRANSFERS]),
            "transfer_failures": int(st.cnt[S.K_XFER_FAILED]),
            "rejected": int(st.cnt[S.K_REJECTED]),
            "deferrals": int(st.cnt[S.K_DEFERRALS]),
            "deferred": int(st.cnt[S.K_DF_N]),
            "pending_admission": int(st.cnt[S.K_PENDING_ADMIT] >= 0),
        }

    def sample(self) -> ClusterSample:
        """The cluster now: arrivals, SLO counts, waiting requests, replica states and KV use (probe.py)."""
        return sample(self.state)

    def scheduling_delays(self) -> np.ndarray:
        """Each served request's TTFT less its prefill alone and the network; +inf per request dropped
        before its first token (probe.py)."""
        return scheduling_delays(self.state)

    # what planners read between rollouts (probe.py)
    @property
    def n_replicas(self) -> int:
        return int(self.state.repi.shape[1])

    def pending_decision(self) -> str | None:
        """'route', 'scale' or 'batch' while the run waits on that decision, else None."""
        return probe.pending_decision(self.state)

    def replica_load(self) -> np.ndarray:
        """Requests waiting in and running on each replica."""
        return probe.replica_load(self.state)

    def pool_live_replicas(self) -> np.ndarray:
        """Replicas of each pool that are on and not failed."""
        return probe.pool_live_replicas(self.state)

    def pool_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(min replicas, max replicas) of each pool."""
        return probe.pool_bounds(self.state)

    def billed_gpu_s(self) -> np.ndarray:
        """GPU-seconds billed so far per pool, open bills included."""
        return probe.billed_gpu_s(self.state)

    def slo_counts(self) -> tuple[int, int, int]:
        """(finished within SLO, finished past it, dropped) so far."""
        return probe.slo_counts(self.state)

    def replace_future_arrivals(self, sample: Simulator) -> None:
        """Replace the requests that have not arrived yet by ``sample``'s arriving after now (MPC's sampled
        future; ``sample`` is a fresh run of the same scenario with another seed)."""
        self.state = probe.replace_future_arrivals(self.state, sample.state)

    def audit(self) -> str:
        """Recompute every incremental aggregate of the core; '' when consistent, else what is wrong."""
        code, where = audit(self.state)
        return "" if code == 0 else f"{AUDIT_MESSAGES[int(code)]} (at index {int(where)}, t={self.now:.6f})"

    def nbytes(self) -> int:
        return state_nbytes(self.state)

    def outcome(self, final: bool = False) -> SimOutcome:
        """Snapshot of the run for the metrics. ``final`` first expires overdue waits (end of episode)."""
        st = self.state
        if final:
            core.finalize(st)
        sync_generated(st)
        now = self.now
        rstate = st.repi[S.XI_STATE]
        pool = st.repi[S.XI_POOL]
        up = (rstate == S.RS_ACTIVE) | (rstate == S.RS_DRAINING)
        on = rstate != S.RS_OFF
        open_bill = np.where(on, now - st.repf[S.XF_ON_SINCE], 0.0) * st.pooli[S.PI_TP][pool]
        n_pool = st.pooli.shape[1]
        billed = st.poolf[S.PF_BILLED_GPU_S] + np.bincount(pool, weights=open_bill, minlength=n_pool)
        up_s = st.repf[S.XF_UP_S] + np.where(up, now - st.repf[S.XF_UP_SINCE], 0.0)
        kv_open = np.where(up, st.repi[S.XI_KV_USED] * (now - st.repf[S.XF_KV_T]), 0.0)
        sc = self.scenario
        price = np.array([pool_price_per_gpu_hour(p) for p in sc.pools])
        return SimOutcome(
            now_s=now,
            horizon_s=float(sc.horizon_s),
            **request_fields(st.rqf, st.rqi),
            tenant_names=tuple(t.name for t in sc.tenants),
            tenant_weights=st.ten[S.TF_WEIGHT].copy(),
            pool_names=tuple(p.name for p in sc.pools),
            pool_gpus_per_replica=st.pooli[S.PI_TP].astype(np.int32),
            pool_price_per_gpu_hour=price,
            pool_billed_gpu_s=billed,
            replica_pool=pool.astype(np.int32),
            replica_busy_s=self._busy_s(up, now),
            replica_up_s=up_s,
            replica_kv_block_s=st.repf[S.XF_KV_BLOCK_S] + kv_open,
            replica_kv_capacity=st.repi[S.XI_KV_CAP].copy(),
            max_service_gap=float(st.clock[S.C_MAX_GAP]),
            pool_spot=st.pooli[S.PI_SPOT].astype(np.int8),
            failures=int(st.cnt[S.K_FAILURES]),
            reclaims=int(st.cnt[S.K_RECLAIMS]),
            **self._session_fields(),
            **self._disagg_fields(),
            **self._admission_fields(),
            **context_fields(self.context_limit, self.context_counts, st.rqi[S.RI_TENANT]),
        )

    def _busy_s(self, up: np.ndarray, now: float) -> np.ndarray:
        """Per replica, time spent running iterations up to ``now``. The core credits an iteration's whole
        duration when it starts; under timing v1 the part of a running one that lies after ``now`` is taken
        back (TIMING_BUSY_TO_NOW), so busy time never exceeds up time."""
        st = self.state
        busy = st.repf[S.XF_BUSY_S].copy()
        if TIMING_BUSY_TO_NOW[self.timing]:
            running = up & (st.repi[S.XI_BUSY] == 1)
            ahead = np.maximum(st.repf[S.XF_NEXT][running] - now, 0.0)
            busy[running] -= ahead
        return busy

    def iteration_trace(self) -> dict[str, np.ndarray]:
        """The recorded iterations (``trace`` > 0): replica, start_s, prefill_tokens, decode_seqs,
        kv_context_tokens, duration_s (predicted), in start order per replica; at most ``trace`` rows."""
        return iteration_trace(self.state)

    def _admission_fields(self) -> dict[str, Any]:
        """SimOutcome's application and admission fields (none without applications or admission)."""
        st = self.state
        sc = self.scenario
        out: dict[str, Any] = {}
        if sc.applications:
            out["tenant_application"] = st.ten[S.TF_APP].astype(np.int16)
            out["application_names"] = tuple(a.name for a in sc.applications)
            out["tenant_abusive"] = np.array([t.abusive for t in sc.tenants], dtype=np.int8)
        if st.cnt[S.K_ADMISSION]:
            out["admission"] = st.rqi[S.RI_ADMIT].astype(np.int16)
        return out

    def _disagg_fields(self) -> dict[str, Any]:
        """SimOutcome's disaggregation fields (none when every pool is mixed)."""
        st = self.state
        if not st.cnt[S.K_DISAGG]:
            return {}
        return {
            "pool_role": st.pooli[S.PI_ROLE].astype(np.int8),
            "transfer_s": st.xqf[S.XQF_XFER_S].copy(),
            "transfer_wait_s": st.xqf[S.XQF_XWAIT_S].copy(),
            "transfer_bytes": st.xqf[S.XQF_BYTES].copy(),
            "transfers": st.xqi[S.XQI_XFERS].astype(np.int16),
            "transfer_failures": int(st.cnt[S.K_XFER_FAILED]),
        }

    def _session_fields(self) -> dict[str, Any]:
        """SimOutcome's session fields (none without sessions); static per run, so computed once."""
        sess = self.requests.sessions
        if sess is None:
            return {}
        if not hasattr(self, "_sess_fields"):
            ctx = np.zeros(len(self.requests), dtype=np.int32)
            prev = np.flatnonzero(sess.next >= 0)
            ctx[sess.next[prev]] = self.requests.prompt_tokens[prev] + self.requests.output_tokens[prev]
            slo = [np.nan if t.session_slo_s is None else t.session_slo_s for t in self.scenario.tenants]
            self._sess_fields = {
                "session": sess.session,
                "session_steps_left": sess.steps_left,
                "session_context_tokens": ctx,
                "tenant_session_slo_s": np.array(slo, dtype=np.float64),
            }
        return self._sess_fields
