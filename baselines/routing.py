"""Routing baselines: which replica a new request goes to.

Each rule is the core's own scoring function (``route_score``, or ``cost_route_score`` for the cost-aware
router) applied to the per-replica features of ``info["route"]`` over the replicas ``action_mask`` allows.
The lowest score wins, ties to the lower replica index, as in the core's ``builtin_route``.

Randomised rules draw from the policy's seeded generator (``reset(seed)``), not the core's stream, so they
match the built-in rule in distribution, not draw for draw. Round-robin ranks the candidates from
``info["route"]["rr_pointer"]`` (the env advances it once per routing decision); without it the policy keeps
its own pointer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from servegym.baselines.policy import BasePolicy, PolicyError, feature, info_section
from servegym.envs.scenario import PoliciesConfig
from servegym.envs.sim.policies import (
    ROUTE_COST,
    ROUTE_MOONCAKE,
    ROUTE_P2C,
    ROUTE_PREFIX,
    ROUTE_RANDOM,
    ROUTE_RR,
    ROUTE_SESSION,
    ROUTE_SPLITWISE,
    ROUTING_IDS,
    cost_route_score,
    phase_route_score,
    prefill_route_score,
    replica_cost,
    route_score,
    session_route_score,
)
from servegym.envs.sim.state import PREFIX_BLOCK_TOKENS

_DEFAULTS = PoliciesConfig()


class RoutingRule(BasePolicy):
    """Route to the allowed replica with the lowest score under rule ``rule``.

    ``max_queue`` and ``max_kv`` parameterise the cost-aware router's SLO prediction; their defaults are the
    scenario defaults (``cost_aware_max_queue``, ``cost_aware_max_kv`` in ``PoliciesConfig``).
    ``replica_capacity_rps`` (one number, or one per pool index of ``info["route"]["pool"]``; the scenario's
    ``policies.replica_capacity_rps``) makes it compare price per request/s of capacity, as the core does
    when the scenario gives capacities; without it, price per replica-hour. ``session_max_load`` is the
    session-affinity router's load limit on a session's home replica (``policies.session_affinity_max_load``).
    """

    decisions = ("route",)

    def __init__(
        self,
        rule: str,
        max_queue: int = _DEFAULTS.cost_aware_max_queue,
        max_kv: float = _DEFAULTS.cost_aware_max_kv,
        replica_capacity_rps: float | Sequence[float] | None = None,
        session_max_load: int = _DEFAULTS.session_affinity_max_load,
        splitwise_overflow: int = _DEFAULTS.splitwise_overflow,
    ) -> None:
        super().__init__()
        if rule not in ROUTING_IDS:
            raise PolicyError(f"unknown routing rule {rule!r}; known: {sorted(ROUTING_IDS)}")
        self.name = rule
        self.rule_id = ROUTING_IDS[rule]
        self.max_queue = int(max_queue)
        self.max_kv = float(max_kv)
        self.session_max_load = float(session_max_load)
        self.splitwise_overflow = int(splitwise_overflow)
        self.capacity = (
            None if replica_capacity_rps is None else np.atleast_1d(np.asarray(replica_capacity_rps, float))
        )

    def init_state(self, st: dict[str, Any]) -> None:
        st["rr"] = 0

    def decide(self, obs: Any, info: Mapping[str, Any], st: dict[str, Any]) -> int:
        self.check_decision(info)
        sec = info_section(self.name, info, "route")
        queue = feature(self.name, sec, "queue_len", "route").astype(np.int64)
        n = queue.shape[0]
        mask = info.get("action_mask")
        valid = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)[:n]
        cand = np.flatnonzero(valid)
        if cand.size == 0:
            raise PolicyError(f"policy {self.name!r}: action_mask allows no replica")
        running = feature(self.name, sec, "running", "route").astype(np.int64)
        kv = feature(self.name, sec, "kv_frac", "route").astype(np.float64)
        rid = self.rule_id
        ncand = cand.size
        rr = 0
        home = -1
        rand = np.zeros(ncand)
        hits = np.zeros(n, dtype=np.int64)
        price = np.zeros(n)
        if rid == ROUTE_RR:
            ptr = sec.get("rr_pointer")
            rr = int(ptr if ptr is not None else st["rr"]) % ncand
            st["rr"] += 1
        elif rid == ROUTE_RANDOM:
            rand = st["rng"].random(ncand)
        elif rid == ROUTE_P2C:
            rand = np.ones(ncand)  # >= 0: not sampled
            rand[st["rng"].choice(ncand, size=min(2, ncand), replace=False)] = -1.0
        elif rid == ROUTE_SESSION:
            req = info.get("request")
            if req is None or "home_replica" not in req:
                raise PolicyError(f"policy {self.name!r}: info['request'] lacks 'home_replica'")
            home = int(req["home_replica"])
        elif rid == ROUTE_PREFIX:
            hits = feature(self.name, sec, "prefix_hits", "route").astype(np.int64)
        elif rid == ROUTE_COST:
            gpu_price = feature(self.name, sec, "price_per_gpu_hour", "route").astype(np.float64)
            tp = feature(self.name, sec, "tp", "route").astype(np.int64)
            cap = np.full(n, np.nan)
            if self.capacity is not None:
                pool = feature(self.name, sec, "pool", "route").astype(np.int64)
                cap = (
                    self.capacity[0]
                    if self.capacity.size == 1
                    else self.capacity[np.minimum(pool, self.capacity.size - 1)]
                )
                cap = np.broadcast_to(cap, (n,))
            price = np.array([replica_cost(float(gpu_price[r]), int(tp[r]), float(cap[r])) for r in range(n)])
        req = info.get("request") or {}
        if int(req.get("decode_phase", 0)):  # a KV cache's decode replica: the core's rule for every policy
            return self._decode_replica(sec, cand, queue, running)
        if rid == ROUTE_SPLITWISE:
            role = feature(self.name, sec, "role", "route").astype(np.int64)
        elif rid == ROUTE_MOONCAKE:
            hits = feature(self.name, sec, "prefix_hits", "route").astype(np.int64)
            pending = feature(self.name, sec, "prefill_tokens", "route").astype(np.int64)
            prompt = int(info_section(self.name, info, "request")["prompt_tokens"])
        best, best_s = -1, np.inf
        for k, r in enumerate(cand):
            if rid == ROUTE_SPLITWISE:
                s = phase_route_score(role[r] == 0, int(queue[r] + running[r]), self.splitwise_overflow)
            elif rid == ROUTE_MOONCAKE:
                # the core counts a hit only where the pool has a prefix cache, where hits can be nonzero
                cached = min(int(hits[r]) * PREFIX_BLOCK_TOKENS, prompt - 1)
                s = prefill_route_score(int(pending[r]), prompt - cached)
            elif rid == ROUTE_SESSION:
                s = session_route_score(r == home, int(queue[r] + running[r]), self.session_max_load)
            elif rid == ROUTE_COST:
                s = cost_route_score(
                    float(price[r]), int(queue[r]), int(running[r]), float(kv[r]), self.max_queue, self.max_kv
                )
            else:
                rank = (k - rr) % ncand if rid == ROUTE_RR else 0
                s = route_score(
                    rid, int(queue[r]), int(running[r]), float(kv[r]), int(hits[r]), rank, float(rand[k])
                )
            if best < 0 or s < best_s:
                best, best_s = int(r), s
        return best

    def _decode_replica(
        self, sec: Mapping[str, Any], cand: np.ndarray, queue: np.ndarray, running: np.ndarray
    ) -> int:
        """The decode phase under disaggregation (envs/sim/disagg.py builtin_decode_route): join the shortest
        queue over the allowed decode-capable replicas, the mixed pool as overflow under Splitwise's rule."""
        role = feature(self.name, sec, "role", "route").astype(np.int64)
        overflow = self.splitwise_overflow if self.rule_id == ROUTE_SPLITWISE else 0
        scores = [phase_route_score(role[r] == 0, int(queue[r] + running[r]), overflow) for r in cand]
        return int(cand[int(np.argmin(scores))])
