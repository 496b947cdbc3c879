"""The workload sections of a scenario: arrival, length and prefix specs, the source kinds (synthetic, trace,
sessions, app_trace) and FairServe's applications with their users (docs/fairserve.md). Part of the scenario
schema (envs/scenario.py re-exports every name), kept apart so that each file stays focused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from servegym.envs.schema_base import _Strict

# Gamma gaps of shape 1/cv^2: beyond cv 30 (shape 1/900) most float64 draws underflow to 0, so arrivals
# collapse into a few giant batches, and generation cannot tell when it has reached the horizon.
MAX_GAMMA_CV = 30.0


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
