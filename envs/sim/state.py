"""Struct-of-arrays simulator state.

Everything the numba kernels touch lives in one ``SimState`` namedtuple of numpy arrays: no Python object per
request, no jitclass. Fields of one entity kind share a 2-D array indexed by the constants below
(``st.rqf[RF_ARRIVAL, i]``), which keeps the tuple short: numba passes a namedtuple to every kernel call as
its flattened array descriptors, so 17 arrays instead of ~80 cut both call overhead and compile time.

Entity prefixes: ``RF_``/``RI_`` request floats/ints, ``PF_``/``PI_`` pool, ``XF_``/``XI_`` replica,
``SL_``/``LS_`` per-replica slot fields and lists, ``TF_`` tenant, ``C_`` clock scalars, ``K_`` counters.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Request status.
ST_FUTURE, ST_INFLIGHT, ST_FINISHED, ST_DROPPED = 0, 1, 2, 3
# Replica lifecycle: off -> starting (billed) -> active -> draining (billed, no new work) -> off.
# A failure sends a replica that is on to failed (not billed, holds nothing) for its repair time, then off.
RS_OFF, RS_STARTING, RS_ACTIVE, RS_DRAINING, RS_FAILED = 0, 1, 2, 3, 4
# The pending fault of a replica (XI_FKIND), due at XF_FAULT: a failure, a spot reclaim warning, the forced
# stop of a warned spot replica, or the end of a failed replica's repair.
FK_NONE, FK_FAIL, FK_WARN, FK_KILL, FK_REPAIR = 0, 1, 2, 3, 4
# Tiers.
TIER_INTERACTIVE, TIER_BATCH = 0, 1
# Pool roles (prefill/decode disaggregation, envs/sim/disagg.py); mixed runs both phases (colocated serving).
ROLE_MIXED, ROLE_PREFILL, ROLE_DECODE = 0, 1, 2
# SL_LEFT of a slot reserved on a decode replica for a KV cache in transfer (RX_PENDING) or arrived and
# waiting for the replica's next iteration boundary to join its decode set (RX_READY).
RX_PENDING, RX_READY = -1, -2

# rqf[field, request] float64
RF_ARRIVAL, RF_DEADLINE, RF_TTFT_SLO, RF_TPOT_SLO, RF_VISIBLE, RF_FIRST, RF_FINISH = range(7)
RF_PAUSE = 7  # session step: tool/think pause after its predecessor finishes (0 for other requests)
N_RF = 8
# rqi[field, request] int32
(
    RI_PROMPT,
    RI_OUTPUT,
    RI_TENANT,
    RI_TIER,
    RI_MODEL,
    RI_REGION,  # origin region
    RI_STATUS,
    RI_REPLICA,
    RI_GENERATED,  # exact for finished/queued requests; running ones are synced by sync_generated()
    RI_CACHED,  # prompt tokens served from the prefix cache
    RI_PREEMPT,
    RI_RECOMPUTED,  # tokens prefilled again after preemption
    RI_PFX_START,  # first prefix hash in pfx_hash
    RI_PFX_LEN,
    RI_EVICT,  # times the request was sent back for re-routing by a failure or a spot reclaim of its replica
    # Agentic sessions (envs/sim/sessions.py); -1 / 0 for requests outside a session.
    RI_NEXT,  # the session's next step, released when this one finishes (-1: none)
    RI_STEP,  # step index within its session
    RI_STEPS_LEFT,  # steps of its session after this one
    RI_HOME,  # replica that served the session's previous step (holds its prefix), -1 when none
    RI_FIRST,  # row of the session's first step (its arrival starts the session's clock), -1 when none
) = range(20)
# Admission (envs/sim/admission.py): 4 * times deferred + 2 if it was ever turned away (rejected or deferred)
# while the fleet was not overloaded + 1 if rejected (0: admitted at its arrival)
RI_ADMIT = 20
N_RI = 21

# Per-request disaggregation fields (envs/sim/disagg.py) live in their own arrays, xqf/xqi, with one column per
# request only when some pool has a role (one column otherwise), so colocated runs keep their memory.
# xqf[field, request] float64: when its prefill ended and its KV started waiting for a decode replica (then:
# when its transfer started); the seconds its transfers took, the seconds it waited for a decode replica,
# the KV bytes it moved, and the prefill computation its next transfer may overlap (its last prefill iteration)
XQF_HANDOFF, XQF_XFER_S, XQF_XWAIT_S, XQF_BYTES, XQF_OVERLAP = range(5)
N_XQF = 5
# xqi[field, request] int32, -1 / 0 outside a transfer
(
    XQI_SRC,  # prefill replica holding its KV cache until the transfer completes
    XQI_DST,  # decode replica receiving it ...
    XQI_SLOT,  # ... into this slot
    XQI_CTX,  # tokens of KV being transferred
    XQI_XFERS,  # KV transfers completed
) = range(5)
N_XQI = 5

# poolf[field, pool] float64 / pooli[field, pool] int64
(
    PF_COLD_START,
    PF_BILLED_GPU_S,
    PF_PRICE,  # $ per GPU-hour (cost-aware routing)
    # Arrivals since the last control tick, indexed by MODEL id (models <= pools, so the row has room): the
    # demand a pool sees is that of its model, counted at arrival, independent of routing and scaling.
    PF_ARRIVALS,
    PF_ARR_LAST,  # arrivals for the pool's model during the last complete control interval
    PF_FC_LEVEL,  # Holt forecast of PF_ARR_LAST: level (NaN before the first tick) ...
    PF_FC_TREND,  # ... and trend per interval
    PF_LAST_UP,  # time of the built-in scaler's last scale-up of the pool (scale-down cooldown)
    PF_CAPACITY,  # requests/s one replica sustains within the SLO (target_util and forecast scalers)
    PF_ROUTED,  # requests routed to the pool since the last control tick ...
    PF_ROUTED_LAST,  # ... and during the last complete interval: the pool's share of its model's demand
    PF_MTBF,  # mean time between failures of one replica while it is on (s); 0: never fails
    PF_REPAIR,  # mean repair time of a failed replica (s)
    PF_RECLAIM_MTBR,  # spot pools: mean time between reclaims of one replica while it is on (s); 0: never
    PF_RECLAIM_WARN,  # spot pools: warning before a reclaimed replica is forced off (s)
    PF_LOST,  # replicas of the pool lost to failures or reclaim warnings since the last control tick ...
    PF_LOST_LAST,  # ... and during the last complete interval (what a replacing scaler replaces)
    # Interactive-tier arrivals since the last tick / during the last interval, indexed by MODEL id like
    # PF_ARRIVALS: the demand the on-demand floor of the spot-mix scaler covers.
    PF_ARR_INTER,
    PF_ARR_INTER_LAST,
    PF_KV_TOKEN_BYTES,  # KV bytes one token occupies on a replica of the pool (what a transfer moves)
) = range(20)
N_PF = 20
(
    PI_MODEL,
    PI_REGION,
    PI_TP,
    PI_MIN,
    PI_MAX,
    PI_MAX_SEQS,
    PI_MAX_TOKENS,
    PI_CHUNKED,
    PI_PREFIX,
    PI_FIRST_REP,  # replicas of pool p are [first, first + max)
    PI_SCALE_DELTA,  # the caller's scaling decision for the pending tick
    PI_SPOT,  # 1: spot / low-priority capacity (cheaper, reclaimed with a warning)
) = range(12)
# prompt + output tokens one sequence may hold (the model's context under timing v1; NO_CONTEXT_LIMIT in v0)
PI_MAX_CTX = 12
PI_ROLE = 13  # ROLE_*
PI_LAYERS = 14  # the model's layers (layer-wise KV transfer)
N_PI = 15
NO_CONTEXT_LIMIT = 2**62

# repf[field, replica] float64
XF_READY, XF_NEXT, XF_ON_SINCE, XF_UP_SINCE, XF_BUSY_S, XF_UP_S, XF_KV_BLOCK_S, XF_KV_T = range(8)
XF_FAULT = 8  # time of the replica's pending fault (XI_FKIND), inf when none
XF_ITER_DT = 9  # duration of its latest iteration (the prefill a layer-wise KV transfer overlaps)
XF_LINK_FREE = 10  # when its outgoing KV link is free: a replica sends one KV cache at a time (disagg.py)
N_XF = 11
# repi[field, replica] int64
(
    XI_POOL,
    XI_STATE,
    XI_BUSY,  # an iteration is running
    XI_KV_CAP,  # blocks
    XI_KV_USED,
    XI_PC_SETS,  # prefix-cache sets (0: no prefix cache)
    XI_QN,  # waiting requests
    XI_IT,  # iterations completed: the clock of the decode bookkeeping
    XI_DSUM,  # sum of the KV context of the decoding sequences
    XI_ND,  # decoding sequences (= size of the completion heap)
    XI_NPF,  # prefilling sequences
    XI_NFREE,  # free slots
    XI_NDEC_ITER,  # decoding sequences in the running iteration
    XI_FKIND,  # FK_* kind of the pending fault at XF_FAULT
    # Disaggregation (envs/sim/disagg.py):
    XI_NRX,  # slots reserved for incoming KV caches (in transfer or arrived; SL_LEFT RX_PENDING/RX_READY)
    XI_NRDY,  # ... of which arrived, to join the decode set at the next iteration boundary
    XI_NXF,  # KV caches of finished prefills it still holds as the source of a transfer (waiting or in flight)
) = range(17)
N_XI = 17

# slot[field, replica, k] int64: running sequences, and per-replica lists stored beside them
(
    SL_REQ,  # request id, -1 when free
    SL_ADMIT,  # admission sequence number (preemption takes the most recent)
    SL_CTX,  # prefilling: tokens in KV so far; decoding: KV context when it joined the decode set
    SL_LEFT,  # prompt (or recompute) tokens still to prefill; 0 once decoding
    SL_CHUNK,  # prefill tokens scheduled in the running iteration
    SL_IT0,  # replica iteration count when it joined the decode set
    SL_END,  # iteration count at which its last token is produced
    SL_PHASE,  # (context - iteration) mod 16: which iterations need a new KV block
    LS_HEAP_KEY,  # min-heap of decoding sequences by SL_END (size XI_ND)
    LS_HEAP_SLOT,
    LS_PREFILL,  # list of prefilling slots (size XI_NPF)
    LS_FREE,  # stack of free slots (size XI_NFREE)
) = range(12)
N_SL = 12

# ten[field, tenant] float64
TF_WEIGHT, TF_COUNTER, TF_WAITING = range(3)
TF_SESSION_SLO = 3  # end-to-end target of the tenant's agentic sessions, inf when none
# Admission (envs/sim/admission.py): the tenant's (a user's) token bucket -- its limit's refill rate per
# second and burst, the level and when it was last refilled -- and, for FairServe's rule, its application
(
    TF_LIMIT_RATE,
    TF_LIMIT_BURST,
    TF_BUCKET,
    TF_BUCKET_T,
    TF_APP,
) = range(4, 9)
N_TF = 9

# clock[] float64 scalars
C_NOW, C_NEXT_TICK, C_HORIZON, C_TICK_S, C_MAX_WAIT, C_MAX_GAP, C_LAST_LEFT_COUNTER = range(7)
C_REACTIVE_UP, C_REACTIVE_DOWN = 7, 8
# parameters of the cost-aware router and the target-utilization and forecast scalers (PoliciesConfig)
(
    C_COST_MAX_QUEUE,
    C_COST_MAX_KV,
    C_TARGET_UTIL,
    C_HOLT_ALPHA,
    C_HOLT_BETA,
    C_DOWN_COOLDOWN,
) = range(9, 15)
# A lower bound of min(XF_FAULT): the event loop checks faults with one comparison; it is made exact lazily
# when it comes due (a replica turned off early leaves it stale, and then nothing happens at that time).
C_NEXT_FAULT = 15
C_SESSION_MAX_LOAD = 16  # session-affinity routing: leave the home replica above this load (policies)
C_SPLITWISE_OVERFLOW = 17  # splitwise routing: load margin before a phase overflows to the mixed pool
C_LAYERWISE = 18  # 1.0: KV transfers overlap the prefill layer by layer (Splitwise); 0.0: serialized
# Admission (envs/sim/admission.py): how long a deferred request waits before it is presented again, and the
# outstanding requests per active replica above which the system counts as overloaded (FairServe's trigger)
C_DEFER_S, C_OVERLOAD_LOAD = 19, 20
N_CLOCK = 21

# cnt[] int64 scalars
(
    K_NEXT_ARRIVAL,  # index of the next request to arrive
    K_PENDING_ROUTE,  # request waiting for an external routing decision, or -1
    K_FORM_REPLICA,  # replica forming a batch under external control, or -1
    K_RR,  # round-robin pointer
    K_ADMIT_SEQ,
    K_PREEMPTIONS,
    K_DROPS,
    K_FINISHED,
    K_HOLD_HEAD,  # ring buffer (queue row R) of requests that found no active replica
    K_HOLD_N,
    K_BATCH_POLICY,
    K_ROUTE_POLICY,
    K_SCALE_POLICY,
    K_CTRL_ROUTE,  # 1: routing decisions go to the caller
    K_CTRL_BATCH,
    K_CTRL_SCALE,
    K_PENDING_SCALE,  # 1 while a scaling tick waits for the caller
    K_EVENTS,
    K_ITERATIONS,
    K_TICKS,
    K_HOLD_RETRY,  # a replica became active: route held requests again
    K_PC_STAMP,  # prefix-cache LRU clock
    K_N_TENANTS,
    K_SLO_MET,  # finished requests that met their SLO (the metrics' definition), for per-step rewards
    K_SLO_MET_TOKENS,  # their output tokens
    K_SLO_MISSED_FINISHED,  # finished requests that missed it (drops are K_DROPS)
    K_FAILURES,  # replica failures
    K_RECLAIMS,  # spot reclaim warnings
    K_EVICTED,  # requests sent back for re-routing by failures and reclaims (= sum of RI_EVICT)
    # Rows [0, K_N_OPEN) arrive by their RF_ARRIVAL (the arrival pointer's range); the rest are later steps
    # of sessions, released by their predecessor's finish into the release heap (relq, K_REL_N entries).
    K_N_OPEN,
    K_RELEASED,  # session steps released so far: arrived = K_NEXT_ARRIVAL + K_RELEASED
    K_REL_N,
) = range(32)
K_TRACE_N = 32  # iterations written to the per-iteration trace (its capacity is trace.shape[0]; 0 = off)
# Disaggregation (envs/sim/disagg.py); all 0 when every pool is mixed.
(
    K_DISAGG,  # 1: some pool has role prefill or decode
    K_XF_N,  # KV transfers in flight (entries of the xfq heap)
    K_XW_HEAD,  # ring buffer (xwait) of prefilled requests waiting for a decode replica
    K_XW_N,
    K_XFER_RETRY,  # decode capacity may have freed: dispatch the waiting KV caches again
    K_TRANSFERS,  # KV transfers completed
    K_XFER_FAILED,  # KV transfers (or waits) cut by a failure of their source or destination replica
    # 1 while the pending routing decision (K_PENDING_ROUTE) is the decode phase of a prefilled request:
    # which decode replica takes its KV cache (the caller routes both phases when it controls routing)
    K_ROUTE_PHASE,
) = range(33, 41)
# Admission (envs/sim/admission.py); all 0 (and K_PENDING_ADMIT -1) when the scenario has no admission rule.
(
    K_ADMIT_POLICY,  # the built-in admission rule (envs/rules.py ADMISSION)
    K_CTRL_ADMIT,  # 1: admission decisions go to the caller
    K_PENDING_ADMIT,  # request waiting for the caller's admission decision, or -1
    K_ADMISSION,  # 1: admission is on (a rule other than admit_all, or the caller decides)
    K_REJECTED,  # requests rejected at admission (also counted in K_DROPS)
    K_DEFERRALS,  # deferrals (a request deferred twice counts twice)
    K_DF_N,  # deferred requests waiting in the deferral heap (dfq)
) = range(41, 48)
N_CNT = 48

# Event codes returned by advance().
EV_DONE, EV_ROUTE, EV_BATCH, EV_SCALE, EV_TIME = 0, 1, 2, 3, 4
EV_ADMIT = 5  # after EV_TIME: the codes below it index gym's DECISIONS (envs/rules.py ADMISSION_KIND)
# Admission decisions (the caller's action and the built-in rules' verdict).
AD_ADMIT, AD_DEFER, AD_REJECT = 0, 1, 2

KV_BLOCK_TOKENS = 16  # vLLM's default paged-attention block size
PREFIX_BLOCK_TOKENS = 512  # Mooncake trace hash_ids cover 512-token blocks (data README)
PREFIX_WAYS = 8  # set-associative prefix cache: exact LRU within each 8-way set


class SimState(NamedTuple):
    clock: np.ndarray  # f8[N_CLOCK]
    cnt: np.ndarray  # i8[N_CNT]
    rng: np.ndarray  # u8[1] xorshift64* state: the core's only source of randomness
    rqf: np.ndarray  # f8[N_RF, N]
    rqi: np.ndarray  # i4[N_RI, N]
    pfx_hash: np.ndarray  # i8[H] hashes of 512-token prefix blocks
    poolf: np.ndarray  # f8[N_PF, P]
    pooli: np.ndarray  # i8[N_PI, P]
    coef: np.ndarray  # f8[P, K] perf-model coefficients
    repf: np.ndarray  # f8[N_XF, R]
    repi: np.ndarray  # i8[N_XI, R]
    slot: np.ndarray  # i8[N_SL, R, S]
    queue: np.ndarray  # i4[R + 1, Qcap]: waiting queue per replica (unordered), last row = hold ring
    repx: np.ndarray  # i8[R, KV_BLOCK_TOKENS + T]: decoders per KV phase, then decoders per tenant
    pc: np.ndarray  # i8[2, R, C] prefix cache keys and LRU stamps
    ten: np.ndarray  # f8[N_TF, T]
    region_lat: np.ndarray  # f8[G, G] one-way seconds
    relq: np.ndarray  # f8[2, H] min-heap of pending session steps: (release time, request id), K_REL_N used
    # i4[H] released session steps in release order, which is arrival-time order (K_RELEASED used): the
    # envs count recent arrivals of later steps from it as they count first arrivals from the sorted rows
    rlog: np.ndarray
    # f8[cap, N_TR] per-iteration trace (Simulator(trace=...)); shape (0, N_TR) when off, which costs one
    # comparison per iteration
    trace: np.ndarray
    # Disaggregation (envs/sim/disagg.py); minimal sizes when every pool is mixed.
    xfq: np.ndarray  # f8[2, X] min-heap of KV transfers in flight: (completion time, request id), K_XF_N used
    xwait: np.ndarray  # i4[W] ring of prefilled requests waiting for a decode replica (K_XW_HEAD, K_XW_N)
    link: np.ndarray  # f8[2, P, P] KV link between pools: bytes/s, and latency (s) of one transfer
    xqf: np.ndarray  # f8[N_XQF, N or 1] per-request transfer times and bytes
    xqi: np.ndarray  # i4[N_XQI, N or 1] per-request transfer source, destination, slot, tokens, count
    # f8[2, N or 1] min-heap of deferred requests: (time it is presented again, request id), K_DF_N used;
    # one column per request only when admission is on
    dfq: np.ndarray


# trace columns: replica, start time, prefill tokens, decode sequences, KV context tokens of the decodes,
# predicted duration (s)
TR_REPLICA, TR_START, TR_PREFILL, TR_DECODE, TR_KV_CTX, TR_DURATION = range(6)
N_TR = 6


def state_nbytes(st: SimState) -> int:
    return int(sum(a.nbytes for a in st))
