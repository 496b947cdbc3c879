"""Scenario schema: the single source of truth for what a simulated cluster and its workload look like.

A scenario is a YAML file under ``configs/scenarios/``. It is validated here with pydantic, so an unknown key or
a bad value is reported with its key path (``pools.0.tp``) and the file it came from, before anything reaches the
numba core. Names of GPUs and models are checked against the perf tables when the simulation is built, because
the config layer must not import the simulator.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from servegym.configs import SCENARIO_DIR
from servegym.envs import rules

# the rules' names, from their tables (envs/rules.py)
BATCHING_POLICIES = rules.names(rules.BATCHING)
ROUTING_POLICIES = rules.names(rules.ROUTING)
# Engine profiles of envs/perf/engines.py (the config layer does not import the perf model; a test keeps them equal).
ENGINE_PROFILES = ("splitwise", "vidur", "none", "vllm", "vllm-eager")
TIMING_VERSIONS = ("v0", "v1")
CONTEXT_POLICIES = ("reject", "truncate", "drop")
SCALING_POLICIES = rules.names(rules.SCALING)
ADMISSION_POLICIES = rules.names(rules.ADMISSION)
# scaling rules that size pools from the arrival rate against a per-replica capacity
CAPACITY_SCALERS = tuple(r.name for r in rules.SCALING if r.needs_capacity)
# Prefill/decode disaggregation (docs/disaggregation.md): what a pool's replicas run. "mixed" runs both phases
# of a request (colocated serving, the default); "prefill" runs prompts only and hands the KV cache to a
# decode-capable replica; "decode" takes no new requests, only KV caches handed over by prefill replicas.
POOL_ROLES = ("mixed", "prefill", "decode")
# Interconnect classes of envs/perf/interconnect.py (the config layer does not import the perf model; a test
# keeps them equal).
LINK_CLASSES = (
    "nvlink-a100",
    "nvlink-h100",
    "infiniband-hdr",
    "infiniband-ndr",
    "ethernet-100g",
    "ethernet-25g",
)


class ScenarioError(ValueError):
    """A scenario file or override that does not validate; the message names the file and key path."""


# Bounds on the work and memory one key can ask for, checked before anything is generated or allocated.
# Requests a scenario may generate in expectation; ~200 bytes each between the request table and the
# simulator's per-request state (envs/workloads/requests.py, envs/sim/state.py), so ~10 GB at the limit.
MAX_EXPECTED_REQUESTS = 50_000_000
BYTES_PER_REQUEST = 200
# Control ticks per episode (horizon_s / control_interval_s); each costs ~0.5 us even when nothing changes.
MAX_CONTROL_TICKS = 1_000_000
# The prefix-cache tables hold two int64 per block and replica, sized by the largest pool's cache for
# every replica (envs/sim/build.py).
PREFIX_CACHE_BYTES_PER_BLOCK = 16
MAX_PREFIX_CACHE_BYTES = 2 << 30
# Gamma gaps of shape 1/cv^2: beyond cv 30 (shape 1/900) most float64 draws underflow to 0, so arrivals
# collapse into a few giant batches, and generation cannot tell when it has reached the horizon.
MAX_GAMMA_CV = 30.0


def _annotation_types(ann: Any) -> set[Any]:
    """Every type an annotation names, through Annotated, unions, lists and dicts."""
    out = {ann}
    for arg in get_args(ann):
        out |= _annotation_types(arg)
    return out


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, dict):
        return any(_has_bool(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_bool(v) for v in value)
    return False


class _Strict(BaseModel):
    # allow_inf_nan=False: no key of a scenario means anything when infinite or NaN (an infinite price
    # makes the cost inf, an infinite pause or latency keeps requests in flight forever)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        """YAML's ``true`` is not a number: pydantic would take it as 1 for an int or float key."""
        if not isinstance(data, dict):
            return data
        for key, value in data.items():
            f = cls.model_fields.get(key)
            if f is None or not _has_bool(value):
                continue
            types = _annotation_types(f.annotation)
            takes_models = any(isinstance(t, type) and issubclass(t, BaseModel) for t in types)
            numeric = int in types or float in types
            if numeric and bool not in types and not takes_models:
                raise ValueError(f"{key}: expected a number, got {value!r} (true/false is not a number)")
        return data


class PoolConfig(_Strict):
    """A pool is region x GPU type x model x tensor-parallel degree; its replicas are identical."""

    name: str
    region: str = "default"
    gpu: str
    model: str
    tp: Annotated[int, Field(ge=1, le=8)] = 1
    # None takes the GPU's default price from envs/perf/specs.py (Vidur's published prices).
    price_per_gpu_hour: Annotated[float, Field(ge=0)] | None = None
    min_replicas: Annotated[int, Field(ge=0)] = 0
    max_replicas: Annotated[int, Field(ge=1, le=4096)]
    initial_replicas: Annotated[int, Field(ge=0)]
    # SageServe (Jaiswal et al., 2025) measures a 155 s VM start for an inference instance.
    cold_start_s: Annotated[float, Field(ge=0)] = 155.0
    # vLLM's default max_num_seqs.
    max_num_seqs: Annotated[int, Field(ge=1, le=1024)] = 256
    # Per-iteration token budget. Sarathi-Serve evaluates 512-2048 token budgets; 2048 is the upper end.
    max_batched_tokens: Annotated[int, Field(ge=16)] = 2048
    chunked_prefill: bool = True
    prefix_cache: bool = False
    # Prefix-cache capacity in 512-token blocks; None = half of the KV cache (vLLM's automatic prefix caching
    # keeps freed blocks as evictable cache, so the usable share depends on load; half is our documented choice).
    prefix_cache_blocks: Annotated[int, Field(ge=1)] | None = None
    # vLLM's default gpu_memory_utilization.
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    # Failures: mean time between failures of one replica while it is on (exponential); None: never fails.
    mtbf_s: Annotated[float, Field(gt=0)] | None = None
    # Mean repair time of a failed replica (exponential), after which it is off and may be started again;
    # None: the pool's cold start (a failed VM is replaced by a fresh one, which takes a VM start).
    repair_s: Annotated[float, Field(ge=0)] | None = None
    # Spot / low-priority capacity: cheaper, and reclaimed by the provider with a short warning.
    spot: bool = False
    # Mean time between reclaims of one spot replica while it is on (exponential); None: never reclaimed.
    reclaim_mtbr_s: Annotated[float, Field(gt=0)] | None = None
    # SageServe (Jaiswal et al., 2025) works with a 65 s warning before a low-priority VM is reclaimed.
    reclaim_warning_s: Annotated[float, Field(ge=0)] = 65.0
    # ---- timing (docs/perf_model.md, envs/perf/engines.py)
    # Serving engine profile: "vllm" (CUDA graphs), "vllm-eager", "splitwise" (the Splitwise-era Llama2-70B
    # calibration), "vidur", "none" (GPU kernels only). None: the timing version's engine (v0 splitwise, v1 vllm).
    engine: Literal[ENGINE_PROFILES] | None = None  # type: ignore[valid-type]
    # How the tp GPUs of a replica exchange all-reduces: "nvlink" (Vidur's measured DGX profiles) or "pcie"
    # (a ring model over PCIe, envs/perf/engines.py).
    interconnect: Literal["nvlink", "pcie"] = "nvlink"
    # KV-cache size per replica in 16-token blocks, e.g. read off an engine's startup log; None: derived from
    # GPU memory, weights and activations (envs/perf/model.py kv_cache_blocks).
    kv_blocks: Annotated[int, Field(ge=1)] | None = None
    # ---- disaggregation (docs/disaggregation.md)
    role: Literal[POOL_ROLES] = "mixed"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _replica_bounds(self) -> PoolConfig:
        if self.reclaim_mtbr_s is not None and not self.spot:
            raise ValueError("reclaim_mtbr_s applies to spot pools only; set spot: true")
        if self.spot and self.price_per_gpu_hour is None:
            raise ValueError(
                "a spot pool needs price_per_gpu_hour (the GPU's default price is an on-demand price)"
            )
        if self.max_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_batched_tokens ({self.max_batched_tokens}) must be >= max_num_seqs ({self.max_num_seqs}), "
                "as vLLM requires, so that every running sequence can decode in each iteration"
            )
        if not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError(
                f"need min_replicas <= initial_replicas <= max_replicas, got "
                f"{self.min_replicas} <= {self.initial_replicas} <= {self.max_replicas}"
            )
        return self


class TenantConfig(_Strict):
    """A tenant (client or application) with its tier and SLOs."""

    name: str
    tier: Literal["interactive", "batch"] = "interactive"
    weight: Annotated[float, Field(gt=0)] = 1.0
    model: str | None = None  # None: the first pool's model
    region: str | None = None  # where its requests originate; None: the first pool's region
    ttft_slo_s: Annotated[float, Field(gt=0)] | None = None
    tpot_slo_s: Annotated[float, Field(gt=0)] | None = None
    deadline_s: Annotated[float, Field(gt=0)] | None = None  # batch tier: completion within this many seconds
    # Agentic sessions of this tenant: end-to-end target from the first step's arrival to the last step's
    # finish (envs/metrics.py, session/slo_attainment); None: its sessions are not judged.
    session_slo_s: Annotated[float, Field(gt=0)] | None = None
    # A user of an application (``applications``, envs/workloads/applications.py): the tenants the schema makes
    # for an application's users name it here; ``abusive`` is the workload's ground truth for the throttling
    # metrics (envs/metrics.py), never read by the core.
    application: str | None = None
    abusive: bool = False

    @model_validator(mode="after")
    def _slo_matches_tier(self) -> TenantConfig:
        if self.tier == "interactive" and (self.ttft_slo_s is None or self.tpot_slo_s is None):
            raise ValueError("an interactive tenant needs ttft_slo_s and tpot_slo_s")
        if self.tier == "batch" and self.deadline_s is None:
            raise ValueError("a batch tenant needs deadline_s")
        return self


class DiurnalSpec(_Strict):
    period_s: Annotated[float, Field(gt=0)] = 86400.0
    peak_to_trough: Annotated[float, Field(ge=1)] = 3.0
    peak_time_s: float = 0.0


class ArrivalSpec(_Strict):
    process: Literal["poisson", "gamma"] = "poisson"
    rate_per_s: Annotated[float, Field(gt=0)]
    # gamma only: coefficient of variation of inter-arrival times (at most MAX_GAMMA_CV)
    cv: Annotated[float, Field(gt=0, le=MAX_GAMMA_CV)] = 1.0
    diurnal: DiurnalSpec | None = None


class LengthSpec(_Strict):
    dist: Literal["lognormal", "empirical"] = "lognormal"
    table: str | None = None  # empirical: a table name in envs/workloads/length_tables.json
    joint: bool = True  # empirical: keep the prompt/output rank dependence of the source trace
    prompt_mean: Annotated[float, Field(gt=0)] = 1155.0  # Azure 2023 conversation trace mean (data README)
    prompt_cv: Annotated[float, Field(ge=0)] = 1.0
    output_mean: Annotated[float, Field(gt=0)] = 211.0  # Azure 2023 conversation trace mean (data README)
    output_cv: Annotated[float, Field(ge=0)] = 1.0
    prompt_min: Annotated[int, Field(ge=1)] = 1
    prompt_max: Annotated[int, Field(ge=1)] | None = None
    output_min: Annotated[int, Field(ge=1)] = 1
    output_max: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _table_named(self) -> LengthSpec:
        if self.dist == "empirical" and not self.table:
            raise ValueError("dist 'empirical' needs a table name")
        return self


class PrefixSpec(_Strict):
    """Shared prompt prefixes (system prompts, few-shot examples, documents), as 512-token block hashes.

    Each request draws one of ``groups`` prefixes with Zipf(``zipf_s``) popularity; the first
    ``shared_tokens`` of its prompt (whole 512-token blocks) are that prefix, the rest is unique to it.
    """

    groups: Annotated[int, Field(ge=1, le=1 << 27)]
    shared_tokens: Annotated[int, Field(ge=512)]
    zipf_s: Annotated[float, Field(ge=0)] = 1.0


class SyntheticSource(_Strict):
    kind: Literal["synthetic"] = "synthetic"
    tenant: str
    arrival: ArrivalSpec
    lengths: LengthSpec = LengthSpec()
    prefix: PrefixSpec | None = None


class TraceSource(_Strict):
    kind: Literal["trace"] = "trace"
    format: Literal["azure", "mooncake", "burstgpt", "generic"]
    file: str  # relative to the data directory (SERVEGYM_DATA_DIR)
    tenant: str | None = None  # every row goes to this tenant; None: the generic CSV's tenant column
    time_scale: Annotated[float, Field(gt=0)] = 1.0  # 2.0 replays twice as fast
    window_start_s: Annotated[float, Field(ge=0)] = 0.0
    window_s: Annotated[float, Field(gt=0)] | None = None
    max_requests: Annotated[int, Field(ge=1)] | None = None


class TokenDistSpec(_Strict):
    """A token count per draw: lognormal with this mean and coefficient of variation, rounded and clipped."""

    mean: Annotated[float, Field(gt=0)]
    cv: Annotated[float, Field(ge=0)] = 1.0
    min: Annotated[int, Field(ge=1)] = 1
    max: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> TokenDistSpec:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class PauseSpec(_Strict):
    """The tool/think pause before each later step of a session: lognormal seconds (cv 0: constant)."""

    mean_s: Annotated[float, Field(ge=0)]
    cv: Annotated[float, Field(ge=0)] = 1.0


class StepsSpec(_Strict):
    """Steps (LLM calls) per session: geometric on {1, 2, ...} with this mean, capped at ``max``."""

    mean: Annotated[float, Field(ge=1)]
    max: Annotated[int, Field(ge=1, le=2048)] = 64


class SessionSource(_Strict):
    """Agentic sessions (envs/workloads/sessions.py): chains of LLM calls with tool pauses, in a closed loop.

    Sessions start by ``arrival``. Step 0's prompt is ``first_prompt`` tokens; step k's prompt is step k-1's
    prompt plus its output plus ``step_input`` new tokens (a tool result or user turn), so consecutive steps
    share their prefix. Step k arrives ``pause`` after step k-1 finishes. A session ends early when its next
    step would exceed ``max_context_tokens`` (prompt + output).
    """

    kind: Literal["sessions"]
    tenant: str
    arrival: ArrivalSpec
    steps: StepsSpec
    first_prompt: TokenDistSpec
    step_input: TokenDistSpec
    output: TokenDistSpec
    pause: PauseSpec
    # 2048 blocks of 512 tokens: the hash layout of envs/workloads/sessions.py has room for 1M tokens.
    max_context_tokens: Annotated[int, Field(ge=2, le=2048 * 512)] = 32768


class AppTraceSource(_Strict):
    """A CSV trace with user and application columns (envs/workloads/applications.py: load_app_trace):
    ``arrival_s,application,user,prompt_tokens,output_tokens``; ``user`` is the user's index within its
    application (0 .. users-1), each row one single-call application request."""

    kind: Literal["app_trace"]
    file: str  # relative to the data directory (SERVEGYM_DATA_DIR), or absolute
    time_scale: Annotated[float, Field(gt=0)] = 1.0
    tenant: None = None  # rows name their user; kept for the sources' common interface


def _source_kind(v: Any) -> str | None:
    """``kind`` may be left out: a source naming a trace ``format`` or ``file`` is a trace, else synthetic."""
    if isinstance(v, dict):
        return v.get("kind") or ("trace" if "format" in v or "file" in v else "synthetic")
    return getattr(v, "kind", None)


Source = Annotated[
    Annotated[SyntheticSource, Tag("synthetic")]
    | Annotated[TraceSource, Tag("trace")]
    | Annotated[SessionSource, Tag("sessions")]
    | Annotated[AppTraceSource, Tag("app_trace")],
    Discriminator(_source_kind),
]


class AbuseSpec(_Strict):
    """The abusive users of an application: the first ``users`` of them send ``rate_multiplier`` times its
    normal rate of application requests."""

    users: Annotated[int, Field(ge=0)] = 1
    rate_multiplier: Annotated[float, Field(gt=1)] = 20.0


class ApplicationConfig(_Strict):
    """An application on a multi-tenant platform (FairServe, Khan et al. 2024; envs/workloads/applications.py).

    ``users`` users each send application requests by a Poisson process at ``rate_per_user_s`` (abusive users
    faster). One application request fans out into ``calls`` LLM calls made one after another (an agentic
    app), shaped like a session's steps: the first call's prompt is ``first_prompt`` tokens, each later call's
    prompt adds the previous output and ``step_input`` tokens, a ``pause`` apart. Every user is a tenant named
    ``<application>/<k>`` with the application's tier and SLOs, so the core's per-tenant machinery (VTC
    counters, buckets) works per user. ``session_slo_s`` judges a whole application request end to end.
    """

    name: str
    users: Annotated[int, Field(ge=1, le=10_000)]
    rate_per_user_s: Annotated[float, Field(gt=0)]
    calls: StepsSpec = StepsSpec(mean=1, max=1)
    first_prompt: TokenDistSpec
    step_input: TokenDistSpec = TokenDistSpec(mean=200)
    output: TokenDistSpec
    pause: PauseSpec = PauseSpec(mean_s=0.0)
    max_context_tokens: Annotated[int, Field(ge=2, le=2048 * 512)] = 32768
    tier: Literal["interactive", "batch"] = "interactive"
    weight: Annotated[float, Field(gt=0)] = 1.0
    ttft_slo_s: Annotated[float, Field(gt=0)] | None = None
    tpot_slo_s: Annotated[float, Field(gt=0)] | None = None
    deadline_s: Annotated[float, Field(gt=0)] | None = None
    session_slo_s: Annotated[float, Field(gt=0)] | None = None
    abuse: AbuseSpec | None = None
    # False: users send no synthetic requests (their requests come from an ``app_trace`` source)
    synthetic: bool = True

    @model_validator(mode="after")
    def _abusers_fit(self) -> ApplicationConfig:
        if self.abuse is not None and self.abuse.users > self.users:
            raise ValueError(f"abuse.users ({self.abuse.users}) exceeds users ({self.users})")
        return self

    def user_tenant(self, k: int) -> str:
        return f"{self.name}/{k}"


def _expand_applications(data: Any) -> Any:
    """Make one tenant per user of every application (before validation, so the tenants are checked like any
    other). Idempotent: a tenant already present by name is kept, so a dumped scenario validates again."""
    if not isinstance(data, dict) or not data.get("applications"):
        return data
    data = dict(data)
    tenants = list(data.get("tenants") or [])
    have = {t.get("name") if isinstance(t, dict) else getattr(t, "name", None) for t in tenants}
    for a in data["applications"]:
        if not isinstance(a, dict) or not isinstance(a.get("users"), int) or "name" not in a:
            continue  # the application's own validation reports it
        abuse = a.get("abuse")
        # `abuse: {}` takes AbuseSpec's defaults (one user); a spec may also come in as a model object
        if abuse is None:
            n_abusive = 0
        elif isinstance(abuse, dict):
            n_abusive = abuse.get("users", 1)
        else:
            n_abusive = getattr(abuse, "users", 1)
        for k in range(max(a["users"], 0)):
            name = f"{a['name']}/{k}"
            if name in have:
                continue
            t = {"name": name, "application": a["name"], "abusive": k < n_abusive}
            for key in ("tier", "ttft_slo_s", "tpot_slo_s", "deadline_s", "session_slo_s", "weight"):
                if a.get(key) is not None:
                    t[key] = a[key]
            tenants.append(t)
    data["tenants"] = tenants
    data.setdefault("sources", [])
    return data


class KvLinkConfig(_Strict):
    """The link between two pools (either direction), overriding ``kv_transfer.link`` for that pair."""

    pools: Annotated[list[str], Field(min_length=2, max_length=2)]
    link: Literal[LINK_CLASSES]  # type: ignore[valid-type]


class KvTransferConfig(_Strict):
    """How a KV cache moves from a prefill replica to a decode replica (envs/perf/interconnect.py)."""

    # Splitwise's and Mooncake's clusters move KV over per-GPU InfiniBand/RDMA NICs; NDR is the H100 fabric.
    link: Literal[LINK_CLASSES] = "infiniband-ndr"  # type: ignore[valid-type]
    # Splitwise's layer-wise transfer: layer l's KV is sent while layer l+1 is computed.
    layerwise: bool = True
    links: list[KvLinkConfig] = []


class PoliciesConfig(_Strict):
    """Built-in rules the core uses for every decision the caller does not control."""

    batching: Literal[BATCHING_POLICIES] = "fcfs"  # type: ignore[valid-type]
    routing: Literal[ROUTING_POLICIES] = "round_robin"  # type: ignore[valid-type]
    scaling: Literal[SCALING_POLICIES] = "static"  # type: ignore[valid-type]
    # SageServe's reactive rule: scale up above 50% memory utilization, down below 25%.
    reactive_up: Annotated[float, Field(gt=0, le=1)] = 0.5
    reactive_down: Annotated[float, Field(ge=0, lt=1)] = 0.25
    # Cost-aware routing: a replica is predicted to meet the SLO while at most cost_aware_max_queue requests
    # wait there and its KV cache is at most cost_aware_max_kv full (the KV fill stands for the batch size,
    # which sets the decode time; a large model with a tight TPOT SLO needs a low value, see docs/baselines.md).
    cost_aware_max_queue: Annotated[int, Field(ge=0)] = 0
    cost_aware_max_kv: Annotated[float, Field(gt=0, le=1)] = 0.4
    # target_util and forecast scalers size each pool to serve its demand at target_utilization of its
    # capacity: replica_capacity_rps, the requests/s one replica sustains within the SLO (measure it with
    # scripts/goodput_sweep.py). One number for every pool, or {pool name: number}.
    target_utilization: Annotated[float, Field(gt=0, le=1)] = 0.8
    replica_capacity_rps: Annotated[float, Field(gt=0)] | dict[str, Annotated[float, Field(gt=0)]] | None = (
        None
    )
    # forecast scaler: Holt's linear smoothing of the arrivals per control interval (SageServe forecasts the
    # arrival rate to scale ahead of demand); it sizes for the forecast one interval plus a cold start ahead.
    forecast_alpha: Annotated[float, Field(gt=0, le=1)] = 0.5
    forecast_beta: Annotated[float, Field(ge=0, le=1)] = 0.2
    # target_util and forecast: no scale-down this soon after a scale-up of the pool (Kubernetes HPA's default
    # scale-down stabilization window), so that a short dip does not undo a scale-up that just paid a cold start.
    scale_down_cooldown_s: Annotated[float, Field(ge=0)] = 300.0
    # session_affinity routing: a session's step leaves its home replica (the one that served its previous
    # step) when that replica has more than this many outstanding requests (waiting + running). Our default:
    # half of vLLM's default max_num_seqs (256), where the home replica's batch is still far from full.
    session_affinity_max_load: Annotated[int, Field(ge=0)] = 128
    # splitwise routing (disaggregated pools): a phase goes to the mixed pool only when every replica of its
    # own role has more than this many requests outstanding (waiting + running + incoming KV) beyond the
    # least-loaded mixed replica. Splitwise sends work to its mixed pool when a phase's pool is overloaded
    # and gives no number; 8 is our choice, the order of a few prompt batches.
    splitwise_overflow: Annotated[int, Field(ge=0)] = 8
    # ---- admission of arriving requests (envs/sim/admission.py, docs/fairserve.md); admit_all: off
    admission: Literal[ADMISSION_POLICIES] = "admit_all"  # type: ignore[valid-type]
    # rpm / tpm: the fixed per-user limits (LLM calls, or prompt + output tokens, per minute)
    admission_rpm: Annotated[float, Field(gt=0)] = 60.0
    admission_tpm: Annotated[float, Field(gt=0)] = 60_000.0
    # every token bucket holds this many seconds of its limit (a burst allowance)
    admission_burst_s: Annotated[float, Field(gt=0)] = 60.0
    # fairserve: a user may send this many times its application's expected rate of application requests
    fairserve_headroom: Annotated[float, Field(ge=1)] = 2.0
    # fairserve throttles only under overload: more than this many requests outstanding (waiting or running)
    # per active replica. Our choice (FairServe gives no number): a 7B model on an A100 still decodes 32
    # sequences well within a 0.1 s TPOT, and a fuller batch is what slows everyone's decode.
    overload_load_per_replica: Annotated[float, Field(ge=0)] = 32.0
    # a deferred request is presented to admission again this many seconds later
    defer_s: Annotated[float, Field(gt=0)] = 5.0

    @model_validator(mode="after")
    def _consistent(self) -> PoliciesConfig:
        if self.reactive_down >= self.reactive_up:
            raise ValueError(
                f"reactive_down ({self.reactive_down}) must be below reactive_up ({self.reactive_up})"
            )
        if self.scaling in CAPACITY_SCALERS and self.replica_capacity_rps is None:
            raise ValueError(
                f"scaling {self.scaling!r} needs replica_capacity_rps (requests/s one replica sustains within "
                "the SLO; scripts/goodput_sweep.py measures it)"
            )
        return self


class Scenario(_Strict):
    name: str
    description: str = ""
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    horizon_s: Annotated[float, Field(gt=0)]
    control_interval_s: Annotated[float, Field(gt=0)] = 60.0
    # A request that has waited this long in a replica queue without starting is dropped and counted.
    max_wait_s: Annotated[float, Field(gt=0)] = 60.0
    # Per-replica waiting-queue capacity; an arrival that finds it full is dropped (a real server's max queue).
    queue_capacity: Annotated[int, Field(ge=1, le=1_000_000)] = 4096
    # One-way network latency between regions in ms: {from: {to: ms}}; symmetric, missing pairs are 0.
    region_latency_ms: dict[str, dict[str, Annotated[float, Field(ge=0)]]] = {}
    pools: Annotated[list[PoolConfig], Field(min_length=1)]
    tenants: Annotated[list[TenantConfig], Field(min_length=1)]
    # may be empty when ``applications`` generates the workload
    sources: list[Source]
    policies: PoliciesConfig = PoliciesConfig()
    # Applications with users inside them (envs/workloads/applications.py); each user becomes a tenant.
    applications: list[ApplicationConfig] = []
    # ---- timing version and context limits (docs/perf_model.md "Timing versions")
    # "v0": Splitwise-era overheads and no context limit (what suite v0 and the -v0 env ids replay); "v1":
    # engine profiles per pool (default vllm) and each model's context limit. None: the caller decides
    # (Simulator and the CLI: v1; the servegym/*-v0 env ids: v0; the *-v1 ids: v1).
    timing: Literal[TIMING_VERSIONS] | None = None  # type: ignore[valid-type]
    # Timing v1: a request whose prompt + output exceed its model's context is rejected at load (removed from
    # the workload, counted), has its prompt truncated to fit (keeping its last tokens, as vLLM's
    # truncate_prompt_tokens does), or is dropped on arrival (an SLO miss, counted as context_dropped).
    context_policy: Literal[CONTEXT_POLICIES] = "reject"  # type: ignore[valid-type]
    # Prefill/decode disaggregation: the links KV caches take between pools (pools with role prefill/decode).
    kv_transfer: KvTransferConfig = KvTransferConfig()
    # Run it streamed (envs/sim/stream.py, docs/streaming.md): requests are generated and held window by
    # window, so the request budget below does not apply; the streamed run's own memory estimate does
    # (envs/sim/memory.py). False: Simulator builds the whole request table up front, as before.
    streaming: bool = False

    @model_validator(mode="before")
    @classmethod
    def _users_as_tenants(cls, data: Any) -> Any:
        return _expand_applications(data)

    @model_validator(mode="after")
    def _cross_references(self) -> Scenario:
        if not self.sources and not any(a.synthetic for a in self.applications):
            raise ValueError(
                "sources: at least one source (or an application with synthetic users) is needed"
            )
        _unique([a.name for a in self.applications], "applications")
        apps = {a.name for a in self.applications}
        for i, t in enumerate(self.tenants):
            if t.application is not None and t.application not in apps:
                raise ValueError(f"tenants.{i}.application: unknown application {t.application!r}")
        for i, src in enumerate(self.sources):
            if src.kind == "app_trace" and not apps:
                raise ValueError(f"sources.{i}: an app_trace source needs the scenario's applications")
        _unique([p.name for p in self.pools], "pools")
        _unique([t.name for t in self.tenants], "tenants")
        tenants = {t.name for t in self.tenants}
        for i, src in enumerate(self.sources):
            if src.tenant is not None and src.tenant not in tenants:
                raise ValueError(
                    f"sources.{i}.tenant: unknown tenant {src.tenant!r}; known: {sorted(tenants)}"
                )
            if src.kind == "trace" and src.tenant is None and src.format != "generic":
                raise ValueError(f"sources.{i}.tenant: format {src.format!r} has no tenant column; name one")
        cap = self.policies.replica_capacity_rps
        if isinstance(cap, dict):
            pools = {p.name for p in self.pools}
            unknown = sorted(set(cap) - pools)
            if unknown:
                raise ValueError(
                    f"policies.replica_capacity_rps: unknown pools {unknown}; pools: {sorted(pools)}"
                )
            if self.policies.scaling in CAPACITY_SCALERS and pools - set(cap):
                raise ValueError(
                    f"policies.replica_capacity_rps: no capacity for pools {sorted(pools - set(cap))}"
                )
        for a, row in self.region_latency_ms.items():
            for b, ms in row.items():
                back = self.region_latency_ms.get(b, {}).get(a)
                if back is not None and back != ms:
                    raise ValueError(
                        f"region_latency_ms: {a}->{b} is {ms} ms but {b}->{a} is {back} ms; latencies are "
                        "symmetric, give one value (or both equal)"
                    )
        _check_budgets(self)
        _check_roles(self)
        models = {p.model for p in self.pools}
        regions = {p.region for p in self.pools}
        for i, t in enumerate(self.tenants):
            if t.model is not None and t.model not in models:
                raise ValueError(
                    f"tenants.{i}.model: no pool serves {t.model!r}; pools serve {sorted(models)}"
                )
            if t.region is not None and t.region not in regions | set(self.region_latency_ms):
                raise ValueError(f"tenants.{i}.region: unknown region {t.region!r}")
        return self

    def tenant_index(self) -> dict[str, int]:
        return {t.name: i for i, t in enumerate(self.tenants)}

    def region_names(self) -> list[str]:
        names: list[str] = []
        for r in [p.region for p in self.pools] + [t.region for t in self.tenants if t.region]:
            if r not in names:
                names.append(r)
        for a, row in self.region_latency_ms.items():
            for r in [a, *row]:
                if r not in names:
                    names.append(r)
        return names


def expected_application_calls(sc: Scenario) -> float:
    """The synthetic applications' expected LLM calls over the horizon (the mean calls bound the capped
    mean); an application loaded from an ``app_trace`` counts its file's rows instead."""
    total = 0.0
    for a in sc.applications:
        if a.synthetic:
            abusers = a.abuse.users * (a.abuse.rate_multiplier - 1) if a.abuse is not None else 0.0
            total += (a.users + abusers) * a.rate_per_user_s * a.calls.mean * sc.horizon_s
    return total


def _check_budgets(sc: Scenario) -> None:
    """Refuse, naming the key and the estimate, a scenario whose work or memory one key blows up."""
    ticks = sc.horizon_s / sc.control_interval_s
    if ticks > MAX_CONTROL_TICKS:
        raise ValueError(
            f"control_interval_s: {sc.control_interval_s:g} s over horizon_s {sc.horizon_s:g} s is {ticks:.3g} "
            f"control ticks (~{ticks * 0.5e-6:.3g} s of CPU per episode); at most {MAX_CONTROL_TICKS:g}: "
            "raise control_interval_s"
        )
    total = expected_application_calls(sc)
    if total > MAX_EXPECTED_REQUESTS:
        raise ValueError(
            f"applications: the users' rates over horizon_s {sc.horizon_s:g} s bring the expected requests to "
            f"{total:.3g}; at most {MAX_EXPECTED_REQUESTS:g}: lower the rates, the users or the horizon"
        )
    for i, src in enumerate(sc.sources):
        if src.kind in ("trace", "app_trace") or sc.streaming:
            continue  # a trace's size is the file's; a streamed run is bounded by its memory estimate instead
        n = src.arrival.rate_per_s * sc.horizon_s
        key = f"sources.{i}.arrival.rate_per_s"
        if src.kind == "sessions":
            n *= src.steps.mean
            key += " (x steps.mean)"
        total += n
        if total > MAX_EXPECTED_REQUESTS:
            raise ValueError(
                f"{key}: {src.arrival.rate_per_s:g}/s over horizon_s {sc.horizon_s:g} s brings the expected "
                f"requests to {total:.3g} (~{total * BYTES_PER_REQUEST / 2**30:.3g} GiB); at most "
                f"{MAX_EXPECTED_REQUESTS:g}: lower the rate or the horizon, or set streaming: true"
            )
    blocks = max(((p.prefix_cache_blocks or 0) for p in sc.pools if p.prefix_cache), default=0)
    replicas = sum(p.max_replicas for p in sc.pools)
    need = blocks * replicas * PREFIX_CACHE_BYTES_PER_BLOCK
    if need > MAX_PREFIX_CACHE_BYTES:
        i = next(i for i, p in enumerate(sc.pools) if p.prefix_cache and p.prefix_cache_blocks == blocks)
        raise ValueError(
            f"pools.{i}.prefix_cache_blocks: {blocks} blocks on each of {replicas} replicas need "
            f"~{need / 2**30:.3g} GiB of prefix-cache tables; at most {MAX_PREFIX_CACHE_BYTES / 2**30:g} GiB"
        )


def _check_roles(sc: Scenario) -> None:
    """Disaggregated pools: a prefill pool's model has somewhere to decode (a decode or mixed pool), and a
    decode pool's model has a prefill pool to hand it work (mixed replicas decode what they prefill, so a decode
    pool beside mixed pools only would be billed and never used)."""
    names = {p.name for p in sc.pools}
    for i, link in enumerate(sc.kv_transfer.links):
        unknown = [n for n in link.pools if n not in names]
        if unknown:
            raise ValueError(f"kv_transfer.links.{i}.pools: unknown pools {unknown}; pools: {sorted(names)}")
    for i, p in enumerate(sc.pools):
        if p.role == "mixed":
            continue
        need = ("decode", "mixed") if p.role == "prefill" else ("prefill",)
        if not any(q.model == p.model and q.role in need for q in sc.pools):
            raise ValueError(
                f"pools.{i}.role: pool {p.name!r} is a {p.role} pool but no {' or '.join(need)} pool serves "
                f"{p.model!r}; add one (or make this pool mixed)"
            )
    if any(p.role != "mixed" for p in sc.pools) and sc.policies.routing == "session_affinity":
        raise ValueError(
            "policies.routing: session_affinity is not defined for disaggregated pools (a session's KV ends on "
            "its decode replica); use jsq, splitwise or another rule"
        )


def _unique(names: list[str], where: str) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise ValueError(f"{where}.{i}.name: duplicate name {n!r}")
        seen.add(n)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid scenario ({err.error_count()} error(s))"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {path}: {e['msg']}")
    return "\n".join(lines)


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any], _path: str = "") -> dict[str, Any]:
    """``overrides`` deep-merged over ``base``: mappings merge key by key; a list is replaced whole by a list,
    and merged entry by entry by a mapping of indices (``{"sources": {"0": {"time_scale": 2}}}``, what
    ``--set sources.0.time_scale=2`` gives). A bad index raises ScenarioError naming the override."""
    out = dict(base)
    for key, val in overrides.items():
        where = f"{_path}{key}"
        cur = out.get(key)
        if isinstance(val, dict) and isinstance(cur, dict):
            out[key] = merge_overrides(cur, val, where + ".")
        elif isinstance(val, dict) and isinstance(cur, list):
            out[key] = _merge_indexed(cur, val, where)
        else:
            out[key] = val
    return out


def _merge_indexed(base: list[Any], overrides: dict[Any, Any], where: str) -> list[Any]:
    out = list(base)
    for idx, val in overrides.items():
        i = idx if isinstance(idx, int) and not isinstance(idx, bool) else None
        if isinstance(idx, str) and idx.isdigit():
            i = int(idx)
        if i is None or not 0 <= i < len(out):
            raise ScenarioError(
                f"override {where}.{idx}: {where} is a list of {len(out)} "
                f"{'entry' if len(out) == 1 else 'entries'}; "
                f"use an index in 0..{len(out) - 1}" + ("" if i is not None else f" (not {idx!r})")
            )
        if isinstance(val, dict) and isinstance(out[i], dict):
            out[i] = merge_overrides(out[i], val, f"{where}.{i}.")
        elif isinstance(val, dict) and isinstance(out[i], list):
            out[i] = _merge_indexed(out[i], val, f"{where}.{i}")
        else:
            out[i] = val
    return out


def _flat_overrides(overrides: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 3}}`` -> ``[("a.b", 3)]``: the keys as ``--set`` writes them."""
    out: list[tuple[str, Any]] = []
    for key, val in overrides.items():
        path = f"{prefix}{key}"
        if isinstance(val, dict) and val:
            out += _flat_overrides(val, path + ".")
        else:
            out.append((path, val))
    return out


_SOURCE_TAGS = ("synthetic", "trace", "sessions")


def _key_path(loc: tuple[Any, ...], msg: str) -> str:
    """An error's key path as ``--set`` writes it: without the union tag pydantic puts after a source's
    index (``sources.0.trace.time_scale``), and for a whole-scenario check the key its message names."""
    parts = [
        str(p) for i, p in enumerate(loc) if not (p in _SOURCE_TAGS and i and isinstance(loc[i - 1], int))
    ]
    if parts:
        return ".".join(parts)
    m = re.match(r"(?:Value error, )?([A-Za-z_][\w.]*):", msg)
    return m.group(1) if m else ""


def _blame_overrides(err: ValidationError, source: str, overrides: dict[str, Any]) -> str:
    """The validation errors (of a mapping valid without the overrides), each reported against the override
    that touches its key path, else against the overrides together."""
    flat = _flat_overrides(overrides)
    lines = [f"{source} with overrides: invalid scenario ({err.error_count()} error(s))"]
    for e in err.errors():
        path = _key_path(e["loc"], e["msg"])
        hits = [
            (k, v)
            for k, v in flat
            if not path or path == k or path.startswith(k + ".") or k.startswith(path + ".")
        ]
        where = path if e["loc"] else ""
        for k, v in hits:
            lines.append(
                f"  override {k}={_show(v)}: {where + ': ' if where and where != k else ''}{e['msg']}"
            )
        if not hits:  # the file alone validates, so the overrides together broke this key
            given = ", ".join(f"{k}={_show(v)}" for k, v in flat)
            lines.append(f"  {where or '<root>'}: {e['msg']} (after the overrides {given})")
    return "\n".join(lines)


def _show(v: Any) -> str:
    text = v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True, width=1 << 16)
    text = text.strip().removesuffix("...").strip()
    return text if len(text) <= 80 else text[:77] + "..."


def scenario_path(name_or_path: str | Path) -> Path:
    """A scenario name (``chat_azure``) resolves to ``configs/scenarios/chat_azure.yaml``; a path is taken as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return SCENARIO_DIR / f"{name_or_path}.yaml"


def list_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def load_scenario(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """Load and validate a scenario; ``overrides`` is deep-merged over the file's mapping first."""
    path = scenario_path(name_or_path)
    if not path.exists():
        raise ScenarioError(f"{path}: no such scenario file; known scenarios: {list_scenarios()}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ScenarioError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: a scenario must be a YAML mapping, got {type(raw).__name__}")
    return scenario_from_dict(raw, source=str(path), overrides=overrides)


def scenario_from_dict(
    raw: dict[str, Any], source: str = "<dict>", overrides: dict[str, Any] | None = None
) -> Scenario:
    """Validate a scenario mapping, with ``overrides`` (merge_overrides) applied first. When the mapping alone
    is valid, the errors of the merged one are the overrides' and are reported against them; else against
    ``source``, as they were before overrides had their own messages."""
    if not overrides:
        try:
            return Scenario.model_validate(raw)
        except ValidationError as e:
            raise ScenarioError(_format_validation_error(e, source)) from None
    if not isinstance(overrides, dict):
        raise ScenarioError(f"overrides must be a mapping of scenario keys, got {type(overrides).__name__}")
    merged = merge_overrides(raw, overrides)
    try:
        return Scenario.model_validate(merged)
    except ValidationError as e:
        try:
            Scenario.model_validate(raw)
        except ValidationError:  # the file alone is invalid too: the merged errors, against the file
            raise ScenarioError(_format_validation_error(e, source)) from None
        raise ScenarioError(_blame_overrides(e, source, overrides)) from None


def with_window(scenario: Scenario, window_start_s: float) -> Scenario:
    """The scenario with every trace source replaying from ``window_start_s`` (trace seconds)."""
    sources = [
        s.model_copy(update={"window_start_s": float(window_start_s)}) if s.kind == "trace" else s
        for s in scenario.sources
    ]
    return scenario.model_copy(update={"sources": sources})


def scaled_sources(scenario: Scenario, factor: float) -> list[dict[str, Any]]:
    """The scenario's sources with the offered load times ``factor``: every synthetic rate, every agentic
    session start rate, and every trace's replay speed (for ``sources`` overrides: goodput sweeps, load
    curricula). Applications' user rates are not scaled: override ``applications`` for them."""
    if not factor > 0:
        raise ValueError(f"rate factor must be > 0, got {factor}")
    out = []
    for src in scenario.sources:
        d = src.model_dump(mode="json")
        if d["kind"] in ("trace", "app_trace"):
            d["time_scale"] = d["time_scale"] * factor
        else:  # synthetic requests or agentic session starts
            d["arrival"]["rate_per_s"] = d["arrival"]["rate_per_s"] * factor
        out.append(d)
    return out
