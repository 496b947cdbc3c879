"""Build the simulator's struct-of-arrays state from a validated scenario and its request table.

This is the boundary between Python configuration and the numba core: GPU and model names are resolved
against the perf tables here (errors name the scenario key), and after this point the core trusts its input.
"""

from __future__ import annotations

import numpy as np

from servegym.envs.perf.model import kv_cache_blocks, load_perf_coefficients
from servegym.envs.perf.specs import get_gpu, get_model
from servegym.envs.rules import ADMISSION_KIND, DECISION_KINDS
from servegym.envs.scenario import PoolConfig, Scenario, ScenarioError
from servegym.envs.sim import state as S
from servegym.envs.sim.disagg_build import disaggregation_arrays
from servegym.envs.sim.faults import arm_initial_faults
from servegym.envs.sim.policies import ADMISSION_IDS, BATCHING_IDS, ROUTING_IDS, SCALING_IDS
from servegym.envs.sim.state import SimState
from servegym.envs.sim.timing import pool_engine, resolve_timing, tenant_context_limits
from servegym.envs.workloads.applications import application_index, application_units, user_rate
from servegym.envs.workloads.requests import RequestTable, SessionColumns

CONTROLS = (*DECISION_KINDS, ADMISSION_KIND)


def session_first_rows(sess: SessionColumns) -> np.ndarray:
    """Row of each request's session's first step (-1 outside a session), following the ``next`` chains."""
    first = np.where(sess.step == 0, np.arange(sess.step.shape[0]), -1)
    first[sess.session < 0] = -1
    cur = np.flatnonzero((sess.step == 0) & (sess.next >= 0))
    while cur.size:  # one chain link per pass: at most the longest session's steps
        nxt = sess.next[cur]
        first[nxt] = first[cur]
        cur = nxt[sess.next[nxt] >= 0]
    return first.astype(np.int32)


def pool_kv_blocks(scenario: Scenario) -> list[int]:
    out = []
    for i, p in enumerate(scenario.pools):
        if (
            p.kv_blocks is not None
        ):  # an explicit size (timing-independent: a scenario that sets it asks for it)
            out.append(int(p.kv_blocks))
            continue
        try:
            get_gpu(p.gpu)
            out.append(
                kv_cache_blocks(
                    p.model, p.gpu, p.tp, S.KV_BLOCK_TOKENS, p.gpu_memory_utilization, p.max_batched_tokens
                )
            )
        except (KeyError, ValueError) as e:
            raise ScenarioError(f"scenario {scenario.name!r}: pools.{i} ({p.name}): {e}") from None
    return out


def pool_price_per_gpu_hour(pool: PoolConfig) -> float:
    """The pool's price, or its GPU's default price from the perf tables (Vidur's published prices)."""
    if pool.price_per_gpu_hour is not None:
        return float(pool.price_per_gpu_hour)
    return float(get_gpu(pool.gpu).price_per_hour)


def pool_capacities(scenario: Scenario) -> list[float]:
    """Requests/s per replica of each pool for the capacity-based scalers (NaN where not given)."""
    cap = scenario.policies.replica_capacity_rps
    if isinstance(cap, dict):
        return [float(cap.get(p.name, np.nan)) for p in scenario.pools]
    return [np.nan if cap is None else float(cap)] * len(scenario.pools)


def replica_ranges(pools: list[PoolConfig]) -> tuple[np.ndarray, np.ndarray]:
    """(max replicas, index of the first replica) of each pool: a pool's replicas are consecutive."""
    p_max = np.array([p.max_replicas for p in pools], dtype=np.int32)
    p_first = np.concatenate([[0], np.cumsum(p_max)[:-1]]).astype(np.int32)
    return p_max, p_first


def request_arrays(
    scenario: Scenario, requests: RequestTable, models: list[str], regions: list[str]
) -> tuple[np.ndarray, np.ndarray, int]:
    """(rqf, rqi, later session steps): each request's columns, with its tenant's tier, model, region, SLOs and
    deadline resolved."""
    pools = scenario.pools
    tenants = scenario.tenants
    n = len(requests)
    t_tier = np.array([S.TIER_BATCH if t.tier == "batch" else 0 for t in tenants], dtype=np.int8)
    t_model = np.array([models.index(t.model or pools[0].model) for t in tenants], dtype=np.int8)
    t_region = np.array([regions.index(t.region or pools[0].region) for t in tenants], dtype=np.int8)
    t_ttft = np.array([t.ttft_slo_s or np.inf for t in tenants])
    t_tpot = np.array([t.tpot_slo_s or np.inf for t in tenants])
    t_deadline = np.array([t.deadline_s or np.inf for t in tenants], dtype=np.float64)
    tix = requests.tenant.astype(np.intp)
    r_tier = t_tier[tix]
    r_ttft = t_ttft[tix]
    r_tpot = t_tpot[tix]
    out_minus_1 = (requests.output_tokens - 1).astype(np.float64)
    sess = requests.sessions
    later = sess.step > 0 if sess is not None else np.zeros(n, dtype=bool)
    # a later session step keeps its deadline relative to its arrival until it is released (sessions.py)
    base = np.where(later, 0.0, requests.arrival_s)
    r_deadline = np.where(
        r_tier == S.TIER_BATCH,
        base + t_deadline[tix],
        base + r_ttft + r_tpot * out_minus_1,
    )

    rqf = np.zeros((S.N_RF, n))
    rqf[S.RF_ARRIVAL] = requests.arrival_s
    rqf[S.RF_DEADLINE] = r_deadline
    rqf[S.RF_TTFT_SLO] = r_ttft
    rqf[S.RF_TPOT_SLO] = r_tpot
    rqf[S.RF_FIRST] = np.nan
    rqf[S.RF_FINISH] = np.nan
    rqi = np.zeros((S.N_RI, n), dtype=np.int32)
    rqi[S.RI_PROMPT] = requests.prompt_tokens
    rqi[S.RI_OUTPUT] = requests.output_tokens
    rqi[S.RI_TENANT] = requests.tenant
    rqi[S.RI_TIER] = r_tier
    rqi[S.RI_MODEL] = t_model[tix]
    rqi[S.RI_REGION] = t_region[tix]
    rqi[S.RI_REPLICA] = -1
    rqi[S.RI_PFX_START] = requests.prefix_offsets[:-1]
    rqi[S.RI_PFX_LEN] = np.diff(requests.prefix_offsets)
    rqi[S.RI_NEXT] = -1
    rqi[S.RI_HOME] = -1
    if sess is not None:
        rqi[S.RI_NEXT] = sess.next
        rqi[S.RI_STEP] = sess.step
        rqi[S.RI_STEPS_LEFT] = sess.steps_left
        rqf[S.RF_PAUSE] = sess.pause_s
        rqi[S.RI_FIRST] = session_first_rows(sess)
    else:
        rqi[S.RI_FIRST] = -1
    return rqf, rqi, int(later.sum())


def pool_coefficients(scenario: Scenario, timing: str) -> np.ndarray:
    """The perf-model coefficients of each pool (one row per pool, zero-padded)."""
    coefs = []
    for i, p in enumerate(scenario.pools):
        try:
            coef = load_perf_coefficients(p.model, p.gpu, p.tp, pool_engine(p, timing), p.interconnect)
            coefs.append(np.asarray(coef, dtype=np.float64))
        except (KeyError, ValueError) as e:
            raise ScenarioError(f"scenario {scenario.name!r}: pools.{i} ({p.name}): {e}") from None
    k_max = max(len(c) for c in coefs)
    p_coef = np.zeros((len(coefs), k_max))
    for i, c in enumerate(coefs):
        p_coef[i, : len(c)] = c
    return p_coef


def pool_arrays(
    scenario: Scenario, models: list[str], regions: list[str], timing: str
) -> tuple[np.ndarray, np.ndarray]:
    """(poolf, pooli): each pool's configuration, price, capacity and fault rates."""
    pools = scenario.pools
    n_pool = len(pools)
    p_max, p_first = replica_ranges(pools)
    poolf = np.zeros((S.N_PF, n_pool))
    poolf[S.PF_COLD_START] = [p.cold_start_s for p in pools]
    poolf[S.PF_PRICE] = [pool_price_per_gpu_hour(p) for p in pools]
    poolf[S.PF_FC_LEVEL] = np.nan  # no forecast before the first control tick
    poolf[S.PF_LAST_UP] = -np.inf
    poolf[S.PF_CAPACITY] = pool_capacities(scenario)
    poolf[S.PF_MTBF] = [p.mtbf_s or 0.0 for p in pools]
    poolf[S.PF_REPAIR] = [p.cold_start_s if p.repair_s is None else p.repair_s for p in pools]
    poolf[S.PF_RECLAIM_MTBR] = [p.reclaim_mtbr_s or 0.0 for p in pools]
    poolf[S.PF_RECLAIM_WARN] = [p.reclaim_warning_s for p in pools]
    pooli = np.zeros((S.N_PI, n_pool), dtype=np.int64)
    pooli[S.PI_MODEL] = [models.index(p.model) for p in pools]
    pooli[S.PI_REGION] = [regions.index(p.region) for p in pools]
    pooli[S.PI_TP] = [p.tp for p in pools]
    pooli[S.PI_MIN] = [p.min_replicas for p in pools]
    pooli[S.PI_MAX] = p_max
    pooli[S.PI_MAX_SEQS] = [p.max_num_seqs for p in pools]
    pooli[S.PI_MAX_TOKENS] = [p.max_batched_tokens for p in pools]
    pooli[S.PI_CHUNKED] = [p.chunked_prefill for p in pools]
    pooli[S.PI_PREFIX] = [p.prefix_cache for p in pools]
    pooli[S.PI_FIRST_REP] = p_first
    pooli[S.PI_SPOT] = [p.spot for p in pools]
    limits = tenant_context_limits(scenario, timing)
    pooli[S.PI_MAX_CTX] = (
        S.NO_CONTEXT_LIMIT if limits is None else [get_model(p.model).max_context for p in pools]
    )
    return poolf, pooli


def replica_arrays(
    scenario: Scenario, kv_blocks: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(repf, repi, slot, pc): every replica's state (the initial ones warm at t = 0), its empty running slots
    and its empty prefix cache."""
    pools = scenario.pools
    n_pool = len(pools)
    p_max, p_first = replica_ranges(pools)
    n_rep = int(p_max.sum())
    rep_pool = np.repeat(np.arange(n_pool, dtype=np.int32), p_max)
    rep_kv_cap = np.array([kv_blocks[p] for p in rep_pool], dtype=np.int64)
    pc_sets = np.zeros(n_rep, dtype=np.int32)
    for i, p in enumerate(pools):
        if p.prefix_cache:
            blocks = p.prefix_cache_blocks or max(
                1, kv_blocks[i] * S.KV_BLOCK_TOKENS // S.PREFIX_BLOCK_TOKENS // 2
            )
            pc_sets[rep_pool == i] = max(1, blocks // S.PREFIX_WAYS)
    pc_ways = int(pc_sets.max()) * S.PREFIX_WAYS if pc_sets.any() else 1
    max_seqs = max(p.max_num_seqs for p in pools)

    repf = np.zeros((S.N_XF, n_rep))
    repf[S.XF_NEXT] = np.inf
    repf[S.XF_FAULT] = np.inf
    repi = np.zeros((S.N_XI, n_rep), dtype=np.int64)
    repi[S.XI_POOL] = rep_pool
    repi[S.XI_KV_CAP] = rep_kv_cap
    repi[S.XI_PC_SETS] = pc_sets
    repi[S.XI_NFREE] = max_seqs
    for i, p in enumerate(pools):
        repi[S.XI_STATE, p_first[i] : p_first[i] + p.initial_replicas] = (
            S.RS_ACTIVE
        )  # warm at t = 0, billed from 0

    slot = np.zeros((S.N_SL, n_rep, max_seqs), dtype=np.int64)
    slot[S.SL_REQ] = -1
    slot[S.LS_FREE] = np.arange(max_seqs)[::-1]  # pops hand out slot 0 first
    pc = np.stack([np.full((n_rep, pc_ways), -1, dtype=np.int64), np.zeros((n_rep, pc_ways), dtype=np.int64)])
    return repf, repi, slot, pc


def region_latency(scenario: Scenario, regions: list[str]) -> np.ndarray:
    """Symmetric one-way latency in seconds between regions."""
    g = len(regions)
    lat = np.zeros((g, g))
    for a, row in scenario.region_latency_ms.items():
        for b, ms in row.items():
            lat[regions.index(a), regions.index(b)] = lat[regions.index(b), regions.index(a)] = ms / 1e3
    return lat


def clock_array(scenario: Scenario) -> np.ndarray:
    """The clock and the real-valued parameters of the built-in rules."""
    clock = np.zeros(S.N_CLOCK)
    clock[S.C_NEXT_TICK] = scenario.control_interval_s
    clock[S.C_HORIZON] = scenario.horizon_s
    clock[S.C_TICK_S] = scenario.control_interval_s
    clock[S.C_MAX_WAIT] = scenario.max_wait_s
    clock[S.C_REACTIVE_UP] = scenario.policies.reactive_up
    clock[S.C_REACTIVE_DOWN] = scenario.policies.reactive_down
    pol = scenario.policies
    clock[S.C_COST_MAX_QUEUE] = pol.cost_aware_max_queue
    clock[S.C_COST_MAX_KV] = pol.cost_aware_max_kv
    clock[S.C_TARGET_UTIL] = pol.target_utilization
    clock[S.C_HOLT_ALPHA] = pol.forecast_alpha
    clock[S.C_HOLT_BETA] = pol.forecast_beta
    clock[S.C_DOWN_COOLDOWN] = pol.scale_down_cooldown_s
    clock[S.C_NEXT_FAULT] = np.inf
    clock[S.C_SESSION_MAX_LOAD] = pol.session_affinity_max_load
    clock[S.C_SPLITWISE_OVERFLOW] = pol.splitwise_overflow
    clock[S.C_LAYERWISE] = 1.0 if scenario.kv_transfer.layerwise else 0.0
    clock[S.C_DEFER_S] = pol.defer_s
    clock[S.C_OVERLOAD_LOAD] = pol.overload_load_per_replica
    return clock


def counter_array(scenario: Scenario, control: tuple[str, ...], n_open: int) -> np.ndarray:
    """The counters: built-in rule ids, which decisions the caller takes, and the open-loop request count."""
    cnt = np.zeros(S.N_CNT, dtype=np.int64)
    cnt[S.K_PENDING_ROUTE] = -1
    cnt[S.K_FORM_REPLICA] = -1
    cnt[S.K_BATCH_POLICY] = BATCHING_IDS[scenario.policies.batching]
    cnt[S.K_ROUTE_POLICY] = ROUTING_IDS[scenario.policies.routing]
    cnt[S.K_SCALE_POLICY] = SCALING_IDS[scenario.policies.scaling]
    cnt[S.K_CTRL_ROUTE] = "route" in control
    cnt[S.K_CTRL_BATCH] = "batch" in control
    cnt[S.K_CTRL_SCALE] = "scale" in control
    cnt[S.K_N_TENANTS] = len(scenario.tenants)
    cnt[S.K_N_OPEN] = n_open
    cnt[S.K_ADMIT_POLICY] = ADMISSION_IDS[scenario.policies.admission]
    cnt[S.K_CTRL_ADMIT] = ADMISSION_KIND in control
    cnt[S.K_PENDING_ADMIT] = -1
    cnt[S.K_ADMISSION] = admission_on(scenario, control)
    return cnt


def admission_on(scenario: Scenario, control: tuple[str, ...]) -> bool:
    """Arrivals go through admission (envs/sim/admission.py) only with a throttling rule or an agent."""
    return scenario.policies.admission != "admit_all" or ADMISSION_KIND in control


def tenant_array(scenario: Scenario) -> np.ndarray:
    """Each tenant's VTC weight and session SLO (its VTC counter starts at 0)."""
    tenants = scenario.tenants
    ten = np.zeros((S.N_TF, len(tenants)))
    # a user of an application weighs its application's expected service per application request (1 outside
    # applications): FairServe's weighted service counter (the wsc batching rule)
    ten[S.TF_WEIGHT] = np.array([t.weight for t in tenants]) * application_units(scenario)
    ten[S.TF_SESSION_SLO] = [t.session_slo_s or np.inf for t in tenants]
    ten[S.TF_APP] = application_index(scenario)
    rate, burst = admission_limits(scenario)
    ten[S.TF_LIMIT_RATE] = rate
    ten[S.TF_LIMIT_BURST] = burst
    ten[S.TF_BUCKET] = burst  # buckets start full
    return ten


def admission_limits(scenario: Scenario) -> tuple[np.ndarray, np.ndarray]:
    """Each tenant's bucket under the scenario's admission rule: refill per second and burst (inf: no limit).

    rpm and tpm: the same fixed limit for every user. fairserve: the user's application's expected rate of
    application requests per user times the headroom (FairServe derives the limit from the application's
    normal behaviour, not from the user's own); a tenant outside any application is not limited."""
    pol = scenario.policies
    n = len(scenario.tenants)
    rate = np.full(n, np.inf)
    if pol.admission == "rpm":
        rate[:] = pol.admission_rpm / 60.0
    elif pol.admission == "tpm":
        rate[:] = pol.admission_tpm / 60.0
    elif pol.admission == "fairserve":
        apps = {a.name: a for a in scenario.applications}
        for u, t in enumerate(scenario.tenants):
            if t.application is not None:
                # the application's normal per-user rate: a benign user's (user_rate of a user past the abusers)
                rate[u] = user_rate(apps[t.application], apps[t.application].users) * pol.fairserve_headroom
    burst = np.where(np.isfinite(rate), np.maximum(rate * pol.admission_burst_s, 1.0), np.inf)
    return rate, burst


def build_state(
    scenario: Scenario,
    requests: RequestTable,
    core_seed: int,
    control: tuple[str, ...] = (),
    timing: str | None = None,
    trace_capacity: int = 0,
) -> SimState:
    """Allocate and fill the state; ``control`` names the decision kinds the caller will take; ``timing`` is
    the default timing version (envs/sim/timing.py) when the scenario names none; ``trace_capacity`` rows of
    per-iteration trace are kept (0: off)."""
    timing = resolve_timing(scenario, timing)
    for c in control:
        if c not in CONTROLS:
            raise ValueError(f"control: unknown decision kind {c!r}; known: {CONTROLS}")
    pools = scenario.pools
    models = list(dict.fromkeys(p.model for p in pools))
    regions = scenario.region_names()
    n = len(requests)

    rqf, rqi, n_later = request_arrays(scenario, requests, models, regions)
    kv_blocks = pool_kv_blocks(scenario)
    p_coef = pool_coefficients(scenario, timing)
    poolf, pooli = pool_arrays(scenario, models, regions, timing)
    repf, repi, slot, pc = replica_arrays(scenario, kv_blocks)
    n_rep = repi.shape[1]
    # prefill/decode disaggregation: roles, KV bytes per token, links, transfer heap and wait ring
    disagg = disaggregation_arrays(scenario, n, slot.shape[2], kv_blocks)
    pooli[S.PI_ROLE] = disagg.role
    pooli[S.PI_LAYERS] = disagg.layers
    poolf[S.PF_KV_TOKEN_BYTES] = disagg.kv_token_bytes
    cnt = counter_array(scenario, control, n - n_later)
    n_dfq = max(n, 1) if admission_on(scenario, control) else 1
    cnt[S.K_DISAGG] = int(disagg.on)
    st = SimState(
        clock=clock_array(scenario),
        # later session steps are the table's last rows (RequestTable.validate)
        cnt=cnt,
        rng=np.array([core_seed | 1], dtype=np.uint64),  # xorshift state must be non-zero
        rqf=rqf,
        rqi=rqi,
        pfx_hash=np.ascontiguousarray(requests.prefix_hashes, dtype=np.int64),
        poolf=poolf,
        pooli=pooli,
        coef=p_coef,
        repf=repf,
        repi=repi,
        slot=slot,
        queue=np.full((n_rep + 1, scenario.queue_capacity), -1, dtype=np.int32),
        repx=np.zeros((n_rep, S.KV_BLOCK_TOKENS + len(scenario.tenants)), dtype=np.int64),
        pc=pc,
        ten=tenant_array(scenario),
        region_lat=region_latency(scenario, regions),
        # one entry per session at most; later steps bound the number of sessions with a pending step
        relq=np.stack([np.full(max(n_later, 1), np.inf), np.full(max(n_later, 1), -1.0)]),
        rlog=np.full(max(n_later, 1), -1, dtype=np.int32),
        trace=np.zeros((max(int(trace_capacity), 0), S.N_TR)),
        xfq=disagg.xfq,
        xwait=disagg.xwait,
        link=disagg.link,
        xqf=disagg.xqf,
        xqi=disagg.xqi,
        # one entry per request at most (a deferred request is in the heap once); minimal when admission is off
        dfq=np.stack([np.full(n_dfq, np.inf), np.full(n_dfq, -1.0)]),
    )
    if any(p.mtbf_s or (p.spot and p.reclaim_mtbr_s) for p in pools):
        arm_initial_faults(st)  # draws only when the feature is on: other runs keep their random stream
    return st
