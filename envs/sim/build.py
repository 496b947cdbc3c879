"""Build the simulator's struct-of-arrays state from a validated scenario and its request table.

This is the boundary between Python configuration and the numba core: GPU and model names are resolved
against the perf tables here (errors name the scenario key), and after this point the core trusts its input.
"""

from __future__ import annotations

import numpy as np

from envs.perf.model import kv_cache_blocks, load_perf_coefficients
from envs.perf.specs import get_gpu
from envs.scenario import Scenario, ScenarioError
from envs.sim.policies import BATCHING_IDS, ROUTING_IDS, SCALING_IDS
from envs.sim.state import (
    C_HORIZON,
    C_MAX_WAIT,
    C_NEXT_TICK,
    C_REACTIVE_DOWN,
    C_REACTIVE_UP,
    C_TICK_S,
    K_BATCH_POLICY,
    K_CTRL_BATCH,
    K_CTRL_ROUTE,
    K_CTRL_SCALE,
    K_FORM_REPLICA,
    K_PENDING_ROUTE,
    K_ROUTE_POLICY,
    K_SCALE_POLICY,
    KV_BLOCK_TOKENS,
    N_CLOCK,
    N_CNT,
    PREFIX_BLOCK_TOKENS,
    PREFIX_WAYS,
    RS_ACTIVE,
    TIER_BATCH,
    SimState,
)
from envs.workloads.requests import RequestTable

CONTROLS = ("route", "batch", "scale")


def pool_kv_blocks(scenario: Scenario) -> list[int]:
    out = []
    for i, p in enumerate(scenario.pools):
        try:
            get_gpu(p.gpu)
            out.append(
                kv_cache_blocks(
                    p.model, p.gpu, p.tp, KV_BLOCK_TOKENS, p.gpu_memory_utilization, p.max_batched_tokens
                )
            )
        except (KeyError, ValueError) as e:
            raise ScenarioError(f"scenario {scenario.name!r}: pools.{i} ({p.name}): {e}") from None
    return out


def build_state(
    scenario: Scenario,
    requests: RequestTable,
    core_seed: int,
    control: tuple[str, ...] = (),
) -> SimState:
    """Allocate and fill the state; ``control`` names the decision kinds the caller will take."""
    for c in control:
        if c not in CONTROLS:
            raise ValueError(f"control: unknown decision kind {c!r}; known: {CONTROLS}")
    pools = scenario.pools
    tenants = scenario.tenants
    models = list(dict.fromkeys(p.model for p in pools))
    regions = scenario.region_names()
    n = len(requests)
    n_pool = len(pools)

    # ---- tenants -> per-request attributes
    t_tier = np.array([TIER_BATCH if t.tier == "batch" else 0 for t in tenants], dtype=np.int8)
    t_model = np.array([models.index(t.model or pools[0].model) for t in tenants], dtype=np.int8)
    t_region = np.array([regions.index(t.region or pools[0].region) for t in tenants], dtype=np.int8)
    t_ttft = np.array([t.ttft_slo_s or np.inf for t in tenants], dtype=np.float32)
    t_tpot = np.array([t.tpot_slo_s or np.inf for t in tenants], dtype=np.float32)
    t_deadline = np.array([t.deadline_s or np.inf for t in tenants], dtype=np.float64)
    tix = requests.tenant.astype(np.intp)
    r_tier = t_tier[tix]
    r_ttft = t_ttft[tix]
    r_tpot = t_tpot[tix]
    out_minus_1 = (requests.output_tokens - 1).astype(np.float64)
    r_deadline = np.where(
        r_tier == TIER_BATCH,
        requests.arrival_s + t_deadline[tix],
        requests.arrival_s + r_ttft + r_tpot * out_minus_1,
    )

    # ---- pools and replicas
    kv_blocks = pool_kv_blocks(scenario)
    coefs = []
    for i, p in enumerate(pools):
        try:
            coefs.append(np.asarray(load_perf_coefficients(p.model, p.gpu, p.tp), dtype=np.float64))
        except (KeyError, ValueError) as e:
            raise ScenarioError(f"scenario {scenario.name!r}: pools.{i} ({p.name}): {e}") from None
    k_max = max(len(c) for c in coefs)
    p_coef = np.zeros((n_pool, k_max))
    for i, c in enumerate(coefs):
        p_coef[i, : len(c)] = c
    p_max = np.array([p.max_replicas for p in pools], dtype=np.int32)
    p_first = np.concatenate([[0], np.cumsum(p_max)[:-1]]).astype(np.int32)
    n_rep = int(p_max.sum())
    rep_pool = np.repeat(np.arange(n_pool, dtype=np.int32), p_max)
    rep_kv_cap = np.array([kv_blocks[p] for p in rep_pool], dtype=np.int64)
    pc_sets = np.zeros(n_rep, dtype=np.int32)
    for i, p in enumerate(pools):
        if p.prefix_cache:
            blocks = p.prefix_cache_blocks or max(
                1, kv_blocks[i] * KV_BLOCK_TOKENS // PREFIX_BLOCK_TOKENS // 2
            )
            pc_sets[rep_pool == i] = max(1, blocks // PREFIX_WAYS)
    pc_ways = int(pc_sets.max()) * PREFIX_WAYS if pc_sets.any() else 1
    max_seqs = max(p.max_num_seqs for p in pools)
    qcap = scenario.queue_capacity

    g = len(regions)
    lat = np.zeros((g, g))
    for a, row in scenario.region_latency_ms.items():
        for b, ms in row.items():
            lat[regions.index(a), regions.index(b)] = lat[regions.index(b), regions.index(a)] = ms / 1e3

    clock = np.zeros(N_CLOCK)
    clock[C_NEXT_TICK] = scenario.control_interval_s
    clock[C_HORIZON] = scenario.horizon_s
    clock[C_TICK_S] = scenario.control_interval_s
    clock[C_MAX_WAIT] = scenario.max_wait_s
    clock[C_REACTIVE_UP] = scenario.policies.reactive_up
    clock[C_REACTIVE_DOWN] = scenario.policies.reactive_down
    cnt = np.zeros(N_CNT, dtype=np.int64)
    cnt[K_PENDING_ROUTE] = -1
    cnt[K_FORM_REPLICA] = -1
    cnt[K_BATCH_POLICY] = BATCHING_IDS[scenario.policies.batching]
    cnt[K_ROUTE_POLICY] = ROUTING_IDS[scenario.policies.routing]
    cnt[K_SCALE_POLICY] = SCALING_IDS[scenario.policies.scaling]
    cnt[K_CTRL_ROUTE] = "route" in control
    cnt[K_CTRL_BATCH] = "batch" in control
    cnt[K_CTRL_SCALE] = "scale" in control

    rep_state = np.zeros(n_rep, dtype=np.int8)
    for i, p in enumerate(pools):
        rep_state[p_first[i] : p_first[i] + p.initial_replicas] = RS_ACTIVE  # warm at t = 0, billed from 0

    st = SimState(
        clock=clock,
        cnt=cnt,
        rng=np.array([core_seed | 1], dtype=np.uint64),  # xorshift state must be non-zero
        r_arrival=np.ascontiguousarray(requests.arrival_s, dtype=np.float64),
        r_prompt=np.ascontiguousarray(requests.prompt_tokens, dtype=np.int32),
        r_output=np.ascontiguousarray(requests.output_tokens, dtype=np.int32),
        r_tenant=np.ascontiguousarray(requests.tenant, dtype=np.int16),
        r_tier=r_tier,
        r_model=t_model[tix],
        r_region=t_region[tix],
        r_ttft_slo=r_ttft,
        r_tpot_slo=r_tpot,
        r_deadline=r_deadline,
        r_pfx_off=np.ascontiguousarray(requests.prefix_offsets, dtype=np.int64),
        pfx_hash=np.ascontiguousarray(requests.prefix_hashes, dtype=np.int64),
        r_status=np.zeros(n, dtype=np.int8),
        r_replica=np.full(n, -1, dtype=np.int32),
        r_generated=np.zeros(n, dtype=np.int32),
        r_visible=np.zeros(n),
        r_first=np.full(n, np.nan),
        r_finish=np.full(n, np.nan),
        r_cached=np.zeros(n, dtype=np.int32),
        r_preempt=np.zeros(n, dtype=np.int16),
        r_recomputed=np.zeros(n, dtype=np.int32),
        p_model=np.array([models.index(p.model) for p in pools], dtype=np.int32),
        p_region=np.array([regions.index(p.region) for p in pools], dtype=np.int32),
        p_tp=np.array([p.tp for p in pools], dtype=np.int32),
        p_min=np.array([p.min_replicas for p in pools], dtype=np.int32),
        p_max=p_max,
        p_cold_start=np.array([p.cold_start_s for p in pools]),
        p_max_seqs=np.array([p.max_num_seqs for p in pools], dtype=np.int32),
        p_max_tokens=np.array([p.max_batched_tokens for p in pools], dtype=np.int32),
        p_chunked=np.array([p.chunked_prefill for p in pools], dtype=np.int8),
        p_prefix=np.array([p.prefix_cache for p in pools], dtype=np.int8),
        p_coef=p_coef,
        p_billed_gpu_s=np.zeros(n_pool),
        p_first_rep=p_first,
        rep_pool=rep_pool,
        rep_state=rep_state,
        rep_ready=np.zeros(n_rep),
        rep_next=np.full(n_rep, np.inf),
        rep_busy=np.zeros(n_rep, dtype=np.int8),
        rep_on_since=np.zeros(n_rep),
        rep_up_since=np.zeros(n_rep),
        rep_busy_s=np.zeros(n_rep),
        rep_up_s=np.zeros(n_rep),
        rep_kv_cap=rep_kv_cap,
        rep_kv_used=np.zeros(n_rep, dtype=np.int64),
        rep_kv_block_s=np.zeros(n_rep),
        rep_kv_t=np.zeros(n_rep),
        rep_pc_sets=pc_sets,
        q_req=np.full((n_rep, qcap), -1, dtype=np.int32),
        q_n=np.zeros(n_rep, dtype=np.int32),
        s_req=np.full((n_rep, max_seqs), -1, dtype=np.int32),
        s_n=np.zeros(n_rep, dtype=np.int32),
        s_ctx=np.zeros((n_rep, max_seqs), dtype=np.int32),
        s_prefill_left=np.zeros((n_rep, max_seqs), dtype=np.int32),
        s_out_left=np.zeros((n_rep, max_seqs), dtype=np.int32),
        s_blocks=np.zeros((n_rep, max_seqs), dtype=np.int32),
        s_admit=np.zeros((n_rep, max_seqs), dtype=np.int64),
        s_chunk=np.zeros((n_rep, max_seqs), dtype=np.int32),
        pc_key=np.full((n_rep, pc_ways), -1, dtype=np.int64),
        pc_stamp=np.zeros((n_rep, pc_ways), dtype=np.int64),
        t_weight=np.array([t.weight for t in tenants], dtype=np.float64),
        t_counter=np.zeros(len(tenants)),
        t_waiting=np.zeros(len(tenants), dtype=np.int64),
        region_lat=lat,
        hold=np.full(qcap, -1, dtype=np.int32),
        scale_delta=np.zeros(n_pool, dtype=np.int32),
    )
    return st
