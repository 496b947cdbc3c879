"""Turn a scenario's workload sources into one request table (config -> workload)."""

from __future__ import annotations

import numpy as np

from envs.scenario import LengthSpec as LengthConfig
from envs.scenario import Scenario, ScenarioError, SyntheticSource, TraceSource
from envs.workloads.requests import RequestTable
from envs.workloads.synthetic import ArrivalSpec, DiurnalSpec, LengthSpec, generate_tenant_requests


def length_spec(cfg: LengthConfig) -> LengthSpec:
    if cfg.dist == "empirical":
        return LengthSpec(
            dist="empirical",
            table=cfg.table,
            joint=cfg.joint,
            prompt_min=cfg.prompt_min,
            prompt_max=cfg.prompt_max,
            output_min=cfg.output_min,
            output_max=cfg.output_max,
        )
    return LengthSpec(
        dist="lognormal",
        prompt_mean=cfg.prompt_mean,
        prompt_cv=cfg.prompt_cv,
        output_mean=cfg.output_mean,
        output_cv=cfg.output_cv,
        prompt_min=cfg.prompt_min,
        prompt_max=cfg.prompt_max,
        output_min=cfg.output_min,
        output_max=cfg.output_max,
    )


def _synthetic(src: SyntheticSource, tenant: int, horizon_s: float, rng: np.random.Generator) -> RequestTable:
    a = src.arrival
    diurnal = None
    if a.diurnal is not None:
        diurnal = DiurnalSpec(a.diurnal.period_s, a.diurnal.peak_to_trough, a.diurnal.peak_time_s)
    arrival = ArrivalSpec(a.process, a.rate_per_s, a.cv, diurnal)
    return generate_tenant_requests(rng, tenant, horizon_s, arrival, length_spec(src.lengths))


def _trace(src: TraceSource, tenants: dict[str, int]) -> RequestTable:
    from envs.data import resolve_data_path
    from envs.workloads import traces

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
                tables.append(_synthetic(src, tenants[src.tenant], scenario.horizon_s, rng))
            else:
                tables.append(_trace(src, tenants))
        except ValueError as e:
            if isinstance(e, ScenarioError):
                raise
            raise ScenarioError(f"scenario {scenario.name!r}: sources.{i}: {e}") from e
    table = RequestTable.concat_sorted(tables) if len(tables) > 1 else tables[0]
    keep = int(np.searchsorted(table.arrival_s, scenario.horizon_s, side="left"))
    return table.slice_rows(0, keep) if keep < len(table) else table
