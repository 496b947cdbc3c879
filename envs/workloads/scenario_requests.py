"""Turn a scenario's workload sources into one request table (config -> workload)."""

from __future__ import annotations

import numpy as np

from servegym.envs.data import resolve_data_path
from servegym.envs.scenario import (
    AppTraceSource,
    PrefixSpec,
    Scenario,
    ScenarioError,
    SessionSource,
    SyntheticSource,
    TraceSource,
)
from servegym.envs.scenario import LengthSpec as LengthConfig
from servegym.envs.workloads import traces
from servegym.envs.workloads.applications import generate_application_requests, load_app_trace
from servegym.envs.workloads.requests import PREFIX_BLOCK_TOKENS, RequestTable
from servegym.envs.workloads.sessions import generate_sessions
from servegym.envs.workloads.synthetic import ArrivalSpec, DiurnalSpec, LengthSpec, generate_tenant_requests


def length_spec(cfg: LengthConfig) -> LengthSpec:
    bounds = dict(
        prompt_min=cfg.prompt_min,
        prompt_max=cfg.prompt_max,
        output_min=cfg.output_min,
        output_max=cfg.output_max,
    )
    if cfg.dist == "empirical":
        return LengthSpec(dist="empirical", table=cfg.table, joint=cfg.joint, **bounds)
    return LengthSpec(
        dist="lognormal",
        prompt_mean=cfg.prompt_mean,
        prompt_cv=cfg.prompt_cv,
        output_mean=cfg.output_mean,
        output_cv=cfg.output_cv,
        **bounds,
    )


def attach_prefixes(
    table: RequestTable, spec: PrefixSpec, rng: np.random.Generator, tenant: int, source: int
) -> RequestTable:
    """Give every request Mooncake-style block hashes: ceil(prompt/512) blocks, the leading ones shared.

    Shared block b of prefix group g of tenant t hashes to ((t+1) << 48) | (g << 20) | b, unique blocks to
    negative numbers offset by the source index, so no two sources or tenants collide by accident.
    """
    n = len(table)
    nb = (table.prompt_tokens.astype(np.int64) + PREFIX_BLOCK_TOKENS - 1) // PREFIX_BLOCK_TOKENS
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(nb, out=offsets[1:])
    weights = 1.0 / np.arange(1, spec.groups + 1, dtype=np.float64) ** spec.zipf_s
    group = rng.choice(spec.groups, size=n, p=weights / weights.sum())
    owner = np.repeat(np.arange(n), nb)
    pos = np.arange(offsets[-1], dtype=np.int64) - offsets[owner]
    shared = pos < spec.shared_tokens // PREFIX_BLOCK_TOKENS
    hashes = np.where(
        shared,
        ((tenant + 1) << 48) | (group[owner].astype(np.int64) << 20) | pos,
        -(((source + 1) << 40) + np.arange(offsets[-1], dtype=np.int64)),
    )
    return RequestTable.from_arrays(
        table.arrival_s, table.prompt_tokens, table.output_tokens, table.tenant, offsets, hashes
    )


def _synthetic(src: SyntheticSource, tenant: int, horizon_s: float, rng: np.random.Generator) -> RequestTable:
    a = src.arrival
    diurnal = None
    if a.diurnal is not None:
        diurnal = DiurnalSpec(a.diurnal.period_s, a.diurnal.peak_to_trough, a.diurnal.peak_time_s)
    arrival = ArrivalSpec(a.process, a.rate_per_s, a.cv, diurnal)
    return generate_tenant_requests(rng, tenant, horizon_s, arrival, length_spec(src.lengths))


def _synthetic_with_prefixes(
    src: SyntheticSource, tenant: int, horizon_s: float, rng: np.random.Generator, source: int
) -> RequestTable:
    table = _synthetic(src, tenant, horizon_s, rng)
    if src.prefix is None:
        return table
    return attach_prefixes(table, src.prefix, rng, tenant, source)


def _trace(src: TraceSource, tenants: dict[str, int]) -> RequestTable:

    path = resolve_data_path(src.file)
    kwargs = dict(
        time_scale=src.time_scale,
        window_start_s=src.window_start_s,
        window_s=src.window_s,
        max_requests=src.max_requests,
    )
    if src.tenant is not None:
        kwargs["tenant_index"] = tenants[src.tenant]
    else:
        kwargs["tenant_names"] = tenants
    return traces.load_trace(src.format, path, **kwargs)


def requests_for_scenario(scenario: Scenario, rng: np.random.Generator) -> RequestTable:
    """All sources merged by arrival time and cut at the horizon; draws come from ``rng`` in source order."""
    tenants = scenario.tenant_index()
    tables = []
    for i, src in enumerate(scenario.sources):
        try:
            if isinstance(src, SyntheticSource):
                tables.append(_synthetic_with_prefixes(src, tenants[src.tenant], scenario.horizon_s, rng, i))
            elif isinstance(src, SessionSource):
                tables.append(generate_sessions(rng, src, tenants[src.tenant], scenario.horizon_s, i))
            elif isinstance(src, AppTraceSource):
                tables.append(load_app_trace(src, resolve_data_path(src.file), scenario))
            else:
                tables.append(_trace(src, tenants))
        except ValueError as e:
            if isinstance(e, ScenarioError):
                raise
            raise ScenarioError(f"scenario {scenario.name!r}: sources.{i}: {e}") from e
    # drawn after the sources, so adding applications leaves the sources' draws as they were
    if scenario.applications:
        tables.extend(generate_application_requests(scenario, rng, len(scenario.sources)))
    if not tables:
        return RequestTable.empty()
    table = RequestTable.concat_sorted(tables) if len(tables) > 1 else tables[0]
    if table.sessions is not None:
        # later session steps (+inf) arrive when the simulation releases them; keep those of kept sessions
        first = table.sessions.step == 0
        late = table.arrival_s >= scenario.horizon_s
        dropped_sessions = np.unique(table.sessions.session[first & late & (table.sessions.session >= 0)])
        cut = (first & late) | np.isin(table.sessions.session, dropped_sessions) & (
            table.sessions.session >= 0
        )
        return table.take(np.flatnonzero(~cut)) if cut.any() else table
    keep = int(np.searchsorted(table.arrival_s, scenario.horizon_s, side="left"))
    return table.slice_rows(0, keep) if keep < len(table) else table


def trace_end_s(scenario: Scenario, source: int) -> float:
    """The last arrival of trace source ``source``'s whole file, in trace seconds (reads the file)."""
    src = scenario.sources[source]
    if not isinstance(src, TraceSource):
        raise ValueError(f"sources.{source} is not a trace source")
    whole = src.model_copy(
        update={"window_start_s": 0.0, "window_s": None, "max_requests": None, "time_scale": 1.0}
    )
    try:
        table = _trace(whole, scenario.tenant_index())
    except ValueError as e:
        if isinstance(e, ScenarioError):
            raise
        raise ScenarioError(f"scenario {scenario.name!r}: sources.{source}: {e}") from e
    return float(table.arrival_s[-1]) if len(table) else 0.0


def seed_trace_windows(scenario: Scenario, seeds: list[int]) -> dict[int, float]:
    """The trace window each evaluation seed replays (trace seconds), so that N seeds are N workloads.

    A trace scenario's workload is the file itself: without this, every seed would replay the same requests.
    The windows tile the trace from the first trace source's ``window_start_s`` in steps of one episode's
    span in trace seconds (``horizon_s * time_scale``, or ``window_s`` if shorter); seed ``s`` takes window
    ``s mod n`` of the ``n`` whole windows the trace holds (one when the trace is shorter than an episode),
    so a seed always means the same window. Every trace source replays from that point, as the env's
    ``reset(options={"window_start_s": ...})`` does. Empty for a scenario without a trace source.
    (The leaderboard's suite pins its own window per test seed instead: configs/suite/*.yaml.)
    """
    idx = [i for i, s in enumerate(scenario.sources) if isinstance(s, TraceSource)]
    if not idx:
        return {}
    first = scenario.sources[idx[0]]
    assert isinstance(first, TraceSource)
    step = scenario.horizon_s * first.time_scale  # the trace seconds one episode replays
    if first.window_s is not None:
        step = min(step, first.window_s)
    end = min(trace_end_s(scenario, i) for i in idx)
    n = max(1, int((end - first.window_start_s) // step))
    return {int(s): first.window_start_s + (int(s) % n) * step for s in seeds}
