"""Applications with users inside them: FairServe's two-level identity (Khan et al., 2024, arXiv 2411.15997).

A multi-tenant LLM platform hosts applications, and each application has users. Applications differ in how
many LLM calls one user request makes (an agentic app fans one request out into several calls), in their
token lengths and in their SLOs. Some users are abusive: they send far more requests than their
application's users normally do.

Here every user is a tenant of the core (``<application>/<k>``, made by the scenario schema), so the core's
per-tenant machinery works per user: VTC counters, the batching rules' fair share, the admission buckets.
The user's application is a field of its tenant (``TenantConfig.application``), so a request's application
is a function of its tenant and needs no column of its own. One application request is one session of the
core (envs/sim/sessions.py): its calls are the session's steps, released one after another as each
finishes, so "count them as one application request" means "count the session once".

Synthetic users draw their application requests with the session generator (envs/workloads/sessions.py), one
Poisson stream per user. Traces come as CSV rows ``arrival_s,application,user,prompt_tokens,output_tokens``
(``load_app_trace``), each row one single-call application request of user ``user`` of ``application``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from servegym.envs.scenario import (
    ApplicationConfig,
    AppTraceSource,
    ArrivalSpec,
    Scenario,
    SessionSource,
)
from servegym.envs.workloads.requests import RequestTable, WorkloadError
from servegym.envs.workloads.sessions import generate_sessions

APP_TRACE_COLUMNS = ("arrival_s", "application", "user", "prompt_tokens", "output_tokens")


def expected_calls(app: ApplicationConfig) -> float:
    """Mean LLM calls per application request: the geometric draw's mean, truncated at ``calls.max``."""
    p = 1.0 / app.calls.mean
    m = app.calls.max
    # E[min(G, m)] for G geometric on {1, 2, ...} with success probability p: sum_{k<m} (1-p)^k
    return float((1.0 - (1.0 - p) ** m) / p) if p < 1.0 else 1.0


def expected_service(app: ApplicationConfig) -> float:
    """Expected VTC service of one application request (1 per prompt token, 2 per output token, over all its
    calls): the unit FairServe's weighted service counter divides a user's service by. Call k's prompt holds
    the first prompt and k previous outputs and step inputs (the session's growing context)."""
    c = expected_calls(app)
    out = app.output.mean
    step = app.step_input.mean
    # sum over calls k = 0..c-1 of (first + k * (out + step)) + 2 * out per call
    prompts = c * app.first_prompt.mean + (out + step) * c * (c - 1) / 2.0
    return float(prompts + 2.0 * out * c)


def application_units(scenario: Scenario) -> np.ndarray:
    """Per tenant: its application's expected service per application request over the mean of the
    applications' (so weights stay near 1); 1 for a tenant outside any application."""
    apps = {a.name: expected_service(a) for a in scenario.applications}
    if not apps:
        return np.ones(len(scenario.tenants))
    mean = float(np.mean(list(apps.values())))
    return np.array([apps[t.application] / mean if t.application else 1.0 for t in scenario.tenants])


def application_index(scenario: Scenario) -> np.ndarray:
    """Per tenant: the index of its application in ``scenario.applications``, -1 outside any."""
    names = [a.name for a in scenario.applications]
    return np.array([names.index(t.application) if t.application else -1 for t in scenario.tenants])


def user_rate(app: ApplicationConfig, k: int) -> float:
    """Application requests per second that user k of ``app`` sends."""
    if app.abuse is not None and k < app.abuse.users:
        return app.rate_per_user_s * app.abuse.rate_multiplier
    return app.rate_per_user_s


def generate_application_requests(
    scenario: Scenario, rng: np.random.Generator, first_source: int
) -> list[RequestTable]:
    """One table per synthetic user (sessions of ``calls`` steps), drawn in application then user order;
    ``first_source`` namespaces the prefix hashes after the scenario's own sources."""
    tenants = scenario.tenant_index()
    tables = []
    src_id = first_source
    for app in scenario.applications:
        if not app.synthetic:
            continue
        for k in range(app.users):
            src = SessionSource(
                kind="sessions",
                tenant=app.user_tenant(k),
                arrival=ArrivalSpec(process="poisson", rate_per_s=user_rate(app, k)),
                steps=app.calls,
                first_prompt=app.first_prompt,
                step_input=app.step_input,
                output=app.output,
                pause=app.pause,
                max_context_tokens=app.max_context_tokens,
            )
            tables.append(generate_sessions(rng, src, tenants[src.tenant], scenario.horizon_s, src_id))
            src_id += 1
    return tables


def load_app_trace(src: AppTraceSource, path: Path, scenario: Scenario) -> RequestTable:
    """Read a CSV with user and application columns; every error names the file, the line and the column."""
    name = str(path)
    apps = {a.name: a for a in scenario.applications}
    tenants = scenario.tenant_index()
    arrival: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    tenant: list[int] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in APP_TRACE_COLUMNS if c not in header]
        if missing:
            raise WorkloadError(
                f"{name}: line 1: missing column(s) {missing}; an app trace needs {list(APP_TRACE_COLUMNS)}",
                file=name,
                row=1,
                field=missing[0],
            )
        for line, row in enumerate(reader, start=2):

            def bad(col: str, why: str, line: int = line, row: dict = row) -> WorkloadError:
                return WorkloadError(
                    f"{name}: line {line} column '{col}': {why} (got {row.get(col)!r})",
                    file=name,
                    row=line,
                    field=col,
                )

            app = apps.get(row["application"])
            if app is None:
                raise bad("application", f"unknown application; the scenario has {sorted(apps)}")
            try:
                k = int(row["user"])
            except (TypeError, ValueError):
                raise bad("user", "not an integer user index") from None
            if not 0 <= k < app.users:
                raise bad("user", f"user index outside 0..{app.users - 1} of application {app.name!r}")
            try:
                t = float(row["arrival_s"]) / src.time_scale
            except (TypeError, ValueError):
                raise bad("arrival_s", "not a number") from None
            if not np.isfinite(t) or t < 0:
                raise bad("arrival_s", "must be finite and >= 0")
            counts = []
            for col in ("prompt_tokens", "output_tokens"):
                try:
                    v = int(row[col])
                except (TypeError, ValueError):
                    raise bad(col, "not an integer") from None
                if v < 1:
                    raise bad(col, "must be >= 1")
                counts.append(v)
            arrival.append(t)
            prompt.append(counts[0])
            output.append(counts[1])
            tenant.append(tenants[app.user_tenant(k)])
    a = np.asarray(arrival, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    table = RequestTable.from_arrays(
        a[order], np.asarray(prompt)[order], np.asarray(output)[order], np.asarray(tenant)[order]
    )
    table.validate(name)
    return table
