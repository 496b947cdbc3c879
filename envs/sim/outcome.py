"""The simulator's final (or snapshot) state, handed to the metrics layer.

`SimOutcome` is a plain struct of numpy arrays: one entry per request, tenant, pool or replica.  It holds
no per-request Python objects so that an outcome of 10 million requests costs a few hundred MB and every
metric can be computed with vectorized numpy (see `servegym.envs.metrics`).

Index conventions: `tenant[i]` indexes `tenant_names` / `tenant_weights`; `replica_pool[r]` indexes the
`pool_*` arrays; `tier` is 0 for interactive and 1 for batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from servegym.envs.sim.state import (
    ST_DROPPED,
    ST_FINISHED,
    ST_FUTURE,
    ST_INFLIGHT,
    TIER_BATCH,
    TIER_INTERACTIVE,
)

# Request status codes: the core's (state.py), under the names the metrics read.
STATUS_NOT_ARRIVED = ST_FUTURE
STATUS_IN_FLIGHT = ST_INFLIGHT
STATUS_FINISHED = ST_FINISHED
STATUS_DROPPED = ST_DROPPED

TIER_NAMES = ("interactive", "batch")  # by tier code: TIER_INTERACTIVE, TIER_BATCH (state.py)
__all__ = [
    "STATUS_DROPPED",
    "STATUS_FINISHED",
    "STATUS_IN_FLIGHT",
    "STATUS_NOT_ARRIVED",
    "TIER_BATCH",
    "TIER_INTERACTIVE",
    "TIER_NAMES",
    "SimOutcome",
]

# Field name -> required dtype, grouped by the length the array must share.
_REQUEST_FIELDS: dict[str, np.dtype] = {
    "arrival_s": np.dtype(np.float64),
    "prompt_tokens": np.dtype(np.int32),
    "output_tokens": np.dtype(np.int32),
    "tenant": np.dtype(np.int16),
    "tier": np.dtype(np.int8),
    "ttft_slo_s": np.dtype(np.float32),
    "tpot_slo_s": np.dtype(np.float32),
    "deadline_s": np.dtype(np.float64),
    "status": np.dtype(np.int8),
    "first_token_s": np.dtype(np.float64),
    "finish_s": np.dtype(np.float64),
    "drop_s": np.dtype(np.float64),
    "generated_tokens": np.dtype(np.int32),
    "cached_prompt_tokens": np.dtype(np.int32),
    "preemptions": np.dtype(np.int16),
    "recomputed_tokens": np.dtype(np.int32),
}
_TENANT_FIELDS = {"tenant_weights": np.dtype(np.float64)}
_POOL_FIELDS = {
    "pool_gpus_per_replica": np.dtype(np.int32),
    "pool_price_per_gpu_hour": np.dtype(np.float64),
    "pool_billed_gpu_s": np.dtype(np.float64),
}
_REPLICA_FIELDS = {
    "replica_pool": np.dtype(np.int32),
    "replica_busy_s": np.dtype(np.float64),
    "replica_up_s": np.dtype(np.float64),
    "replica_kv_block_s": np.dtype(np.float64),
    "replica_kv_capacity": np.dtype(np.int64),
}


# eq=False: the generated __eq__ would compare arrays element-wise and fail on truth-testing.
# frozen only stops rebinding fields; the arrays themselves stay writable (the simulator may own them).
@dataclass(frozen=True, eq=False)
class SimOutcome:
    now_s: float  # simulated time at which the outcome was taken (episode end or a mid-run snapshot)
    horizon_s: float
    # --- per request, length N (every request of the workload, including ones not yet arrived)
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    tenant: np.ndarray
    tier: np.ndarray  # 0 interactive, 1 batch
    ttft_slo_s: np.ndarray  # interactive targets; inf for the batch tier
    tpot_slo_s: np.ndarray
    deadline_s: np.ndarray  # absolute completion deadline
    status: np.ndarray  # 0 not yet arrived, 1 in flight, 2 finished, 3 dropped
    first_token_s: np.ndarray  # nan if no token yet
    finish_s: np.ndarray  # nan if unfinished
    drop_s: np.ndarray  # nan unless dropped
    generated_tokens: np.ndarray
    cached_prompt_tokens: np.ndarray  # prefix-cache hits
    preemptions: np.ndarray
    recomputed_tokens: np.ndarray
    # --- per tenant, length T
    tenant_names: tuple[str, ...]
    tenant_weights: np.ndarray
    # --- per pool, length P
    pool_names: tuple[str, ...]
    pool_gpus_per_replica: np.ndarray
    pool_price_per_gpu_hour: np.ndarray
    pool_billed_gpu_s: np.ndarray
    # --- per replica, length R
    replica_pool: np.ndarray
    replica_busy_s: np.ndarray  # time spent running iterations
    replica_up_s: np.ndarray  # time active or draining
    replica_kv_block_s: np.ndarray  # integral over time of used KV blocks
    replica_kv_capacity: np.ndarray  # blocks
    # --- counters
    max_service_gap: float  # max over sampled instants of (max - min) VTC counter among backlogged tenants
    # --- failures and spot capacity (defaults: none, every pool on-demand)
    pool_spot: np.ndarray | None = None  # int8 per pool: 1 for spot capacity; None: all on-demand
    evictions: np.ndarray | None = None  # int16 per request: times sent back by a failure or reclaim
    failures: int = 0  # replica failures
    reclaims: int = 0  # spot reclaim warnings
    # --- agentic sessions (None: no sessions; see envs/workloads/sessions.py)
    session: np.ndarray | None = None  # int32 per request: session id, -1 outside a session
    session_steps_left: np.ndarray | None = None  # int32 per request: steps of its session after it
    # int32 per request: context shared with the previous step (its prompt + output; 0 for a first step)
    session_context_tokens: np.ndarray | None = None
    tenant_session_slo_s: np.ndarray | None = None  # float64 per tenant: session target, NaN when none
    # --- context limits (timing v1; None under v0, which has none; envs/sim/timing.py)
    context_limit: np.ndarray | None = None  # int32 per request: its model's max prompt + output tokens
    context_rejected: int = 0  # requests removed from the workload at load (context_policy reject)
    context_truncated: int = 0  # requests whose prompt was truncated to fit (context_policy truncate)
    # --- prefill/decode disaggregation (None: every pool mixed, colocated serving; envs/sim/disagg.py)
    pool_role: np.ndarray | None = None  # int8 per pool: 0 mixed, 1 prefill, 2 decode
    transfer_s: np.ndarray | None = None  # float64 per request: seconds its KV transfers took
    transfer_wait_s: np.ndarray | None = None  # float64 per request: seconds its KV waited for a decode slot
    transfer_bytes: np.ndarray | None = None  # float64 per request: KV bytes it moved
    transfers: np.ndarray | None = None  # int16 per request: KV transfers completed
    transfer_failures: int = 0  # transfers (or waits for one) cut by a failure of either replica
    # --- applications and admission (None: none; envs/workloads/applications.py, envs/sim/admission.py)
    # int16 per tenant: index of the user's application in application_names, -1 outside any
    tenant_application: np.ndarray | None = None
    application_names: tuple[str, ...] = ()
    tenant_abusive: np.ndarray | None = None  # int8 per tenant: the workload's ground truth (1 abusive)
    # int16 per request: 4 * times deferred + 2 if turned away (rejected or deferred) while the fleet was not
    # overloaded + 1 if rejected at admission
    admission: np.ndarray | None = None

    @property
    def n_requests(self) -> int:
        return int(self.arrival_s.shape[0])

    def validate(self) -> None:
        """Check shapes, dtypes and index ranges; raise ValueError naming the offending field.

        Ranges are checked as well as dtypes because the metrics use `np.bincount` on `tenant` and
        `status`, which would otherwise fail (or silently mis-count) on out-of-range codes.
        """
        for name in (
            "now_s",
            "horizon_s",
            "max_service_gap",
            "failures",
            "reclaims",
            "context_rejected",
            "context_truncated",
            "transfer_failures",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"SimOutcome.{name}: expected a real number, got {type(value).__name__}")
        if not (np.isfinite(self.now_s) and self.now_s >= 0):
            raise ValueError(f"SimOutcome.now_s: must be finite and >= 0, got {self.now_s}")

        for name in ("tenant_names", "pool_names", "application_names"):
            names = getattr(self, name)
            if not isinstance(names, tuple) or not all(isinstance(s, str) for s in names):
                raise ValueError(f"SimOutcome.{name}: expected a tuple of str")
            # Names become metric keys, so duplicates would silently overwrite each other.
            if len(set(names)) != len(names):
                raise ValueError(f"SimOutcome.{name}: names must be unique, got {names}")

        n = _check_group(self, _REQUEST_FIELDS, "arrival_s", None)
        _check_group(self, _TENANT_FIELDS, "tenant_names", len(self.tenant_names))
        _check_group(self, _POOL_FIELDS, "pool_names", len(self.pool_names))
        _check_group(self, _REPLICA_FIELDS, "replica_pool", None)

        for name, dtype, length in (
            ("pool_spot", np.int8, len(self.pool_names)),
            ("evictions", np.int16, n),
            ("session", np.int32, n),
            ("session_steps_left", np.int32, n),
            ("session_context_tokens", np.int32, n),
            ("tenant_session_slo_s", np.float64, len(self.tenant_names)),
            ("context_limit", np.int32, n),
            ("pool_role", np.int8, len(self.pool_names)),
            ("transfer_s", np.float64, n),
            ("transfer_wait_s", np.float64, n),
            ("transfer_bytes", np.float64, n),
            ("transfers", np.int16, n),
            ("tenant_application", np.int16, len(self.tenant_names)),
            ("tenant_abusive", np.int8, len(self.tenant_names)),
            ("admission", np.int16, n),
        ):
            arr = getattr(self, name)
            if arr is not None and (
                not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != (length,)
            ):
                raise ValueError(
                    f"SimOutcome.{name}: expected None or a {np.dtype(dtype)} array of length {length}"
                )
        n_tenants, n_pools = len(self.tenant_names), len(self.pool_names)
        if n > 0:
            _check_range(self, "status", STATUS_NOT_ARRIVED, STATUS_DROPPED)
            _check_range(self, "tier", TIER_INTERACTIVE, TIER_BATCH)
            _check_range(self, "tenant", 0, n_tenants - 1)
        if self.replica_pool.shape[0] > 0:
            _check_range(self, "replica_pool", 0, n_pools - 1)
        if self.pool_role is not None and n_pools > 0:
            _check_range(self, "pool_role", 0, 2)
        w = self.tenant_weights
        if w.size and not (np.all(np.isfinite(w)) and np.all(w > 0)):
            raise ValueError("SimOutcome.tenant_weights: weights must be finite and > 0")

    def summary_counts(self) -> dict[str, int]:
        """Counts of requests by status; `arrived` = every status except not-yet-arrived."""
        counts = np.bincount(self.status, minlength=4) if self.status.size else np.zeros(4, np.int64)
        return {
            "arrived": int(counts[1:].sum()),
            "finished": int(counts[STATUS_FINISHED]),
            "dropped": int(counts[STATUS_DROPPED]),
            "in_flight": int(counts[STATUS_IN_FLIGHT]),
        }


def _check_group(o: SimOutcome, spec: dict[str, np.dtype], length_from: str, length: int | None) -> int:
    """Check every array in `spec` is 1-D with the given dtype and a common length; return that length."""
    for name, dtype in spec.items():
        arr = getattr(o, name)
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"SimOutcome.{name}: expected numpy.ndarray, got {type(arr).__name__}")
        if arr.ndim != 1:
            raise ValueError(f"SimOutcome.{name}: expected a 1-D array, got shape {arr.shape}")
        if arr.dtype != dtype:
            raise ValueError(f"SimOutcome.{name}: expected dtype {dtype}, got {arr.dtype}")
        if length is None:
            length = arr.shape[0]
        elif arr.shape[0] != length:
            raise ValueError(
                f"SimOutcome.{name}: expected length {length} (as {length_from}), got {arr.shape[0]}"
            )
    assert length is not None
    return length


def _check_range(o: SimOutcome, name: str, lo: int, hi: int) -> None:
    arr = getattr(o, name)
    vmin, vmax = int(arr.min()), int(arr.max())
    if vmin < lo or vmax > hi:
        raise ValueError(f"SimOutcome.{name}: values must lie in [{lo}, {hi}], found [{vmin}, {vmax}]")


# Every field must be covered by exactly one check group or the scalar/name checks above.
assert {f.name for f in fields(SimOutcome)} == (
    set(_REQUEST_FIELDS)
    | set(_TENANT_FIELDS)
    | set(_POOL_FIELDS)
    | set(_REPLICA_FIELDS)
    | {"now_s", "horizon_s", "max_service_gap", "tenant_names", "pool_names"}
    | {"pool_spot", "evictions", "failures", "reclaims"}
    | {"session", "session_steps_left", "session_context_tokens", "tenant_session_slo_s"}
    | {"context_limit", "context_rejected", "context_truncated"}
    | {"pool_role", "transfer_s", "transfer_wait_s", "transfer_bytes", "transfers", "transfer_failures"}
    | {"tenant_application", "application_names", "tenant_abusive", "admission"}
)
