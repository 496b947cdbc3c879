"""Python front end of the numba core: build a run from a scenario, drive it, and take its outcome.

``Simulator.run()`` simulates to the horizon with the scenario's built-in policies in a handful of kernel calls.
``Simulator.advance()`` with the ``apply_*`` methods is the decision interface the Gym envs build on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from envs.scenario import Scenario, load_scenario
from envs.sim import core
from envs.sim.build import build_state
from envs.sim.outcome import SimOutcome
from envs.sim.state import (
    C_MAX_GAP,
    C_NOW,
    EV_DONE,
    EV_TIME,
    K_EVENTS,
    K_FINISHED,
    K_FORM_REPLICA,
    K_HOLD_N,
    K_ITERATIONS,
    K_NEXT_ARRIVAL,
    K_PENDING_ROUTE,
    K_PREEMPTIONS,
    RS_ACTIVE,
    RS_DRAINING,
    RS_OFF,
    ST_DROPPED,
    ST_INFLIGHT,
    SimState,
    state_nbytes,
)
from envs.workloads.requests import RequestTable
from envs.workloads.scenario_requests import requests_for_scenario


class Simulator:
    """One simulated episode of a scenario.

    ``seed`` overrides the scenario's seed. ``requests`` replaces the scenario's workload sources with a
    ready request table (tenant indices refer to the scenario's tenants). Every random draw of the run (workload and core) comes from
    ``np.random.default_rng(seed)``: the same seed and scenario give bit-identical results.
    """

    def __init__(
        self,
        scenario: Scenario | str | Path,
        seed: int | None = None,
        overrides: dict[str, Any] | None = None,
        control: tuple[str, ...] = (),
        requests: RequestTable | None = None,
    ) -> None:
        if not isinstance(scenario, Scenario):
            scenario = load_scenario(scenario, overrides)
        elif overrides:
            raise ValueError("overrides apply to a scenario name or path, not to a loaded Scenario")
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else int(seed)
        rng = np.random.default_rng(self.seed)
        core_seed = int(rng.integers(1, 2**63 - 1))
        if requests is None:
            requests = requests_for_scenario(scenario, rng)
        else:
            requests.validate("Simulator(requests=...)")
            if len(requests) and int(requests.tenant.max()) >= len(scenario.tenants):
                raise ValueError(
                    f"Simulator(requests=...): tenant index {int(requests.tenant.max())} but the scenario "
                    f"has {len(scenario.tenants)} tenants"
                )
        self.requests = requests
        self.state: SimState = build_state(scenario, self.requests, core_seed, control)

    # ------------------------------------------------------------------ driving
    @property
    def now(self) -> float:
        return float(self.state.clock[C_NOW])

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

    def apply_start(self) -> bool:
        return bool(core.apply_start(self.state))

    def apply_scale(self, deltas: np.ndarray) -> None:
        self.state.scale_delta[:] = np.asarray(deltas, dtype=np.int32)
        core.apply_scale(self.state)

    def route_mask(self) -> np.ndarray:
        """Replicas the pending request may go to (active, serving its model, with room for its context)."""
        out = np.zeros(len(self.state.rep_pool), dtype=np.int8)
        core.route_mask(self.state, out)
        return out.astype(bool)

    def batch_candidates(self, limit: int | None = None) -> np.ndarray:
        """Ids of the waiting requests admissible into the batch being formed, in queue order."""
        cap = limit if limit is not None else max(1, int(self.state.q_req.shape[1]))
        out = np.empty(cap, dtype=np.int64)
        n = core.batch_candidates(self.state, out)
        return out[:n].copy()

    @property
    def pending_request(self) -> int:
        return int(self.state.cnt[K_PENDING_ROUTE])

    @property
    def forming_replica(self) -> int:
        return int(self.state.cnt[K_FORM_REPLICA])

    # ------------------------------------------------------------------ observation of the state
    def counts(self) -> dict[str, int]:
        """Conservation counters: arrived = finished + dropped + in_flight must always hold."""
        st = self.state
        status = st.r_status
        return {
            "arrived": int(st.cnt[K_NEXT_ARRIVAL]),
            "finished": int(st.cnt[K_FINISHED]),
            "dropped": int(np.count_nonzero(status == ST_DROPPED)),
            "in_flight": int(np.count_nonzero(status == ST_INFLIGHT)),
            "queued": int(st.q_n.sum()),
            "running": int(st.s_n.sum()),
            "held": int(st.cnt[K_HOLD_N]),
            "pending_route": int(st.cnt[K_PENDING_ROUTE] >= 0),
            "events": int(st.cnt[K_EVENTS]),
            "iterations": int(st.cnt[K_ITERATIONS]),
            "preemptions": int(st.cnt[K_PREEMPTIONS]),
        }

    def nbytes(self) -> int:
        return state_nbytes(self.state)

    def outcome(self, final: bool = False) -> SimOutcome:
        """Snapshot of the run for the metrics. ``final`` first expires overdue waits (end of episode)."""
        st = self.state
        if final:
            core.finalize(st)
        now = self.now
        up = (st.rep_state == RS_ACTIVE) | (st.rep_state == RS_DRAINING)
        on = st.rep_state != RS_OFF
        open_bill = np.where(on, now - st.rep_on_since, 0.0) * st.p_tp[st.rep_pool]
        billed = st.p_billed_gpu_s + np.bincount(st.rep_pool, weights=open_bill, minlength=len(st.p_tp))
        up_s = st.rep_up_s + np.where(up, now - st.rep_up_since, 0.0)
        kv_block_s = st.rep_kv_block_s + np.where(up, st.rep_kv_used * (now - st.rep_kv_t), 0.0)
        dropped = st.r_status == ST_DROPPED
        sc = self.scenario
        price = np.array(
            [
                p.price_per_gpu_hour if p.price_per_gpu_hour is not None else _default_price(p.gpu)
                for p in sc.pools
            ]
        )
        return SimOutcome(
            now_s=now,
            horizon_s=float(sc.horizon_s),
            arrival_s=st.r_arrival,
            prompt_tokens=st.r_prompt,
            output_tokens=st.r_output,
            tenant=st.r_tenant,
            tier=st.r_tier,
            ttft_slo_s=st.r_ttft_slo,
            tpot_slo_s=st.r_tpot_slo,
            deadline_s=st.r_deadline,
            status=st.r_status.copy(),
            first_token_s=st.r_first.copy(),
            finish_s=np.where(dropped, np.nan, st.r_finish),
            drop_s=np.where(dropped, st.r_finish, np.nan),
            generated_tokens=st.r_generated.copy(),
            cached_prompt_tokens=st.r_cached.copy(),
            preemptions=st.r_preempt.copy(),
            recomputed_tokens=st.r_recomputed.copy(),
            tenant_names=tuple(t.name for t in sc.tenants),
            tenant_weights=st.t_weight.copy(),
            pool_names=tuple(p.name for p in sc.pools),
            pool_gpus_per_replica=st.p_tp.copy(),
            pool_price_per_gpu_hour=price,
            pool_billed_gpu_s=billed,
            replica_pool=st.rep_pool.copy(),
            replica_busy_s=st.rep_busy_s.copy(),
            replica_up_s=up_s,
            replica_kv_block_s=kv_block_s,
            replica_kv_capacity=st.rep_kv_cap.copy(),
            max_service_gap=float(st.clock[C_MAX_GAP]),
        )


def _default_price(gpu: str) -> float:
    from envs.perf.specs import get_gpu

    return float(get_gpu(gpu).price_per_hour)
