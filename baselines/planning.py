"""Planning baselines: a clairvoyant oracle (an upper reference) and an honest MPC planner, for every decision.

Both answer a pending decision (route, batch, scale; on Cluster-v0 combine them,
``oracle_batch+oracle_route+oracle_scale``) by search over forks
of the running simulator (``Simulator.fork``, docs/envs.md): each candidate action is applied to a fork,
later decisions are taken by the search (``depth`` > 1) or by the scenario's built-in rules
(``Simulator.release_control``), the fork is simulated ``horizon_s`` ahead, and the candidate whose fork
collected the most of the env's own reward (its ``reward`` weights on met / missed / dropped requests and on
billed dollars) is played. ``breadth`` bounds the candidates tried at each level.

- ``oracle_*`` plans on the realised future: the fork holds the episode's actual future arrivals. It sees
  what no policy can, so it is an **upper reference** (the issue's "clairvoyant oracle"), labelled
  ``reference=True`` and never ranked as a policy. It is not an exact bound: a finite horizon and breadth
  can miss better plans, which is why ``scripts/headroom.py`` reports how its score moves as search grows.
- ``mpc_*`` is model-predictive control with the simulator as the model: before each rollout the fork's
  future arrivals (every request not yet arrived) are replaced by a future sampled from the scenario's
  workload model with seeds of the planner's own, so it never reads the real arrivals; the value of a
  candidate is its mean over ``samples`` sampled futures, and it leaves the default candidate only for a
  gain those futures agree on (``_significant``). It is ranked like any policy.

Deviations and limits, stated: the requests already in the system keep their true output lengths in the
forks of both planners (the simulator needs a length to run a request; resampling them would need the
length model's conditional given the tokens generated so far); sampled futures carry no session links
(a sampled first step is a single call), while sessions already under way keep their real later steps; the
fairness reward term is not planned on. The planners are for evaluation, not training: a decision costs
``breadth ** depth * samples`` rollouts of ``horizon_s`` simulated seconds.

A planner needs the env, not only ``info``: ``run_env_episode`` calls ``bind_env(env)`` before the episode.
Its actions are logged and replay like any policy's (the leaderboard validates them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from servegym.baselines.policy import BasePolicy, PolicyError
from servegym.envs.rules import BATCHING, DECISION_KINDS, ROUTING, SCALING, names
from servegym.envs.sim.simulator import Simulator

KINDS = DECISION_KINDS


@dataclass(frozen=True)
class Candidate:
    """One action of the pending decision, at the simulator level: a replica, a request id (-1: start the
    iteration now), or per-pool replica deltas."""

    kind: str
    value: int = 0
    deltas: tuple[int, ...] = ()

    def apply(self, sim: Simulator) -> None:
        if self.kind == "route":
            ok = sim.apply_route(self.value)
        elif self.kind == "batch":
            ok = sim.apply_start() if self.value < 0 else sim.apply_admit(self.value)
        else:
            sim.apply_scale(np.asarray(self.deltas, np.int64))
            ok = True
        if not ok:  # candidates come from the simulator's own masks: this is a bug, not bad input
            raise RuntimeError(f"planning: the simulator refused candidate {self}")


_RULE_KIND = {
    n: k for k, table in (("batch", BATCHING), ("route", ROUTING), ("scale", SCALING)) for n in names(table)
}


def base_rules(base: str | None) -> dict[str, str]:
    """``{kind: rule}`` of a base heuristic: one rule name or a ``batching+routing+scaling`` combination."""
    if base is None:
        return {}
    out: dict[str, str] = {}
    for part in str(base).split("+"):
        kind = _RULE_KIND.get(part)
        if kind is None or kind in out:
            raise PolicyError(
                f"planner: base {base!r}: {part!r} is not a rule name (or names a decision kind twice); "
                f"rules: {sorted(_RULE_KIND)}"
            )
        out[kind] = part
    return out


SEARCH_SETTINGS = ("horizon_s", "breadth", "depth", "cost_weight", "base", "samples")


def setting_problem(key: str, value: Any) -> str | None:
    """What is wrong with one search setting (None: nothing). The planner checks its arguments here, and a
    suite's pinned ``planner:`` settings pass through the same checks when the suite loads."""
    if key not in SEARCH_SETTINGS:
        return f"is not a search setting; settings: {SEARCH_SETTINGS}"
    if key == "base":
        try:
            base_rules(value)
        except PolicyError as e:
            return str(e)
        return None
    if key in ("breadth", "depth", "samples"):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            return f"must be an int >= 1, got {value!r}"
        return None
    number = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if key == "horizon_s":
        return None if number and value > 0 else f"must be a finite number > 0, got {value!r}"
    return None if number and value >= 0 else f"must be a finite number >= 0, got {value!r}"  # cost_weight


def pending_kind(sim: Simulator) -> str | None:
    return sim.pending_decision()


def route_candidates(sim: Simulator, breadth: int, allowed: np.ndarray | None = None) -> list[Candidate]:
    """Replicas that may take the pending request, least loaded first (queued + running), ``breadth`` of them."""
    ok = sim.route_mask() if allowed is None else allowed
    reps = np.flatnonzero(ok)
    load = sim.replica_load()[reps]
    order = reps[np.argsort(load, kind="stable")]
    return [Candidate("route", int(r)) for r in order[:breadth]]


def batch_candidates(sim: Simulator, breadth: int, offered: np.ndarray | None = None) -> list[Candidate]:
    """Admit one of the first ``breadth - 1`` admissible requests (in the env's offered slot order when
    given, else the queue's), or start the iteration now. Ties go to the first: the ranking rule's choice."""
    ids = sim.batch_candidates() if offered is None else offered
    return [Candidate("batch", int(i)) for i in ids[: max(breadth - 1, 0)]] + [Candidate("batch", -1)]


def scale_candidates(sim: Simulator, breadth: int, step: int) -> list[Candidate]:
    """Hold, then one pool moved by +-1, +-2, ... up to ``step`` (smallest moves first), ``breadth`` in all;
    moves the pool's bounds forbid are left out."""
    counts = sim.pool_live_replicas()
    lo, hi = sim.pool_bounds()
    n_pool = counts.shape[0]
    out = [Candidate("scale", deltas=(0,) * n_pool)]
    for mag in range(1, step + 1):
        for sign in (1, -1):
            for p in range(n_pool):
                target = counts[p] + sign * mag
                if not lo[p] <= target <= hi[p]:
                    continue
                d = [0] * n_pool
                d[p] = sign * mag
                out.append(Candidate("scale", deltas=tuple(d)))
    return out[:breadth]


def billed_usd(sim: Simulator, price_per_gpu_hour: np.ndarray) -> float:
    """Dollars billed so far (closed bills plus the open bills of replicas that are on)."""
    return float(np.dot(sim.billed_gpu_s(), price_per_gpu_hour) / 3600.0)


class Objective:
    """The env's reward over a rollout: weighted met, missed, dropped requests and billed dollars."""

    def __init__(self, reward: Mapping[str, float], price: np.ndarray) -> None:
        self.w_met = float(reward.get("slo_met", 1.0))
        self.w_missed = float(reward.get("slo_missed", 1.0))
        self.w_drop = float(reward.get("drops", 1.0))
        self.w_cost = float(reward.get("cost_usd", 0.0))
        self.price = np.asarray(price, np.float64)

    def __call__(self, sim: Simulator) -> float:
        met, missed, dropped = sim.slo_counts()
        v = self.w_met * met - self.w_missed * missed - self.w_drop * dropped
        if self.w_cost:
            v -= self.w_cost * billed_usd(sim, self.price)
        return float(v)


class FutureSampler:
    """Futures from the scenario's workload model for MPC: request tables drawn with the planner's seeds.

    ``into(fork)`` overwrites the fork's not-yet-arrived rows with the sample's requests arriving after the
    fork's clock, so the rollout never sees a real future arrival.
    """

    def __init__(self, sim: Simulator, seeds: list[int]) -> None:
        if any(s.kind == "trace" for s in sim.scenario.sources):
            raise PolicyError(
                f"mpc: scenario {sim.scenario.name!r} replays a trace, whose future cannot be resampled; "
                "run the MPC planner on the trace's synthetic twin (the suite's `scenario:` file)"
            )
        # A fresh simulator per seed gives the sampled rows exactly as the core derives them (SLOs, model,
        # region, deadline); only its state's rows and prefix hashes are used.
        self.samples = [Simulator(sim.scenario, seed=s) for s in seeds]

    def into(self, fork: Simulator, k: int) -> None:
        fork.replace_future_arrivals(self.samples[k])


class Planner(BasePolicy):
    """Depth-limited search over forks of the env's simulator (module docstring)."""

    needs_info_features = False

    def __init__(
        self,
        kind: str,
        clairvoyant: bool,
        horizon_s: float = 30.0,
        breadth: int = 4,
        depth: int = 1,
        samples: int = 1,
        z: float = 2.0,
        cost_weight: float | None = None,
        base: str | None = None,
        **_: Any,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise PolicyError(f"planner: kind must be one of {KINDS}, got {kind!r}")
        settings = {"horizon_s": horizon_s, "breadth": breadth, "depth": depth, "samples": samples}
        if cost_weight is not None:  # None: the env's own reward weight
            settings["cost_weight"] = cost_weight
        for key, val in settings.items():
            why = setting_problem(key, val)
            if why:
                raise PolicyError(f"planner: {key} {why}")
        self.kind = kind
        self.clairvoyant = clairvoyant
        self.reference = clairvoyant  # an upper reference: never ranked (leaderboard)
        self.name = f"{'oracle' if clairvoyant else 'mpc'}_{kind}"
        self.decisions = (kind,)
        self.horizon_s = float(horizon_s)
        self.breadth = int(breadth)
        self.depth = int(depth)
        self.samples = 1 if clairvoyant else int(samples)
        self.z = float(z)
        # reward per USD in the objective; None: the env's reward weight. A budget constraint is met by
        # searching this weight on train seeds (scripts/headroom.py), as a Lagrange multiplier would be.
        self.cost_weight = cost_weight
        # The rollouts' base policy (Bertsekas' rollout algorithm): later decisions in a fork are taken by
        # these rules instead of the scenario's `policies`, and the base rule's own choice is always a
        # first-level candidate, so that with an exact model and a lookahead to the episode's end the search can only
        # improve on the base heuristic in the planner's own objective (met - missed - dollars x weight), which
        # is not the suite's score: on a per-GPU score the oracle has fallen below its base (docs/headroom_v1.md).
        # The headroom measurement uses the scenario's best heuristic on train seeds as the base.
        self.base = base
        self._base = base_rules(base)
        self.env: Any = None
        self._sampler: FutureSampler | None = None
        self._objective: Objective | None = None
        self.last_values: list[float] = []

    def bind_env(self, env: Any) -> None:
        """The (unwrapped) env whose decisions this planner answers; called before each episode."""
        self.env = env

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._sampler = None
        self._objective = None

    # ------------------------------------------------------------------ search
    def decide(self, obs: Any, info: Mapping[str, Any], st: dict[str, Any]) -> Any:
        kind = self.check_decision(info)
        env = self.env
        if env is None or env.sim is None:
            raise PolicyError(f"policy {self.name!r} plans on the env's simulator: call bind_env(env) first")
        sim = env.sim
        if self._objective is None:
            reward = dict(env.config["reward"])
            if self.cost_weight is not None:
                reward["cost_usd"] = float(self.cost_weight)
            self._objective = Objective(reward, env.pool_prices)
            if not self.clairvoyant:
                base = 0 if self._seed is None else int(self._seed)
                seeds = [
                    int(np.random.SeedSequence([base, 0x6D7063, k]).generate_state(1)[0])
                    for k in range(self.samples)
                ]
                self._sampler = FutureSampler(sim, seeds)
        cands = self._first_candidates(env, kind)
        if self._base:
            cands = self._with_base_choice(env, kind, cands)
        if len(cands) == 1:
            return self._to_env(env, cands[0])
        t_end = sim.now + self.horizon_s
        per_sample = np.array([self._values(sim, c, t_end, self.depth) for c in cands])  # [cand, sample]
        values = per_sample.mean(axis=1)
        self.last_values = values.tolist()  # what the search saw (tests, diagnostics)
        best = int(np.argmax(values))  # ties: the first (least loaded, top slot, hold)
        if not self.clairvoyant and best != 0 and not self._significant(per_sample[best] - per_sample[0]):
            best = 0
        return self._to_env(env, cands[best])

    def _follow_base(self, fork: Simulator) -> Simulator:
        for kind, rule in self._base.items():
            fork.use_rule(kind, rule)
        return fork

    def _with_base_choice(self, env: Any, kind: str, cands: list[Candidate]) -> list[Candidate]:
        """Put the base rule's own choice first (the default MPC keeps without a significant gain)."""
        if kind not in self._base:
            return cands
        sim = env.sim
        fork = self._follow_base(sim.fork())
        if kind == "batch":
            # the base rule forms the whole batch on a fork; any request it admits is a base-consistent first
            # admission (the rollout admits the rest), so the first such request among the offered slots
            r = sim.forming_replica
            offered = self._offered_requests(env)
            fork.release_control()
            left = set(fork.queued_requests(r).tolist())
            taken = [int(i) for i in offered if int(i) not in left and not fork.request_dropped(int(i))]
            choice = Candidate("batch", taken[0] if taken else -1)
        elif kind == "route":
            i = fork.pending_request
            fork.release_control()
            r = fork.request_replica(i)
            if r < 0 or not self._route_allowed(env)[r]:
                return cands  # held, or not a replica the env offers
            choice = Candidate("route", r)
        else:
            before = sim.pool_live_replicas()
            fork.release_control()
            step = env.layout.scale_step
            deltas = np.clip(fork.pool_live_replicas() - before, -step, step)
            choice = Candidate("scale", deltas=tuple(int(d) for d in deltas))
        return [choice] + [c for c in cands if c != choice][: max(self.breadth - 1, 0)]

    def _significant(self, gains: np.ndarray) -> bool:
        """MPC leaves the default candidate only for a gain the sampled futures agree on: their mean gain
        exceeds ``z`` standard errors. A rollout is chaotic (one routing change reshuffles every later
        decision), so a single sampled future's best candidate is mostly noise (measured: one-sample MPC
        on hetero_route routed like round robin)."""
        k = len(gains)
        if k < 2:
            return False
        se = float(gains.std(ddof=1)) / np.sqrt(k)
        return float(gains.mean()) > self.z * se

    def _values(self, sim: Simulator, cand: Candidate, t_end: float, depth: int) -> list[float]:
        out = []
        for k in range(self.samples):
            fork = self._follow_base(sim.fork())
            if self._sampler is not None:
                self._sampler.into(fork, k)
            out.append(self._rollout(fork, cand, t_end, depth))
        return out

    def _rollout(self, fork: Simulator, cand: Candidate, t_end: float, depth: int) -> float:
        obj = self._objective
        v0 = obj(fork)
        cand.apply(fork)
        if depth > 1:
            fork.advance(t_end)
            kind = pending_kind(fork)
            if kind is not None:
                subs = self._sim_candidates(fork, kind)
                best = max(self._rollout(fork.fork(), c, t_end, depth - 1) for c in subs)
                return obj(fork) - v0 + best
        fork.release_control()
        fork.advance(t_end)
        return obj(fork) - v0

    def _sim_candidates(self, sim: Simulator, kind: str) -> list[Candidate]:
        if kind == "route":
            return route_candidates(sim, self.breadth)
        if kind == "batch":
            return batch_candidates(sim, self.breadth)
        return scale_candidates(sim, self.breadth, self.env.layout.scale_step)

    def _first_candidates(self, env: Any, kind: str) -> list[Candidate]:
        """Candidates among the actions the env offers (its mask; Batch's ranked slots)."""
        lay = env.layout
        sim = env.sim
        if kind == "route":
            return route_candidates(sim, self.breadth, self._route_allowed(env))
        if kind == "batch":
            return batch_candidates(sim, self.breadth, self._offered_requests(env))
        return scale_candidates(sim, self.breadth, lay.scale_step)

    @staticmethod
    def _offered_requests(env: Any) -> np.ndarray:
        """The request ids of the batch slots the env's mask allows, in the env's slot order."""
        m0 = env.layout.mask_offsets[1]
        slots = np.flatnonzero(env.action_masks()[m0 : m0 + env.layout.k])
        return env.batch_slots[slots]

    @staticmethod
    def _route_allowed(env: Any) -> np.ndarray:
        lay = env.layout
        m0 = lay.mask_offsets[0]
        return env.action_masks()[m0 : m0 + lay.r_pad][: env.sim.n_replicas]

    def _to_env(self, env: Any, cand: Candidate) -> Any:
        """The env action of a first-level candidate (Cluster: the pending decision's part only)."""
        lay = env.layout
        if cand.kind == "route":
            return cand.value
        if cand.kind == "batch":
            if cand.value < 0:
                return lay.k
            return int(np.flatnonzero(env.batch_slots == cand.value)[0])
        out = np.full(lay.p_pad, lay.scale_step, np.int64)
        out[: len(cand.deltas)] += np.asarray(cand.deltas, np.int64)
        return out


# Lookahead by decision kind: a scaling decision pays off only after a cold start (SageServe's 155 s) and a
# control interval, so it needs a longer rollout than a routing or admission decision.
DEFAULT_HORIZON_S = {"route": 30.0, "batch": 30.0, "scale": 300.0}

DESCRIPTIONS = {
    "oracle": "clairvoyant {kind} planner: searches forks on the realised future (upper reference, unranked)",
    "mpc": "MPC {kind} planner: searches forks on futures sampled from the workload model",
}


def make_planner(kind: str, clairvoyant: bool):
    """A registry factory: ``oracle_route(horizon_s=..., breadth=..., depth=...)`` etc."""

    def factory(
        horizon_s: float | None = None,
        breadth: int = 4,
        depth: int = 1,
        samples: int = 4,
        z: float = 2.0,
        cost_weight: float | None = None,
        base: str | None = None,
    ) -> Planner:
        h = DEFAULT_HORIZON_S[kind] if horizon_s is None else horizon_s
        return Planner(
            kind,
            clairvoyant,
            horizon_s=h,
            breadth=breadth,
            depth=depth,
            samples=samples,
            z=z,
            cost_weight=cost_weight,
            base=base,
        )

    return factory
