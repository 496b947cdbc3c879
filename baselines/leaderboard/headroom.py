"""Headroom of a suite scenario: how far the clairvoyant oracle gets above the best heuristic.

``headroom = (oracle - best heuristic) / best heuristic`` in the suite's score metric, means over TRAIN
seeds (never test seeds), the best heuristic being the best among those meeting the scenario's constraints
on those seeds (all of them when none does). The oracle is searched over a grid of horizon / breadth /
depth settings and the best setting's score is the bound; every setting's score is reported, which is how
the bound moves as search grows. The MPC planner runs beside it (at the best oracle setting), and every
policy's score is also given as a paired difference to the best heuristic on the same seeds with a 95% CI.

Episodes run on the scenario's synthetic file (a trace scenario's twin): the MPC planner samples futures
from a workload model, which a replayed trace does not have.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servegym.baselines.env_runner import resolve_policy, run_env_episode
from servegym.baselines.harness import mean_ci
from servegym.baselines.leaderboard.suite import Suite, SuiteScenario, heuristics_for
from servegym.baselines.registry import ClusterPolicy, make_policy
from servegym.envs.scenario import load_scenario

_KINDS = {
    "Route": ("route",),
    "Batch": ("batch",),
    "Scale": ("scale",),
    "Cluster": ("batch", "route", "scale"),
}
# every dynamics version of an env id takes the same decisions
PLANNER_KIND = {f"servegym/{name}-v{v}": kinds for name, kinds in _KINDS.items() for v in (0, 1)}


def planner_name(env_id: str, prefix: str) -> str:
    """``oracle_route`` for Route-v0; Cluster-v0 combines one planner per decision kind."""
    try:
        kinds = PLANNER_KIND[env_id]
    except KeyError:
        raise ValueError(f"no planner for env id {env_id!r}; known: {sorted(PLANNER_KIND)}") from None
    return "+".join(f"{prefix}_{k}" for k in kinds)


@dataclass(frozen=True)
class Search:
    horizon_s: float = 30.0
    breadth: int = 4
    depth: int = 1
    cost_weight: float | None = None  # reward per USD in the planners' objective (None: the env's)
    # the rollouts' base heuristic (baselines/planning.py); None: the scenario's rules
    base: str | None = None

    def label(self) -> str:
        c = "" if self.cost_weight is None else f"/c{self.cost_weight:g}"
        b = "" if self.base is None else f"/base={self.base}"
        return f"h{self.horizon_s:g}/b{self.breadth}/d{self.depth}{c}{b}"

    @classmethod
    def from_label(cls, label: str) -> Search:
        """The setting a ``label()`` names (headroom rows store labels; the frozen suite pins the setting)."""
        m = re.fullmatch(r"h([0-9.e+-]+)/b(\d+)/d(\d+)(?:/c([0-9.e+-]+))?(?:/base=([A-Za-z0-9_+]+))?", label)
        if m is None:
            raise ValueError(f"not a search label: {label!r}")
        h, b, d, c, base = m.groups()
        return cls(float(h), int(b), int(d), None if c is None else float(c), base)

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"horizon_s": self.horizon_s, "breadth": self.breadth, "depth": self.depth}
        if self.cost_weight is not None:
            kw["cost_weight"] = self.cost_weight
        if self.base is not None:
            kw["base"] = self.base
        return kw


def paired_ci(diffs: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% half-width (Student t) of paired differences on matched seeds."""
    st = mean_ci([float(d) for d in diffs])
    return st["mean"], st["ci95"]


@dataclass
class Headroom:
    scenario: str
    env_id: str
    metric: str
    seeds: tuple[int, ...]
    heuristics: dict[str, list[float]] = field(default_factory=dict)  # per-seed scores
    feasible: dict[str, bool] = field(default_factory=dict)  # meets the constraints on the train seeds
    oracle: dict[str, list[float]] = field(default_factory=dict)  # per search setting
    mpc: list[float] = field(default_factory=list)
    mpc_search: str = ""
    oracle_feasible: dict[str, bool] = field(default_factory=dict)  # the oracle meets the constraints too
    mpc_feasible: bool = True

    @property
    def best_heuristic(self) -> str:
        pool = [h for h, ok in self.feasible.items() if ok] or list(self.heuristics)
        return max(pool, key=lambda h: float(np.mean(self.heuristics[h])))

    @property
    def best_oracle(self) -> str:
        """The best search setting among those whose oracle meets the constraints (else among all): an
        oracle that buys goodput by breaking the budget would inflate the headroom."""
        pool = [s for s in self.oracle if self.oracle_feasible.get(s, True)] or list(self.oracle)
        return max(pool, key=lambda s: float(np.mean(self.oracle[s])))

    def _rel(self, scores: Sequence[float]) -> float:
        best = float(np.mean(self.heuristics[self.best_heuristic]))
        return (float(np.mean(scores)) - best) / best if best else math.nan

    @property
    def headroom(self) -> float:
        return self._rel(self.oracle[self.best_oracle])

    @property
    def mpc_gain(self) -> float:
        return self._rel(self.mpc) if self.mpc else math.nan

    def paired(self, scores: Sequence[float]) -> tuple[float, float]:
        base = self.heuristics[self.best_heuristic]
        return paired_ci([a - b for a, b in zip(scores, base, strict=True)])


def planner_policy(policy: str, **policy_kw: Any) -> Any:
    """A planner (or a Cluster combination of planners) with these search settings. On Cluster, the
    setting's horizon is for routing and admission; the scaling planner keeps its default lookahead past a
    cold start (a 10 s rollout cannot see a new replica)."""
    parts = policy.split("+")
    if len(parts) == 1:
        return make_policy(policy, **policy_kw)
    subs = {}
    for p in parts:
        kind = p.split("_", 1)[1]
        kw = {k: v for k, v in policy_kw.items() if not (kind == "scale" and k == "horizon_s")}
        subs[kind] = make_policy(p, **kw)
    return ClusterPolicy(policy, subs)


def _episode(policy: str, sc: SuiteScenario, seed: int, **policy_kw: Any) -> dict[str, Any]:
    if all(p.startswith(("oracle_", "mpc_")) for p in policy.split("+")):
        pol = planner_policy(policy, **policy_kw)
    else:
        pol = resolve_policy(policy, sc.path("twin"), **policy_kw)
    metrics, _ = run_env_episode(pol, sc.env_id, sc.path("twin"), seed, sc.env_config)
    return metrics


def measure(
    suite: Suite,
    sc: SuiteScenario,
    seeds: Sequence[int],
    searches: Sequence[Search],
    mpc_samples: int = 4,
    log: Callable[[str], None] = lambda _: None,
    base_best: bool = False,
) -> Headroom:
    """Run the heuristics, the oracle at every search setting and the MPC planner on ``seeds``.

    ``base_best``: every search's rollouts follow the best heuristic just measured on these seeds (the
    rollout algorithm's base policy), so the oracle improves on that heuristic rather than on the
    scenario's default rules."""
    bad = set(seeds) - set(sc.train_seeds)
    if bad:
        raise ValueError(f"scenario {sc.name!r}: headroom is measured on train seeds; {sorted(bad)} are not")
    metric = suite.score_metric
    out = Headroom(sc.name, sc.env_id, metric, tuple(seeds))

    def feasible(ms: list[dict[str, Any]]) -> bool:
        return all(c.holds(float(np.mean([m[c.metric] for m in ms]))) for c in sc.constraints)

    def note(ms: list[dict[str, Any]]) -> str:
        return "" if feasible(ms) else " (infeasible)"

    for h in heuristics_for(suite, sc.env_id):
        ms = [_episode(h, sc, s) for s in seeds]
        out.heuristics[h] = [float(m[metric]) for m in ms]
        out.feasible[h] = feasible(ms)
        log(f"{sc.name} {h}: {np.mean(out.heuristics[h]):.4f}{note(ms)}")
    oracle = planner_name(sc.env_id, "oracle")
    if base_best:
        searches = [dataclasses.replace(s, base=out.best_heuristic) for s in searches]
    for search in searches:
        ms = [_episode(oracle, sc, s, **search.kwargs()) for s in seeds]
        out.oracle[search.label()] = [float(m[metric]) for m in ms]
        out.oracle_feasible[search.label()] = feasible(ms)
        log(f"{sc.name} oracle {search.label()}: {np.mean(out.oracle[search.label()]):.4f}{note(ms)}")
    best = next(s for s in searches if s.label() == out.best_oracle)
    if not any(src_kind == "trace" for src_kind in _source_kinds(sc)):
        mpc = planner_name(sc.env_id, "mpc")
        ms = [_episode(mpc, sc, s, samples=mpc_samples, **best.kwargs()) for s in seeds]
        out.mpc = [float(m[metric]) for m in ms]
        out.mpc_feasible = feasible(ms)
        out.mpc_search = f"{best.label()}/s{mpc_samples}"
        log(f"{sc.name} mpc {out.mpc_search}: {np.mean(out.mpc):.4f}{note(ms)}")
    return out


def _source_kinds(sc: SuiteScenario) -> list[str]:

    return [s.kind for s in load_scenario(sc.path("twin")).sources]


def table(rows: Sequence[Headroom], threshold: float = 0.10) -> str:
    """A markdown table: best heuristic, oracle (best setting), headroom, MPC, and paired differences."""
    lines = [
        "| scenario | env | best heuristic (train) | oracle, best search | headroom | MPC | MPC vs best | "
        f">= {threshold:.0%} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bh = r.best_heuristic
        od, ohw = r.paired(r.oracle[r.best_oracle])
        mpc = "n/a (trace)"
        mpc_rel = ""
        if r.mpc:
            md, mhw = r.paired(r.mpc)
            mpc = f"{np.mean(r.mpc):.3f}" + ("" if r.mpc_feasible else " (infeasible)")
            mpc_rel = f"{r.mpc_gain:+.1%} ({md:+.3f} +- {mhw:.3f})"
        lines.append(
            f"| {r.scenario} | {r.env_id.split('/')[1]} | {bh} {np.mean(r.heuristics[bh]):.3f} | "
            f"{np.mean(r.oracle[r.best_oracle]):.3f} ({r.best_oracle}; {od:+.3f} +- {ohw:.3f}) | "
            f"{r.headroom:+.1%} | {mpc} | {mpc_rel} | {'yes' if r.headroom >= threshold else 'no'} |"
        )
    return "\n".join(lines)


def search_table(rows: Sequence[Headroom]) -> str:
    """How the oracle's bound moves as search grows: its score at every setting, per scenario."""
    settings = list(dict.fromkeys(s for r in rows for s in r.oracle))
    lines = ["| scenario | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for r in rows:
        cells = [
            f"{np.mean(r.oracle[s]):.3f}" + ("" if r.oracle_feasible.get(s, True) else " (infeasible)")
            if s in r.oracle
            else ""
            for s in settings
        ]
        lines.append(f"| {r.scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
