"""An up-front estimate of a run's memory, and a clear refusal when it would not fit.

Measured on the synthetic benchmark scenario (scripts/bench.py, 2M requests, tracemalloc per stage; README
"Measured figures"): the whole-table path holds the request table (26 B/request) and the packed state
(144 B/request when measured: 8 float64 + 20 int32 columns; 148 B since FairServe's admission column) at
once, then the outcome's copies (52 B/request) and the metrics' temporaries (53 B/request) on top of the
state: ``WHOLE_BYTES_PER_REQUEST`` = 275 B measured + 4 B; an admission rule adds the deferral heap (16 B). A streamed run
holds ``initial_capacity`` rows of state (two windows at the peak rate plus max_wait_s, x1.5; the arrays
double if ever needed, so twice that is budgeted), the generators' draw blocks and one window's table.
Both add the replicas' fixed state and the interpreter with numpy and numba loaded (~300 MB RSS measured).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from servegym.envs.scenario import (
    Scenario,
    ScenarioError,
    expected_application_calls,
    expected_source_requests,
)
from servegym.envs.sim import state as S
from servegym.envs.sim.build import pool_kv_blocks
from servegym.envs.workloads.synthetic import _CHUNK, diurnal_amplitude

WHOLE_BYTES_PER_REQUEST = 275 + 4  # measured at 275 B, then the admission column (RI_ADMIT, int32)
STATE_BYTES_PER_ROW = 8 * S.N_RF + 4 * S.N_RI  # 148
DEFERRAL_BYTES_PER_REQUEST = 16  # the deferral heap (build.py: dfq), sized per request when admission is on
SOURCE_BLOCK_BYTES = 6 * 8 * _CHUNK  # a source's buffered arrivals and lengths plus a block's temporaries
BASE_BYTES = 300 * 2**20  # the process itself (Python, numpy, numba and the compiled core), measured RSS
LIMIT_ENV = "SERVEGYM_MEMORY_LIMIT_GB"  # caps the memory a run may count on (shared machines, tests)


@dataclass(frozen=True)
class MemoryEstimate:
    requests: float  # expected requests of the run
    resident_rows: float  # request rows held at once
    request_bytes: float
    fixed_bytes: float  # replicas' state, generator blocks, the process itself
    streaming: bool

    @property
    def total_bytes(self) -> float:
        return self.request_bytes + self.fixed_bytes


def expected_requests(scenario: Scenario) -> float:
    """Expected requests from the synthetic and session sources and the synthetic applications (a trace
    source counts its max_requests, else nothing: its size is the file's; so does an app_trace)."""
    total = expected_application_calls(scenario)
    for src in scenario.sources:
        n = expected_source_requests(src, scenario.horizon_s)
        total += (getattr(src, "max_requests", None) or 0) if n is None else n
    return total


def whole_bytes_per_request(scenario: Scenario) -> int:
    """Bytes per request of a whole-table run: the measured figure, plus the deferral heap under admission."""
    deferral = DEFERRAL_BYTES_PER_REQUEST if scenario.policies.admission != "admit_all" else 0
    return WHOLE_BYTES_PER_REQUEST + deferral


def replica_bytes(scenario: Scenario) -> float:
    """The replicas' fixed state: running slots, waiting queues and prefix-cache tables (build.py)."""
    pools = scenario.pools
    n_rep = sum(p.max_replicas for p in pools)
    max_seqs = max(p.max_num_seqs for p in pools)
    ways = 1
    if any(p.prefix_cache for p in pools):
        kv = pool_kv_blocks(scenario)
        blocks = [
            p.prefix_cache_blocks or max(1, kv[i] * S.KV_BLOCK_TOKENS // S.PREFIX_BLOCK_TOKENS // 2)
            for i, p in enumerate(pools)
            if p.prefix_cache
        ]
        ways = max(blocks)
    return (
        n_rep * (S.N_SL * max_seqs * 8 + scenario.queue_capacity * 4 + 2 * ways * 8)
        + scenario.queue_capacity * 4
    )


def peak_rate_per_s(scenario: Scenario) -> float:
    """The scenario's highest arrival rate (diurnal peaks included), requests/s."""
    total = 0.0
    for src in scenario.sources:
        a = getattr(src, "arrival", None)
        if a is None:
            continue
        amp = 0.0 if a.diurnal is None else diurnal_amplitude(a.diurnal.peak_to_trough)
        total += a.rate_per_s * (1.0 + amp)
    return total


def initial_capacity(scenario: Scenario, window_s: float) -> int:
    """Request rows a streamed run allocates: two windows at the peak rate plus the rows that may wait out
    max_wait_s, with room for bursts (the arrays double if a run ever needs more), in multiples of 64."""
    rows = peak_rate_per_s(scenario) * (2.0 * window_s + scenario.max_wait_s) * 1.5
    return int(math.ceil(max(rows, 4096) / 64) * 64)


def estimate_memory(scenario: Scenario, streaming: bool, window_s: float = 600.0) -> MemoryEstimate:
    n = expected_requests(scenario)
    fixed = replica_bytes(scenario) + BASE_BYTES
    if not streaming:
        return MemoryEstimate(n, n, n * whole_bytes_per_request(scenario), fixed, False)
    rows = 2.0 * initial_capacity(scenario, window_s)
    window_rows = peak_rate_per_s(scenario) * window_s
    # state rows, plus one window's table and its packed columns while it is appended (~170 B/row)
    request_bytes = rows * STATE_BYTES_PER_ROW + window_rows * 170
    fixed += len(scenario.sources) * SOURCE_BLOCK_BYTES
    return MemoryEstimate(n, rows, request_bytes, fixed, True)


def available_bytes() -> float:
    """Memory this process may count on: MemAvailable, the cgroup's limit, and SERVEGYM_MEMORY_LIMIT_GB."""
    out = math.inf
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    out = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            raw = f.read().strip()
        if raw != "max":
            out = min(out, int(raw))
    except (OSError, ValueError):
        pass
    env = os.environ.get(LIMIT_ENV)
    if env:
        out = min(out, float(env) * 2**30)
    return out


def check_memory(
    scenario: Scenario, streaming: bool, window_s: float = 600.0, available: float | None = None
) -> MemoryEstimate:
    """Raise ScenarioError, naming the scenario, the estimate and what to change, when the run would not fit."""
    est = estimate_memory(scenario, streaming, window_s)
    avail = available_bytes() if available is None else available
    if est.total_bytes <= avail:
        return est
    gib = 2**30
    if streaming:
        what = (
            f"~{est.resident_rows:.3g} request rows resident: 2 x ({window_s:g} s windows x 2 + max_wait_s "
            f"{scenario.max_wait_s:g} s) at the peak rate {peak_rate_per_s(scenario):.3g} req/s x 1.5, "
            f"{STATE_BYTES_PER_ROW} B each"
        )
        fix = "lower the peak rate, max_wait_s or the streaming window"
    else:
        what = f"~{est.requests:.3g} requests x {whole_bytes_per_request(scenario)} B (request table, state and outcome)"
        fix = (
            "it is a streaming scenario: run it with StreamingSimulator (docs/streaming.md)"
            if scenario.streaming
            else "set streaming: true and run it with StreamingSimulator (docs/streaming.md), or lower the rate "
            "or the horizon"
        )
    raise ScenarioError(
        f"scenario {scenario.name!r}: the run needs ~{est.total_bytes / gib:.3g} GiB ({what}, plus "
        f"{est.fixed_bytes / gib:.3g} GiB of replica state and process) but ~{avail / gib:.3g} GiB is available: {fix}"
    )
