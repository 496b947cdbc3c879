"""Scaling baselines: how many replicas each pool should add or remove at a control tick.

The deltas come from the core's own rules in ``servegym.envs.sim.policies`` (``reactive_scale_delta``,
``holt_update``, ``holt_forecast``, ``demand_replicas``, ``sized_scale_delta``), applied to the per-pool
features of ``info["scale"]``. The action is one index per pool into ``info["scale_deltas"]`` (the replica
delta each action index stands for): the allowed index whose delta is nearest the rule's, preferring the
smaller change on a tie. The policy returns an int64 array of shape (pools,).

``target_util`` and ``forecast`` size pools from the arrival rate against a per-replica capacity
(``replica_capacity_rps``: one number, or one per pool), as the core does with the scenario's
``policies.replica_capacity_rps``. They read ``arrivals_last_interval`` (arrivals for each pool's model in
the last control interval, the core's ``PF_ARR_LAST``); given any other shape (e.g. per tier) they use its
sum for every pool, which is the same thing when all pools serve one model. Pools serve one model unless
``info["scale"]["model"]`` says otherwise. Pools of one model split its demand by
``routed_last_interval`` (requests routed to each pool in the last interval, the core's
``PF_ROUTED_LAST``) when the env gives it, else by the capacity they have up (the core's fallback). They need the scenario's control interval
(``control_interval_s``, default the scenario default of 60 s). The forecast rule keeps per-episode state
(Holt level and trend per pool), updated once per decision as the core updates it once per control tick;
both keep the time of each pool's last scale-up for the scale-down cooldown.

``reactive_replace`` is the reactive rule plus the replacement of every replica of a pool lost to a failure
or a spot reclaim warning during the last interval (``info["scale"]["lost_last_interval"]``). ``spot_mix``
sizes pools as ``forecast`` does, but splits the demand by capacity class (``info["scale"]["spot"]``): the
on-demand pools of a model cover its interactive tier's share of the forecast, the spot pools the rest
(``policies.spot_mix_rate``); it reads the interactive tier's arrivals from per-tier
``arrivals_last_interval`` or from ``interactive_last_interval``.

Reactive thresholds: an explicit constructor argument wins, else ``info["scale"]["reactive_up"/"_down"]``
(the scenario's values, when the env gives them), else SageServe's 0.5 / 0.25.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from servegym.baselines.policy import BasePolicy, PolicyError, feature, info_section
from servegym.envs.scenario import PoliciesConfig, Scenario
from servegym.envs.sim.policies import (
    SCALE_FORECAST,
    SCALE_REACTIVE,
    SCALE_REPLACE,
    SCALE_SPOT_MIX,
    SCALE_STATIC,
    SCALING_IDS,
    demand_replicas,
    holt_forecast,
    holt_update,
    pool_share,
    reactive_scale_delta,
    replace_scale_delta,
    sized_scale_delta,
    spot_mix_rate,
)

_DEFAULTS = PoliciesConfig()
_DEFAULT_INTERVAL_S = float(Scenario.model_fields["control_interval_s"].default)


class ScalingRule(BasePolicy):
    """Per-pool replica deltas under rule ``rule``; parameters default to the scenario defaults."""

    decisions = ("scale",)

    def __init__(
        self,
        rule: str,
        reactive_up: float | None = None,
        reactive_down: float | None = None,
        replica_capacity_rps: float | Sequence[float] | None = None,
        target_utilization: float = _DEFAULTS.target_utilization,
        forecast_alpha: float = _DEFAULTS.forecast_alpha,
        forecast_beta: float = _DEFAULTS.forecast_beta,
        scale_down_cooldown_s: float = _DEFAULTS.scale_down_cooldown_s,
        control_interval_s: float = _DEFAULT_INTERVAL_S,
    ) -> None:
        super().__init__()
        if rule not in SCALING_IDS:
            raise PolicyError(f"unknown scaling rule {rule!r}; known: {sorted(SCALING_IDS)}")
        self.name = rule
        self.rule_id = SCALING_IDS[rule]
        if self.rule_id not in (SCALE_STATIC, SCALE_REACTIVE, SCALE_REPLACE) and replica_capacity_rps is None:
            raise PolicyError(
                f"policy {rule!r} needs replica_capacity_rps (requests/s one replica sustains within the SLO)"
            )
        self.up = None if reactive_up is None else float(reactive_up)
        self.down = None if reactive_down is None else float(reactive_down)
        self.capacity = (
            None if replica_capacity_rps is None else np.asarray(replica_capacity_rps, dtype=float)
        )
        self.target = float(target_utilization)
        self.alpha = float(forecast_alpha)
        self.beta = float(forecast_beta)
        self.cooldown_s = float(scale_down_cooldown_s)
        self.interval_s = float(control_interval_s)

    def init_state(self, st: dict[str, Any]) -> None:
        st["t"] = 0.0  # time of the current tick: the first tick is one interval into the episode
        st["level"] = None
        st["trend"] = None
        st["last_up"] = None

    def decide(self, obs: Any, info: Mapping[str, Any], st: dict[str, Any]) -> np.ndarray:
        self.check_decision(info)
        sec = info_section(self.name, info, "scale")
        deltas = self.rule_deltas(sec, st)
        return choose_actions(self.name, deltas, info)

    def rule_deltas(self, sec: Mapping[str, Any], st: dict[str, Any]) -> np.ndarray:
        """The replica delta per pool this rule asks for (before mapping to action indices)."""
        name = self.name
        util = feature(name, sec, "kv_util", "scale").astype(np.float64)
        n_pool = util.shape[0]
        st["t"] += self.interval_s
        if self.rule_id == SCALE_STATIC:
            return np.zeros(n_pool, dtype=np.int64)
        n_up = feature(name, sec, "n_up", "scale").astype(np.int64)
        n_min = feature(name, sec, "min", "scale").astype(np.int64)
        n_max = feature(name, sec, "max", "scale").astype(np.int64)
        out = np.zeros(n_pool, dtype=np.int64)
        if self.rule_id in (SCALE_REACTIVE, SCALE_REPLACE):
            up = self.up if self.up is not None else float(sec.get("reactive_up", _DEFAULTS.reactive_up))
            down = self.down
            if down is None:
                down = float(sec.get("reactive_down", _DEFAULTS.reactive_down))
            for p in range(n_pool):
                out[p] = reactive_scale_delta(
                    float(util[p]), up, down, int(n_up[p]), int(n_min[p]), int(n_max[p])
                )
            if self.rule_id == SCALE_REPLACE:
                lost = np.asarray(sec.get("lost_last_interval", np.zeros(n_pool)), dtype=np.int64)
                for p in range(n_pool):
                    out[p] = replace_scale_delta(int(out[p]), int(lost[p]), int(n_up[p]), int(n_max[p]))
            return out
        queue = feature(name, sec, "queue_len", "scale").astype(np.int64)
        arrivals = feature(name, sec, "arrivals_last_interval", "scale").astype(np.float64)
        interactive = None
        if self.rule_id == SCALE_SPOT_MIX:
            if "interactive_last_interval" in sec:
                interactive = np.asarray(sec["interactive_last_interval"], dtype=np.float64)
            elif arrivals.shape == (2,):  # the env's per-tier counts: interactive first
                interactive = np.full(n_pool, arrivals[0])
            else:
                raise PolicyError(
                    f"policy {name!r}: needs the interactive tier's arrivals (per-tier "
                    "arrivals_last_interval or interactive_last_interval)"
                )
        if arrivals.shape != (n_pool,):
            arrivals = np.full(n_pool, arrivals.sum())
        cap = np.broadcast_to(self.capacity, (n_pool,)) if self.capacity.ndim == 0 else self.capacity
        if cap.shape != (n_pool,):
            raise PolicyError(f"policy {name!r}: {cap.shape[0]} capacities for {n_pool} pools")
        model = np.asarray(sec.get("model", np.zeros(n_pool, dtype=np.int64)))
        if st["last_up"] is None:
            st["last_up"] = np.full(n_pool, -np.inf)
            st["level"] = np.full(n_pool, np.nan)
            st["trend"] = np.zeros(n_pool)
        if self.rule_id in (SCALE_FORECAST, SCALE_SPOT_MIX):
            cold = feature(name, sec, "cold_start_s", "scale").astype(np.float64)
        spot = np.asarray(sec.get("spot", np.zeros(n_pool, dtype=np.int64))).astype(bool)
        cap_up = n_up * cap
        routed = np.asarray(sec.get("routed_last_interval", np.zeros(n_pool)), dtype=np.float64)
        for p in range(n_pool):
            if self.rule_id in (SCALE_FORECAST, SCALE_SPOT_MIX):
                level, trend = holt_update(
                    float(st["level"][p]), float(st["trend"][p]), float(arrivals[p]), self.alpha, self.beta
                )
                st["level"][p], st["trend"][p] = level, trend
                count = holt_forecast(level, trend, 1.0 + float(cold[p]) / self.interval_s)
            else:
                count = float(arrivals[p])
            same = model == model[p]
            if self.rule_id == SCALE_SPOT_MIX:
                total = count / self.interval_s
                inter = total * interactive[p] / arrivals[p] if arrivals[p] > 0 else 0.0
                rate = spot_mix_rate(
                    bool(spot[p]),
                    inter,
                    total,
                    int(np.count_nonzero(same & (spot == spot[p]))),
                    bool(np.any(same & (spot != spot[p]))),
                )
                desired = demand_replicas(
                    rate, 1.0, int(queue[p]), self.interval_s, float(cap[p]), self.target
                )
            else:
                share = pool_share(
                    float(routed[p]), float(routed[same].sum()), float(cap_up[p]), float(cap_up[same].sum())
                )
                desired = demand_replicas(
                    count / self.interval_s, share, int(queue[p]), self.interval_s, float(cap[p]), self.target
                )
            cooling = st["t"] - st["last_up"][p] < self.cooldown_s
            d = sized_scale_delta(desired, int(n_up[p]), int(n_min[p]), int(n_max[p]), bool(cooling))
            if d > 0:
                st["last_up"][p] = st["t"]
            out[p] = d
        return out


def delta_table(policy: str, info: Mapping[str, Any]) -> np.ndarray:
    """``info["scale_deltas"]`` as an array: entry a is the replica delta of action index a."""
    try:
        raw = info["scale_deltas"]
    except KeyError:
        raise PolicyError(f"policy {policy!r}: info has no 'scale_deltas'") from None
    if isinstance(raw, Mapping):
        table = np.zeros(max(int(k) for k in raw) + 1, dtype=np.int64)
        for k, v in raw.items():
            table[int(k)] = int(v)
        return table
    return np.asarray(raw, dtype=np.int64).ravel()


def choose_actions(policy: str, deltas: np.ndarray, info: Mapping[str, Any]) -> np.ndarray:
    """Per pool, the allowed action index whose delta is nearest ``deltas[p]`` (smaller change on a tie)."""
    table = delta_table(policy, info)
    n_pool, n_act = deltas.shape[0], table.shape[0]
    mask = info.get("action_mask")
    if mask is None:
        allowed = np.ones((n_pool, n_act), dtype=bool)
    else:
        m = np.asarray(mask, dtype=bool)
        if m.size == n_pool * n_act:
            allowed = m.reshape(n_pool, n_act)
        elif m.size == n_act:
            allowed = np.broadcast_to(m, (n_pool, n_act))
        else:
            raise PolicyError(
                f"policy {policy!r}: scale action_mask has {m.size} entries; expected {n_act} or "
                f"{n_pool} x {n_act}"
            )
    out = np.zeros(n_pool, dtype=np.int64)
    for p in range(n_pool):
        idx = np.flatnonzero(allowed[p])
        if idx.size == 0:
            raise PolicyError(f"policy {policy!r}: action_mask allows no scaling action for pool {p}")
        # lexicographic: distance to the wanted delta, then size of the change, then index
        key = np.abs(table[idx] - deltas[p]) * (2 * np.abs(table).max() + 2) + np.abs(table[idx])
        out[p] = idx[int(np.argmin(key))]
    return out
