"""Scenario schema: the single source of truth for what a simulated cluster and its workload look like.

A scenario is a YAML file under ``configs/scenarios/``. It is validated here with pydantic, so an unknown key or
a bad value is reported with its key path (``pools.0.tp``) and the file it came from, before anything reaches the
numba core. Names of GPUs and models are checked against the perf tables when the simulation is built, because
the config layer must not import the simulator.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from servegym.configs import SCENARIO_DIR
from servegym.envs import rules
from servegym.envs.schema_base import _Strict
from servegym.envs.workload_schema import (
    MAX_GAMMA_CV as MAX_GAMMA_CV,
)
from servegym.envs.workload_schema import (  # re-exported: the scenario schema's one import path
    AbuseSpec as AbuseSpec,
)
from servegym.envs.workload_schema import (
    ApplicationConfig as ApplicationConfig,
)
from servegym.envs.workload_schema import (
    AppTraceSource as AppTraceSource,
)
from servegym.envs.workload_schema import (
    ArrivalSpec as ArrivalSpec,
)
from servegym.envs.workload_schema import (
    DiurnalSpec as DiurnalSpec,
)
from servegym.envs.workload_schema import (
    LengthSpec as LengthSpec,
)
from servegym.envs.workload_schema import (
    PauseSpec as PauseSpec,
)
from servegym.envs.workload_schema import (
    PrefixSpec as PrefixSpec,
)
from servegym.envs.workload_schema import (
    SessionSource as SessionSource,
)
from servegym.envs.workload_schema import (
    Source as Source,
)
from servegym.envs.workload_schema import (
    StepsSpec as StepsSpec,
)
from servegym.envs.workload_schema import (
    SyntheticSource as SyntheticSource,
)
from servegym.envs.workload_schema import (
    TokenDistSpec as TokenDistSpec,
)
from servegym.envs.workload_schema import (
    TraceSource as TraceSource,
)
from servegym.envs.workload_schema import (
    _expand_applications as _expand_applications,
)

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


def expected_source_requests(src: Source, horizon_s: float) -> float | None:
    """A generated source's expected requests over the horizon (a session source's steps included); None for
    a trace, whose size is its file's."""
    if src.kind in ("trace", "app_trace"):
        return None
    n = src.arrival.rate_per_s * horizon_s
    return n * src.steps.mean if src.kind == "sessions" else n


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
        n = expected_source_requests(src, sc.horizon_s)
        if n is None or sc.streaming:
            continue  # a trace's size is the file's; a streamed run is bounded by its memory estimate instead
        key = f"sources.{i}.arrival.rate_per_s" + (" (x steps.mean)" if src.kind == "sessions" else "")
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
