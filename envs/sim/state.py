"""Struct-of-arrays simulator state.

Everything the numba kernels touch lives in one ``SimState`` namedtuple of numpy arrays: no Python object per
request, no jitclass. Scalars that the kernels mutate live in the small ``clock`` (float64) and ``cnt`` (int64)
arrays, indexed by the constants below, because numba cannot mutate a namedtuple field in place.

Prefixes: ``r_`` per request, ``p_`` per pool, ``rep_`` per replica, ``q_`` per replica queue slot,
``s_`` per replica running slot, ``pc_`` per replica prefix-cache way, ``t_`` per tenant.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Request status.
ST_FUTURE, ST_INFLIGHT, ST_FINISHED, ST_DROPPED = 0, 1, 2, 3
# Replica lifecycle: off -> starting (billed) -> active -> draining (billed, no new work) -> off.
RS_OFF, RS_STARTING, RS_ACTIVE, RS_DRAINING = 0, 1, 2, 3
# Tiers.
TIER_INTERACTIVE, TIER_BATCH = 0, 1

# clock[] indices (float64 scalars).
C_NOW, C_NEXT_TICK, C_HORIZON, C_TICK_S, C_MAX_WAIT, C_MAX_GAP, C_LAST_LEFT_COUNTER, C_REACTIVE_UP = range(8)
C_REACTIVE_DOWN = 8
N_CLOCK = 9

# cnt[] indices (int64 scalars).
(
    K_NEXT_ARRIVAL,  # index of the next request to arrive
    K_PENDING_ROUTE,  # request waiting for an external routing decision, or -1
    K_FORM_REPLICA,  # replica in the middle of forming a batch under external control, or -1
    K_RR,  # round-robin pointer
    K_ADMIT_SEQ,  # monotone admission counter, orders "most recently admitted" for preemption
    K_PREEMPTIONS,
    K_DROPS,
    K_FINISHED,
    K_HOLD_HEAD,  # ring buffer of requests that found no active replica
    K_HOLD_N,
    K_BATCH_POLICY,
    K_ROUTE_POLICY,
    K_SCALE_POLICY,
    K_CTRL_ROUTE,  # 1: routing decisions go to the caller
    K_CTRL_BATCH,
    K_CTRL_SCALE,
    K_PENDING_SCALE,  # 1 while a scaling tick waits for the caller
    K_EVENTS,  # processed events, for benchmarks
    K_ITERATIONS,
    K_TICKS,
    K_HOLD_RETRY,  # 1 when a replica became active and held requests should be routed again
    K_PC_STAMP,  # prefix-cache LRU clock
) = range(22)
N_CNT = 22

# Event codes returned by advance().
EV_DONE, EV_ROUTE, EV_BATCH, EV_SCALE, EV_TIME = 0, 1, 2, 3, 4

KV_BLOCK_TOKENS = 16  # vLLM's default paged-attention block size
PREFIX_BLOCK_TOKENS = 512  # Mooncake trace hash_ids cover 512-token blocks (data README)
PREFIX_WAYS = 8  # set-associative prefix cache: exact LRU within each 8-way set


class SimState(NamedTuple):
    clock: np.ndarray
    cnt: np.ndarray
    rng: np.ndarray  # u8[1], xorshift64* state: the core's only source of randomness
    # requests (static)
    r_arrival: np.ndarray  # f8
    r_prompt: np.ndarray  # i4
    r_output: np.ndarray  # i4
    r_tenant: np.ndarray  # i2
    r_tier: np.ndarray  # i1
    r_model: np.ndarray  # i1
    r_region: np.ndarray  # i1, origin region
    r_ttft_slo: np.ndarray  # f4
    r_tpot_slo: np.ndarray  # f4
    r_deadline: np.ndarray  # f8 absolute
    r_pfx_off: np.ndarray  # i8, N+1
    pfx_hash: np.ndarray  # i8
    # requests (dynamic)
    r_status: np.ndarray  # i1
    r_replica: np.ndarray  # i4
    r_generated: np.ndarray  # i4
    r_visible: np.ndarray  # f8, when it reaches its replica's queue
    r_first: np.ndarray  # f8
    r_finish: np.ndarray  # f8, finish time, or drop time for dropped requests
    r_cached: np.ndarray  # i4 prompt tokens served from the prefix cache
    r_preempt: np.ndarray  # i2
    r_recomputed: np.ndarray  # i4 tokens prefilled again after preemption
    # pools
    p_model: np.ndarray  # i4
    p_region: np.ndarray  # i4
    p_tp: np.ndarray  # i4
    p_min: np.ndarray  # i4
    p_max: np.ndarray  # i4
    p_cold_start: np.ndarray  # f8
    p_max_seqs: np.ndarray  # i4
    p_max_tokens: np.ndarray  # i4
    p_chunked: np.ndarray  # i1
    p_prefix: np.ndarray  # i1
    p_coef: np.ndarray  # f8 [P, K] perf-model coefficients
    p_billed_gpu_s: np.ndarray  # f8, closed billing intervals
    p_first_rep: np.ndarray  # i4, replicas of pool p are [p_first_rep[p], p_first_rep[p] + p_max[p])
    # replicas
    rep_pool: np.ndarray  # i4
    rep_state: np.ndarray  # i1
    rep_ready: np.ndarray  # f8
    rep_next: np.ndarray  # f8 next event time of this replica (iteration end, ready, wake-up), inf if none
    rep_busy: np.ndarray  # i1, an iteration is running
    rep_on_since: np.ndarray  # f8 billing start
    rep_up_since: np.ndarray  # f8 active start
    rep_busy_s: np.ndarray  # f8
    rep_up_s: np.ndarray  # f8
    rep_kv_cap: np.ndarray  # i8 blocks
    rep_kv_used: np.ndarray  # i8 blocks
    rep_kv_block_s: np.ndarray  # f8 integral of used blocks over time
    rep_kv_t: np.ndarray  # f8 time of the last kv_used change
    rep_pc_sets: np.ndarray  # i4 prefix-cache sets
    # per-replica waiting queue (unordered; policies scan it, ties break on request id)
    q_req: np.ndarray  # i4 [R, Qcap]
    q_n: np.ndarray  # i4 [R]
    # per-replica running slots
    s_req: np.ndarray  # i4 [R, S]
    s_n: np.ndarray  # i4 [R]
    s_ctx: np.ndarray  # i4 tokens in the KV cache
    s_prefill_left: np.ndarray  # i4 prompt (or recompute) tokens still to prefill
    s_out_left: np.ndarray  # i4 tokens still to generate
    s_blocks: np.ndarray  # i4 KV blocks held
    s_admit: np.ndarray  # i8 admission sequence number
    s_chunk: np.ndarray  # i4 tokens scheduled in the current iteration
    # prefix cache (set-associative LRU)
    pc_key: np.ndarray  # i8 [R, C]
    pc_stamp: np.ndarray  # i8 [R, C]
    # tenants
    t_weight: np.ndarray  # f8
    t_counter: np.ndarray  # f8 VTC virtual token counter
    t_waiting: np.ndarray  # i8 queued requests per tenant (backlog)
    # regions
    region_lat: np.ndarray  # f8 [G, G] one-way seconds
    # requests that found no active replica
    hold: np.ndarray  # i4 ring buffer
    # scaling decisions from the caller: replicas to add (positive) or remove (negative) per pool
    scale_delta: np.ndarray  # i4 [P]


def state_nbytes(st: SimState) -> int:
    return int(sum(a.nbytes for a in st))
