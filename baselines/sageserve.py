"""SageServe-style fleet controller (Jaiswal et al., 2025, arXiv 2502.14617): forecast + ILP + reactive.

SageServe controls a multi-region, multi-model fleet at two timescales. Every hour it forecasts each model's
interactive (IW) traffic per region and solves an integer linear program for the instances of every model in
every region: enough capacity for the forecast peak of the coming hour, at the least GPU cost plus a cost
for every instance it has to start (a model load). Between plans, memory-based reactive rules adjust the
fleet, guided by the plan. Non-interactive (NIW) work is deferrable: it fills the valleys, so the plan
provisions its mean rate, not its arrivals.

This module is that controller as a ``scale`` policy of the env's decision interface (Scale/Cluster envs),
so agents can be compared with it on the same scenario (configs/scenarios/sageserve_global_day.yaml). The
deviations from the paper are listed in docs/sageserve.md. The parts:

- ``SeasonalForecaster``: per series, a harmonic regression with the known season (one day): the rate is
  ``c + a cos(w t) + b sin(w t)``, fitted by ridge-regularised least squares (numpy) on the per-interval
  counts seen so far, then evaluated ahead. The paper fits ARIMA on weeks of history; one episode has only
  its own past, and a one-harmonic seasonal fit is identified from a few hours of a day.
- ``plan_instances``: the integer program, solved with scipy's HiGHS-backed ``scipy.optimize.milp``.
- ``SageServeScaler``: the policy. It reads past arrivals per (model, region, tier) from the bound env's
  request table, only those with ``arrival_s <= now`` (``bind_env``, as the planners of baselines/planning.py
  bind theirs), and the pools' model/region/TP/price from the scenario.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from servegym.baselines.policy import BasePolicy, PolicyError, feature, info_section
from servegym.baselines.scaling import choose_actions
from servegym.envs.gym.aux_state import pool_prices
from servegym.envs.scenario import PoliciesConfig, Scenario

_DEFAULTS = PoliciesConfig()
# Unmet forecast demand is allowed (a region's budget may not cover it) at this price per req/s, far above
# any GPU's hourly price, so the program meets the demand whenever the budget allows.
_UNMET_PENALTY = 1e4


class SeasonalForecaster:
    """Arrivals per interval of several series, forecast with one daily harmonic (ridge least squares).

    ``ridge`` shrinks the harmonic's amplitude toward zero (a flat rate at the series mean) while few
    intervals have been seen, so the first plans follow the recent level instead of a wild fit.
    """

    def __init__(self, n_series: int, interval_s: float, period_s: float, ridge: float = 5.0) -> None:
        self.interval_s = float(interval_s)
        self.period_s = float(period_s)
        self.ridge = float(ridge)
        self.t: list[float] = []  # mid-times of the observed intervals
        self.counts: list[np.ndarray] = []
        self.n = int(n_series)

    def observe(self, t_end: float, counts: np.ndarray) -> None:
        self.t.append(float(t_end) - self.interval_s / 2)
        self.counts.append(np.asarray(counts, dtype=np.float64).reshape(self.n))

    def _design(self, t: np.ndarray) -> np.ndarray:
        w = 2 * np.pi / self.period_s
        return np.column_stack([np.ones_like(t), np.cos(w * t), np.sin(w * t)])

    def rates(self, times: np.ndarray) -> np.ndarray:
        """Forecast arrival rates (req/s), shape (len(times), n_series); zeros before any observation."""
        times = np.asarray(times, dtype=np.float64)
        if not self.t:
            return np.zeros((times.size, self.n))
        x = self._design(np.asarray(self.t))
        y = np.stack(self.counts) / self.interval_s
        # ridge on the harmonic terms only; the level is free
        reg = np.diag([0.0, self.ridge, self.ridge])
        coef = np.linalg.solve(x.T @ x + reg + 1e-9 * np.eye(3), x.T @ y)
        return np.maximum(self._design(times) @ coef, 0.0)


@dataclass(frozen=True)
class FleetModel:
    """What the program needs about the pools: model/region index, TP, price, capacity, bounds."""

    model: np.ndarray  # per pool, model index
    region: np.ndarray  # per pool, region index
    tp: np.ndarray
    price: np.ndarray  # per GPU-hour
    capacity: np.ndarray  # req/s one replica sustains within the SLO
    cold_start_s: np.ndarray
    n_min: np.ndarray
    n_max: np.ndarray
    region_gpus: np.ndarray  # per region: GPUs of the fleet this service may hold


def plan_instances(
    fleet: FleetModel,
    current: np.ndarray,
    iw_demand: np.ndarray,
    niw_demand: np.ndarray,
    target_utilization: float,
) -> np.ndarray:
    """Instances per pool from the integer program, solved by HiGHS (scipy.optimize.milp).

    Variables: ``n_p`` (integer, within the pool's bounds), ``y_p >= n_p - current_p`` (instances started,
    each paying a model load), ``u_{m,r}`` and ``v_m`` (unmet demand, heavily penalised so the program stays
    feasible when a region's budget cannot cover its forecast). Minimise
    ``sum_p price_p tp_p n_p + sum_p price_p tp_p cold_start_p / 3600 y_p + penalty (sum u + sum v)``
    subject to: the IW forecast of model m in region r is served in region r
    (``sum_{p in (m,r)} cap_p rho n_p + u_{m,r} >= iw_{m,r}``); every model's IW plus its NIW mean rate is
    served somewhere (``sum_{p in m} cap_p rho n_p + v_m >= sum_r iw_{m,r} + niw_m``; NIW moves between
    regions); each region's GPUs bound its instances of all models (``sum_{p in r} tp_p n_p <= G_r``: an
    instance given to one model is taken from another, or from spot).

    ``iw_demand`` has shape (models, regions) in req/s, ``niw_demand`` shape (models,).
    """
    # imported here: scipy.optimize takes ~0.4 s to import, paid only by a run that plans
    from scipy.optimize import Bounds, LinearConstraint, milp

    n_pool = fleet.model.size
    n_model, n_region = iw_demand.shape
    n_u = n_model * n_region
    n_var = 2 * n_pool + n_u + n_model
    eff = fleet.capacity * float(target_utilization)
    gpu_cost = fleet.price * fleet.tp
    c = np.concatenate(
        [gpu_cost, gpu_cost * fleet.cold_start_s / 3600.0, np.full(n_u + n_model, _UNMET_PENALTY)]
    )
    rows: list[np.ndarray] = []
    lo: list[float] = []
    hi: list[float] = []
    for m in range(n_model):
        for r in range(n_region):
            row = np.zeros(n_var)
            sel = (fleet.model == m) & (fleet.region == r)
            row[:n_pool][sel] = eff[sel]
            row[2 * n_pool + m * n_region + r] = 1.0
            rows.append(row)
            lo.append(float(iw_demand[m, r]))
            hi.append(np.inf)
        row = np.zeros(n_var)
        sel = fleet.model == m
        row[:n_pool][sel] = eff[sel]
        row[2 * n_pool + n_u + m] = 1.0
        rows.append(row)
        lo.append(float(iw_demand[m].sum() + niw_demand[m]))
        hi.append(np.inf)
    for r in range(n_region):
        row = np.zeros(n_var)
        sel = fleet.region == r
        row[:n_pool][sel] = fleet.tp[sel]
        rows.append(row)
        lo.append(-np.inf)
        hi.append(float(fleet.region_gpus[r]))
    for p in range(n_pool):  # y_p - n_p >= -current_p
        row = np.zeros(n_var)
        row[p], row[n_pool + p] = -1.0, 1.0
        rows.append(row)
        lo.append(-float(current[p]))
        hi.append(np.inf)
    lb = np.concatenate([fleet.n_min, np.zeros(n_pool + n_u + n_model)]).astype(np.float64)
    ub = np.concatenate([fleet.n_max, fleet.n_max, np.full(n_u + n_model, np.inf)]).astype(np.float64)
    integrality = np.concatenate([np.ones(2 * n_pool), np.zeros(n_u + n_model)])
    res = milp(
        c,
        constraints=LinearConstraint(np.array(rows), np.array(lo), np.array(hi)),
        integrality=integrality,
        bounds=Bounds(lb, ub),
    )
    if res.x is None:  # cannot happen with the slack variables unless the bounds themselves conflict
        raise PolicyError(f"sageserve: the integer program found no solution ({res.message})")
    return np.rint(res.x[:n_pool]).astype(np.int64)


def fleet_from_scenario(
    sc: Scenario,
    capacity: float | Sequence[float] | None,
    region_gpus: Mapping[str, int] | None = None,
) -> tuple[FleetModel, list[str], list[str]]:
    """The pools' program parameters, and the model and region names (index order).

    ``region_gpus`` defaults to the GPUs of each region's initial allocation: the fleet the static
    deployment holds, which SageServe redistributes between models (and donates to spot when idle).
    """
    models = sorted({p.model for p in sc.pools})
    regions = sorted({p.region for p in sc.pools})
    n = len(sc.pools)
    if capacity is None:
        raise PolicyError("sageserve needs replica_capacity_rps (policies.replica_capacity_rps)")
    cap = np.broadcast_to(np.asarray(capacity, dtype=np.float64), (n,)).copy()
    if np.isnan(cap).any():
        raise PolicyError("sageserve: replica_capacity_rps misses some pools")
    tp = np.array([p.tp for p in sc.pools], dtype=np.float64)
    init_gpus = {r: 0 for r in regions}
    for p in sc.pools:
        init_gpus[p.region] += p.initial_replicas * p.tp
    budget = dict(init_gpus)
    if region_gpus:
        unknown = sorted(set(region_gpus) - set(regions))
        if unknown:
            raise PolicyError(f"sageserve: region_gpus names unknown regions {unknown}; regions: {regions}")
        budget.update({k: int(v) for k, v in region_gpus.items()})
    fleet = FleetModel(
        model=np.array([models.index(p.model) for p in sc.pools]),
        region=np.array([regions.index(p.region) for p in sc.pools]),
        tp=tp,
        price=pool_prices(sc),  # the scenario's price, else the GPU's default (as the env bills)
        capacity=cap,
        cold_start_s=np.array([p.cold_start_s for p in sc.pools], dtype=np.float64),
        n_min=np.array([p.min_replicas for p in sc.pools], dtype=np.float64),
        n_max=np.array([p.max_replicas for p in sc.pools], dtype=np.float64),
        region_gpus=np.array([budget[r] for r in regions], dtype=np.float64),
    )
    return fleet, models, regions


def tenant_series(sc: Scenario, models: list[str], regions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per tenant: its IW series index (model * regions + region) or -1, and its model index."""
    first = sc.pools[0]
    series = np.full(len(sc.tenants), -1, dtype=np.int64)
    model = np.zeros(len(sc.tenants), dtype=np.int64)
    for i, t in enumerate(sc.tenants):
        m = models.index(t.model or first.model)
        model[i] = m
        if t.tier == "interactive":
            series[i] = m * len(regions) + regions.index(t.region or first.region)
    return series, model


class SageServeScaler(BasePolicy):
    """Hourly forecast + integer program per (model, region), with reactive adjustments between plans.

    At every control tick: count the last interval's arrivals per IW series and per model's NIW; every
    ``plan_interval_s`` re-plan (forecast the IW peak over the next plan interval plus the cold start,
    NIW at its mean rate so far, solve ``plan_instances``). Each pool then moves toward its plan; between
    plans a pool whose mean KV utilization exceeds ``reactive_up`` gets one replica over the plan (up to its
    max and its region's GPUs), and one below ``reactive_down`` sheds one, never under the plan (the plan
    guides the reactive rule, SageServe's "reactive scaling, proactive guidance").
    """

    decisions = ("scale",)
    env_id = "servegym/Scale-v0"

    def __init__(
        self,
        replica_capacity_rps: float | Sequence[float] | None = None,
        control_interval_s: float = float(Scenario.model_fields["control_interval_s"].default),
        plan_interval_s: float = 3600.0,
        season_s: float = 86400.0,
        target_utilization: float = _DEFAULTS.target_utilization,
        reactive_up: float | None = None,
        reactive_down: float | None = None,
        region_gpus: Mapping[str, int] | None = None,
        ridge: float = 5.0,
    ) -> None:
        super().__init__()
        self.name = "sageserve"
        self.capacity = replica_capacity_rps
        self.interval_s = float(control_interval_s)
        self.plan_s = float(plan_interval_s)
        self.season_s = float(season_s)
        self.target = float(target_utilization)
        self.up = reactive_up
        self.down = reactive_down
        self.region_gpus = dict(region_gpus) if region_gpus else None
        self.ridge = float(ridge)
        self.env: Any = None
        self.plans: list[tuple[float, np.ndarray]] = []  # (time, plan) of the last episode: diagnostics

    def bind_env(self, env: Any) -> None:
        """The env whose simulator's past arrivals the forecast counts; called before each episode."""
        self.env = getattr(env, "unwrapped", env)

    def init_state(self, st: dict[str, Any]) -> None:
        if st["env"] != 0:  # the counts come from one bound simulator, so one env only
            raise PolicyError(
                "policy 'sageserve' reads the bound env's simulator (bind_env) and drives one env; "
                "run it on a single env, not a vector env"
            )
        st["ready"] = False
        self.plans = []

    def _setup(self, st: dict[str, Any]) -> None:
        sim = getattr(self.env, "sim", None)
        if sim is None:
            raise PolicyError("policy 'sageserve' reads past arrivals from the env: call bind_env(env) first")
        sc = sim.scenario
        fleet, models, regions = fleet_from_scenario(sc, self.capacity, self.region_gpus)
        series, tmodel = tenant_series(sc, models, regions)
        req = sim.requests
        tix = req.tenant.astype(np.intp)
        st.update(
            ready=True,
            sim=sim,
            fleet=fleet,
            n_model=len(models),
            n_region=len(regions),
            arrival=req.arrival_s,
            series=series[tix],
            niw_model=np.where(series[tix] < 0, tmodel[tix], -1),
            cursor=0,
            forecaster=SeasonalForecaster(
                len(models) * len(regions), self.interval_s, self.season_s, self.ridge
            ),
            niw_total=np.zeros(len(models)),
            plan=None,
            next_plan=self.plan_s,
        )

    def _count(self, st: dict[str, Any], now: float) -> tuple[np.ndarray, np.ndarray]:
        """Arrivals since the last tick, up to ``now`` (never a later one): per IW series, per model's NIW."""
        lo = st["cursor"]
        hi = int(np.searchsorted(st["arrival"], now, side="right"))
        st["cursor"] = hi
        ser = st["series"][lo:hi]
        iw = np.bincount(ser[ser >= 0], minlength=st["n_model"] * st["n_region"]).astype(np.float64)
        niw_m = st["niw_model"][lo:hi]
        niw = np.bincount(niw_m[niw_m >= 0], minlength=st["n_model"]).astype(np.float64)
        return iw, niw

    def decide(self, obs: Any, info: Mapping[str, Any], st: dict[str, Any]) -> np.ndarray:
        self.check_decision(info)
        sec = info_section(self.name, info, "scale")
        if not st["ready"]:
            self._setup(st)
        fleet: FleetModel = st["fleet"]
        now = float(st["sim"].now)
        iw, niw = self._count(st, now)
        st["forecaster"].observe(now, iw)
        st["niw_total"] += niw
        n_pool_env = feature(self.name, sec, "n_up", "scale").shape[0]
        n_pool = fleet.model.size
        n_up = feature(self.name, sec, "n_up", "scale").astype(np.int64)[:n_pool]
        util = feature(self.name, sec, "kv_util", "scale").astype(np.float64)[:n_pool]
        if st["plan"] is None or now + 1e-9 >= st["next_plan"]:
            st["plan"] = self._plan(st, now, n_up)
            st["next_plan"] = now + self.plan_s
            self.plans.append((now, st["plan"].copy()))
        target = self._reactive(sec, st["plan"], n_up, util, fleet)
        deltas = np.zeros(n_pool_env, dtype=np.int64)
        deltas[:n_pool] = target - n_up
        return choose_actions(self.name, deltas, info)

    def _plan(self, st: dict[str, Any], now: float, n_up: np.ndarray) -> np.ndarray:
        fleet: FleetModel = st["fleet"]
        lead = float(fleet.cold_start_s.max())
        ahead = now + lead + np.arange(0.0, self.plan_s + self.interval_s, self.interval_s)
        iw = st["forecaster"].rates(ahead).max(axis=0).reshape(st["n_model"], st["n_region"])
        niw = st["niw_total"] / max(now, self.interval_s)
        return plan_instances(fleet, n_up, iw, niw, self.target)

    def _reactive(
        self, sec: Mapping[str, Any], plan: np.ndarray, n_up: np.ndarray, util: np.ndarray, fleet: FleetModel
    ) -> np.ndarray:
        up = self.up if self.up is not None else float(sec.get("reactive_up", _DEFAULTS.reactive_up))
        down = (
            self.down if self.down is not None else float(sec.get("reactive_down", _DEFAULTS.reactive_down))
        )
        target = plan.copy()
        gpus = np.zeros(fleet.region_gpus.size)
        np.add.at(gpus, fleet.region, fleet.tp * np.maximum(plan, n_up))
        for p in range(plan.size):
            if n_up[p] > plan[p]:  # above the plan by earlier reactive scale-ups: keep, or shed one
                target[p] = n_up[p] - 1 if util[p] < down else n_up[p]
            if util[p] > up and n_up[p] >= plan[p] and n_up[p] < fleet.n_max[p]:
                r = fleet.region[p]
                if gpus[r] + fleet.tp[p] <= fleet.region_gpus[r]:
                    target[p] = n_up[p] + 1
                    gpus[r] += fleet.tp[p]
        return np.clip(target, fleet.n_min, fleet.n_max).astype(np.int64)


def fleet_accounting(
    metrics: Mapping[str, Any], sc: Scenario, region_gpus: Mapping[str, int] | None = None
) -> dict:
    """GPU-hours billed per region and the GPU-hours of each region's fleet left idle, i.e. donated to spot.

    The fleet per region is ``region_gpus`` (default: the initial allocation's GPUs, as in
    ``fleet_from_scenario``). Donation is accounted, not simulated: no spot tenant runs on those GPUs. A
    policy that bills more than its region's fleet has a negative donation (it borrowed capacity).
    """
    fleet, _, regions = fleet_from_scenario(sc, 1.0, region_gpus)
    hours = float(metrics["now_s"]) / 3600.0
    out: dict[str, float] = {}
    for i, r in enumerate(regions):
        billed = sum(float(metrics[f"cost/gpu_hours/{p.name}"]) for p in sc.pools if p.region == r)
        out[f"gpu_hours/{r}"] = billed
        out[f"donated_gpu_hours/{r}"] = float(fleet.region_gpus[i]) * hours - billed
    out["donated_gpu_hours"] = sum(v for k, v in out.items() if k.startswith("donated_gpu_hours/"))
    return out
