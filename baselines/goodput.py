"""Goodput sweep: the highest request rate a policy serves within its SLOs.

DistServe (Zhong et al., OSDI'24) defines goodput as the maximum request rate at which at least 90% of the
requests meet their SLO. We sweep the offered rate (every synthetic source's ``rate_per_s`` times a factor,
every trace's ``time_scale`` times the same factor), measure SLO attainment at each rate (mean over seeds),
and report the rate where the attainment curve first falls below the target, interpolated linearly between
the two bracketing rates. Per GPU, that rate is divided by the mean number of billed GPUs at it (interpolated
the same way). "First" makes the figure conservative when noise makes a curve non-monotone: it is the
highest rate below which attainment never dips under the target on the swept grid.

Sarathi-Serve (Agrawal et al., OSDI'24) defines capacity as the highest QPS with P99 TBT <= its SLO and a
median scheduling delay <= 2 s. Here TBT is the per-request TPOT (the simulator times whole decode runs,
not single tokens; the P99 of per-request means is below the P99 of single gaps). The scheduling delay is
the time from arrival to the start of a request's first prefill chunk; the simulator does not record that
instant, so we use TTFT minus the time its prompt's prefill would take alone on the replica that served it
(perf model, chunked by the pool's token budget, prefix-cache hits excluded) minus the network latency both
ways. That is an upper bound on the waiting time: it also counts the slowdown of the prefill by work
batched with it. A request dropped before its first token counts as an infinite delay. Each limit is
crossed where its metric first exceeds it (interpolated); capacity is the lower of the two crossings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servegym.baselines.episodes import EpisodeSpec, scenario_overrides
from servegym.baselines.harness import default_workers, run_specs
from servegym.envs.metrics import compute_metrics
from servegym.envs.scenario import Scenario, load_scenario, scaled_sources
from servegym.envs.sim.simulator import Simulator
from servegym.envs.workloads.scenario_requests import requests_for_scenario

# DistServe's attainment target and Sarathi-Serve's scheduling-delay limit.
ATTAINMENT_TARGET = 0.9
SARATHI_DELAY_LIMIT_S = 2.0


@dataclass(frozen=True)
class Crossing:
    """Where a swept metric crosses its limit.

    ``status``: "interpolated" (between two swept rates), "below_range" (already past the limit at the
    lowest rate: ``rate`` is NaN) or "above_range" (never past it: ``rate`` is the highest swept rate, a
    lower bound).
    """

    rate: float
    status: str


def goodput_crossing(
    rates: Sequence[float], attainment: Sequence[float], target: float = ATTAINMENT_TARGET
) -> Crossing:
    """The highest rate with attainment >= ``target`` before it first drops below, interpolated linearly."""
    return _first_crossing(rates, [-a for a in attainment], -target)


def limit_crossing(rates: Sequence[float], values: Sequence[float], limit: float) -> Crossing:
    """The highest rate with ``values`` <= ``limit`` before they first exceed it, interpolated linearly."""
    return _first_crossing(rates, values, limit)


def _first_crossing(rates: Sequence[float], values: Sequence[float], limit: float) -> Crossing:
    x = np.asarray(rates, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"crossing: need equal-length 1-D rates and values, got {x.shape} and {y.shape}")
    if np.any(np.diff(x) <= 0):
        raise ValueError("crossing: rates must be strictly increasing")
    # NaN (nothing judged) counts as past the limit: no evidence the SLO holds there.
    over = ~(y <= limit)
    if not over.any():
        return Crossing(float(x[-1]), "above_range")
    i = int(np.argmax(over))
    if i == 0:
        return Crossing(float("nan"), "below_range")
    y0, y1 = y[i - 1], y[i]
    if not np.isfinite(y1):
        return Crossing(float(x[i - 1]), "interpolated")
    w = (limit - y0) / (y1 - y0) if y1 != y0 else 0.0
    return Crossing(float(x[i - 1] + w * (x[i] - x[i - 1])), "interpolated")


def sarathi_capacity(
    rates: Sequence[float],
    tbt_p99: Sequence[float],
    sched_delay_p50: Sequence[float],
    tbt_slo_s: float,
    delay_limit_s: float = SARATHI_DELAY_LIMIT_S,
) -> Crossing:
    """The lower of the P99-TBT and the median-scheduling-delay crossings (TBT ignored without an SLO)."""
    crossings = [limit_crossing(rates, sched_delay_p50, delay_limit_s)]
    if math.isfinite(tbt_slo_s):
        crossings.append(limit_crossing(rates, tbt_p99, tbt_slo_s))
    below = [c for c in crossings if c.status == "below_range"]
    if below:
        return below[0]
    return min(crossings, key=lambda c: c.rate)


def interpolate_at(rates: Sequence[float], values: Sequence[float], rate: float) -> float:
    if not math.isfinite(rate):
        return float("nan")
    return float(np.interp(rate, np.asarray(rates, float), np.asarray(values, float)))


# ---------------------------------------------------------------- scaling the offered load


def nominal_rate(scenario: Scenario) -> float:
    """The scenario's offered rate (req/s) at factor 1: synthetic means plus each trace's measured rate."""
    rate = 0.0
    traces = False
    for src in scenario.sources:
        if src.kind == "synthetic":
            rate += src.arrival.rate_per_s
        else:
            traces = True
    if traces:
        only = scenario.model_copy(update={"sources": [s for s in scenario.sources if s.kind == "trace"]})
        reqs = requests_for_scenario(only, np.random.default_rng(0))
        rate += len(reqs) / scenario.horizon_s
    return rate


def tbt_slo(scenario: Scenario) -> float:
    """The strictest TPOT SLO among the interactive tenants (the TBT limit of the Sarathi capacity)."""
    slos = [t.tpot_slo_s for t in scenario.tenants if t.tier == "interactive" and t.tpot_slo_s is not None]
    return float(min(slos)) if slos else float("nan")


# ---------------------------------------------------------------- one point of the sweep


def scheduling_delays(sim: Any) -> np.ndarray:
    """Per request with a first token: TTFT - alone prefill - network both ways; +inf if dropped before it
    (``Simulator.scheduling_delays``)."""
    return sim.scheduling_delays()


def sweep_episode(spec: EpisodeSpec) -> dict[str, Any]:
    """Episode runner of the sweep: the harness metrics plus the median scheduling delay."""

    sim = Simulator(spec.scenario, seed=spec.seed, overrides=scenario_overrides(spec))
    m = compute_metrics(sim.run())
    d = scheduling_delays(sim)
    m["sched_delay_s/p50"] = float(np.median(d)) if d.size else float("nan")
    return m


# ---------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    policy: str
    scenario: str
    factors: list[float]
    rates: list[float]  # offered req/s at each factor
    attainment: list[float]  # mean over seeds
    gpus: list[float]  # mean billed GPUs
    tpot_p99: list[float]
    sched_delay_p50: list[float]
    goodput: Crossing
    goodput_per_gpu: float
    sarathi: Crossing
    tbt_slo_s: float
    target: float = ATTAINMENT_TARGET
    records: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "scenario": self.scenario,
            "goodput_req_per_s": self.goodput.rate,
            "goodput_status": self.goodput.status,
            "goodput_req_per_s_per_gpu": self.goodput_per_gpu,
            "sarathi_capacity_req_per_s": self.sarathi.rate,
            "sarathi_status": self.sarathi.status,
            "tbt_slo_s": self.tbt_slo_s,
        }


def goodput_sweep(
    policy: str,
    scenario: str,
    factors: Sequence[float],
    seeds: Sequence[int] = (0,),
    overrides: Mapping[str, Any] | None = None,
    workers: int | None = None,
    progress: bool = False,
    target: float = ATTAINMENT_TARGET,
    tbt_slo_s: float | None = None,
) -> SweepResult:
    """Sweep the offered rate by ``factors`` (ascending) for one built-in policy; see the module docstring."""
    return goodput_sweeps(
        [policy], scenario, factors, seeds, overrides, workers, progress, target, tbt_slo_s
    )[0]


def goodput_sweeps(
    policies: Sequence[str],
    scenario: str,
    factors: Sequence[float],
    seeds: Sequence[int] = (0,),
    overrides: Mapping[str, Any] | None = None,
    workers: int | None = None,
    progress: bool = False,
    target: float = ATTAINMENT_TARGET,
    tbt_slo_s: float | None = None,
) -> list[SweepResult]:
    """``goodput_sweep`` for several policies over one process pool."""
    factors = [float(f) for f in factors]
    if sorted(set(factors)) != factors:
        raise ValueError(f"factors must be strictly increasing, got {factors}")
    base = load_scenario(scenario, dict(overrides or {}))
    rate0 = nominal_rate(base)
    slo = tbt_slo(base) if tbt_slo_s is None else float(tbt_slo_s)
    specs, spec_factor = [], []
    for pol in policies:
        for f in factors:
            over = {**dict(overrides or {}), "sources": scaled_sources(base, f)}
            for s in seeds:
                specs.append(EpisodeSpec(pol, str(scenario), int(s), over))
                spec_factor.append(f)
    done = run_specs(specs, sweep_episode, default_workers() if workers is None else workers, progress)
    out = []
    for pol in policies:
        rows: dict[float, list[dict[str, Any]]] = {f: [] for f in factors}
        records = []
        for (spec, m, _), f in zip(done, spec_factor, strict=True):
            if spec.policy != pol:
                continue
            rows[f].append(m)
            records.append({"policy": pol, "factor": f, "rate_per_s": f * rate0, "seed": spec.seed, **m})
        att = [_mean(rows[f], "slo_attainment") for f in factors]
        gpus = [_mean(rows[f], "gpus/mean_billed") for f in factors]
        tpot = [_mean(rows[f], "tpot_s/p99") for f in factors]
        delay = [_mean(rows[f], "sched_delay_s/p50") for f in factors]
        rates = [f * rate0 for f in factors]
        g = goodput_crossing(rates, att, target)
        per_gpu = g.rate / interpolate_at(rates, gpus, g.rate) if math.isfinite(g.rate) else float("nan")
        sarathi = sarathi_capacity(rates, tpot, delay, slo)
        out.append(
            SweepResult(
                pol,
                str(scenario),
                factors,
                rates,
                att,
                gpus,
                tpot,
                delay,
                g,
                per_gpu,
                sarathi,
                slo,
                target,
                records,
            )
        )
    return out


def _mean(ms: Sequence[Mapping[str, Any]], key: str) -> float:
    vals = [float(m[key]) for m in ms]
    # an infinite median delay (most requests dropped) stays infinite; NaN means nothing measured
    finite = [v for v in vals if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
