"""Leaderboard scoring and tables: per (policy, scenario) test-seed statistics, a score per scenario, a rank.

Score (CompilerGym-style, "relative to -Oz"): on each suite scenario,

    score(p, s) = mean goodput of p over the test seeds / reference goodput of s

where goodput is the suite's ``score_metric`` (``goodput/req_per_s``: requests that met their SLO per
simulated second) and the reference is the highest mean goodput among the *heuristics that meet the
scenario's constraints* (the best heuristic scores 1.0). A policy whose test-seed means break a constraint
(SLO attainment below its minimum, cost above its budget) scores 0 on that scenario; the constraints are
stated in the suite and printed beside the score, with cost and attainment, never folded into it. The rank
is the geometric mean of a policy's scores over the scenarios it ran (its env ids), with each score floored
at ``SCORE_FLOOR`` so that one failed scenario costs a factor of 100 instead of erasing the others.

Statistics reuse ``servegym.baselines.harness.aggregate`` (mean, Student-t 95% CI half-width over test seeds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from servegym.baselines.harness import aggregate, mean_ci
from servegym.baselines.leaderboard.suite import Suite

SCORE_FLOOR = 0.01
REFERENCE = "reference"  # the kind of the clairvoyant oracle's rows
# Metrics shown beside the score; the suite's constraint metrics are added per scenario.
SHOWN = ("slo_attainment", "cost/usd", "ttft_s/p99", "tpot_s/p99", "fairness/jain", "drop_rate")


@dataclass
class Row:
    """One (policy, scenario) over its test seeds."""

    policy: str
    kind: str
    scenario: str
    env_id: str
    workload: str
    seeds: list[int]
    stats: dict[str, dict[str, float]]
    complete: bool
    feasible: bool = False
    violations: list[str] = field(default_factory=list)
    score: float = float("nan")
    per_seed: dict[int, float] = field(default_factory=dict)  # the score metric on each seed (paired tests)

    def mean(self, metric: str) -> float:
        st = self.stats.get(metric)
        return float("nan") if st is None else float(st["mean"])


@dataclass
class Ranked:
    policy: str
    kind: str
    geomean: float
    scores: dict[str, float]
    n_scenarios: int
    n_feasible: int


@dataclass
class Board:
    suite: Suite
    rows: list[Row]
    ranking: list[Ranked]
    reference: dict[str, tuple[str, float, bool]]  # scenario -> (policy, goodput, among feasible)


def build_rows(
    suite: Suite, entries: Sequence[Mapping[str, Any]], seeds: Mapping[str, Sequence[int]] | None = None
) -> list[Row]:
    """Rows per (policy, scenario); a row is complete when it has every seed of ``seeds[scenario]``
    (default: the suite's test seeds; smoke runs pass fewer)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for e in entries:
        groups.setdefault((e["policy"], e["scenario"]), []).append(e)
    seeds_of = seeds
    rows = []
    for sc in suite.scenarios:
        keys = sorted({suite.score_metric, *SHOWN, *(c.metric for c in sc.constraints)})
        for (pol, scen), es in sorted(groups.items()):
            if scen != sc.name:
                continue
            es = sorted(es, key=lambda e: int(e["seed"]))
            records = [{"seed": e["seed"], **e["metrics"]} for e in es]
            seeds = [int(e["seed"]) for e in es]
            rows.append(
                Row(
                    policy=pol,
                    kind=es[0].get("policy_kind", "heuristic"),
                    scenario=scen,
                    env_id=es[0]["env_id"],
                    workload=",".join(sorted({e.get("workload", "twin") for e in es})),
                    seeds=seeds,
                    stats=aggregate(records, [k for k in keys if k in records[0]]),
                    complete=sorted(seeds) == sorted((seeds_of or {}).get(sc.name, sc.test_seeds)),
                    per_seed={
                        int(e["seed"]): float(e["metrics"].get(suite.score_metric, math.nan)) for e in es
                    },
                )
            )
    return rows


def score(suite: Suite, rows: list[Row]) -> Board:
    """Feasibility, the reference per scenario, scores and the ranking (rows are updated in place)."""
    metric = suite.score_metric
    reference: dict[str, tuple[str, float, bool]] = {}
    for sc in suite.scenarios:
        mine = [r for r in rows if r.scenario == sc.name and r.complete]
        for r in mine:
            r.violations = [c.describe() for c in sc.constraints if not c.holds(r.mean(c.metric))]
            r.feasible = not r.violations
        heur = [r for r in mine if r.kind == "heuristic" and not math.isnan(r.mean(metric))]
        pool = [r for r in heur if r.feasible] or heur  # no feasible heuristic: best heuristic, flagged
        if pool:
            best = max(pool, key=lambda r: (r.mean(metric), r.policy))
            reference[sc.name] = (best.policy, best.mean(metric), best.feasible)
        ref = reference.get(sc.name, ("", float("nan"), False))[1]
        for r in mine:
            g = r.mean(metric)
            r.score = 0.0 if not r.feasible else (g / ref if ref > 0 and not math.isnan(g) else float("nan"))
    ranking = []
    # the clairvoyant oracle's rows (kind "reference") are an upper reference: shown, never ranked
    for pol in sorted({r.policy for r in rows if r.kind != REFERENCE}):
        mine = [r for r in rows if r.policy == pol and r.complete and not math.isnan(r.score)]
        if not mine:
            continue
        logs = [math.log(max(r.score, SCORE_FLOOR)) for r in mine]
        ranking.append(
            Ranked(
                policy=pol,
                kind=mine[0].kind,
                geomean=math.exp(math.fsum(logs) / len(logs)),
                scores={r.scenario: r.score for r in mine},
                n_scenarios=len(mine),
                n_feasible=sum(r.feasible for r in mine),
            )
        )
    ranking.sort(key=lambda x: (-x.geomean, -x.n_scenarios, x.policy))
    return Board(suite, rows, ranking, reference)


def paired_vs_reference(board: Board, row: Row) -> tuple[float, float, int]:
    """Mean and 95% CI half-width of ``row``'s score metric minus the scenario's reference heuristic's on
    the seeds both ran (paired on matched seeds), and how many seeds that is."""
    ref = board.reference.get(row.scenario)
    base = next((r for r in board.rows if ref and r.scenario == row.scenario and r.policy == ref[0]), None)
    if base is None:
        return math.nan, math.nan, 0
    seeds = sorted(set(row.per_seed) & set(base.per_seed))
    st = mean_ci([row.per_seed[s] - base.per_seed[s] for s in seeds])
    return st["mean"], st["ci95"], len(seeds)


def board_from_entries(
    suite: Suite, entries: Sequence[Mapping[str, Any]], seeds: Mapping[str, Sequence[int]] | None = None
) -> Board:
    return score(suite, build_rows(suite, entries, seeds))


# ---------------------------------------------------------------- flat outputs


def fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}g}"


def fmt_ci(st: Mapping[str, float] | None) -> str:
    if st is None or math.isnan(st["mean"]):
        return "-"
    half = st["ci95"]
    if math.isnan(half):
        return fmt(st["mean"])
    if half <= 1e-9 * abs(st["mean"]):
        half = 0.0
    return f"{fmt(st['mean'])} ± {half:.2g}"


def csv_rows(board: Board) -> list[dict[str, Any]]:
    """One row per (policy, scenario): the score, feasibility, and mean / CI of the shown metrics."""
    out = []
    metric = board.suite.score_metric
    for r in board.rows:
        row: dict[str, Any] = {
            "policy": r.policy,
            "kind": r.kind,
            "scenario": r.scenario,
            "env_id": r.env_id,
            "workload": r.workload,
            "n_seeds": len(r.seeds),
            "complete": r.complete,
            "score": r.score,
            "feasible": r.feasible,
            "violations": "; ".join(r.violations),
        }
        for k in (metric, *SHOWN):
            st = r.stats.get(k)
            row[f"{k}/mean"] = float("nan") if st is None else st["mean"]
            row[f"{k}/ci95"] = float("nan") if st is None else st["ci95"]
        out.append(row)
    return out


def ranking_rows(board: Board) -> list[dict[str, Any]]:
    return [
        {
            "rank": i + 1,
            "policy": x.policy,
            "kind": x.kind,
            "geomean_score": x.geomean,
            "scenarios": x.n_scenarios,
            "feasible": x.n_feasible,
            **{f"score/{s}": v for s, v in x.scores.items()},
        }
        for i, x in enumerate(board.ranking)
    ]


# ---------------------------------------------------------------- Markdown


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> list[str]:
    line = "| " + " | ".join(header) + " |"
    rule = "|" + "|".join("---:" if i >= right_from else "---" for i in range(len(header))) + "|"
    return [line, rule, *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(
    board: Board, command: str, wall_s: float, notes: Sequence[str] = (), sections: Sequence[str] = ()
) -> str:
    suite = board.suite
    metric = suite.score_metric
    lines = [
        f"# servegym leaderboard, suite {suite.version}",
        "",
        "Generated by `scripts/leaderboard.py`; do not edit by hand.",
        "",
        f"- command: `{command}`",
        f"- wall time: {wall_s:.1f} s (this invocation; cells found in the cache are not rerun)",
        f"- score: mean `{metric}` over the test seeds / the best constraint-meeting heuristic's on that "
        f"scenario (1.0 = the best heuristic); 0 when a constraint is broken. Rank: geometric mean of the "
        f"scores over the scenarios a policy ran (floored at {SCORE_FLOOR}). Details: docs/leaderboard.md.",
        "- every entry is replay-validated: `python scripts/leaderboard.py validate leaderboard/cells`",
        *(f"- {n}" for n in notes),
        "",
        *sections,
        "## Ranking",
        "",
    ]
    scen = [s.name for s in suite.scenarios]
    header = ["rank", "policy", "kind", "geomean score", "scenarios (feasible)", *scen]
    body = []
    for i, x in enumerate(board.ranking):
        body.append(
            [
                str(i + 1),
                f"`{x.policy}`",
                x.kind,
                f"{x.geomean:.3f}",
                f"{x.n_scenarios} ({x.n_feasible})",
                *(f"{x.scores[s]:.3f}" if s in x.scores else "·" for s in scen),
            ]
        )
    lines += _table(header, body, right_from=3)
    lines += ["", "`·`: the policy does not take that scenario's decision (another env id).", ""]
    lines += ["## Scenarios", ""]
    for sc in suite.scenarios:
        rows = sorted(
            (r for r in board.rows if r.scenario == sc.name),
            key=lambda r: (-(r.score if not math.isnan(r.score) else -1), r.policy),
        )
        ref = board.reference.get(sc.name)
        workloads = sorted({r.workload for r in rows}) or ["-"]
        lines += [
            f"### {sc.name} (`{sc.env_id}`)",
            "",
            f"{sc.covers}. Scenario `configs/suite/{sc.scenario}`; workload: {', '.join(workloads)}"
            + (f" (trace `{sc.trace.name}`, sha256 `{sc.trace.sha256[:12]}…`)" if sc.trace else "")
            + f"; test seeds {list(sc.test_seeds)}.",
            "",
            "Constraints: " + ("; ".join(f"`{c.describe()}`" for c in sc.constraints) or "none") + ".",
            (
                f"Reference: `{ref[0]}` ({metric} {ref[1]:.4g}"
                + ("" if ref[2] else "; no heuristic meets the constraints, so the best one is the reference")
                + ")."
            )
            if ref
            else "Reference: none (no heuristic ran).",
            "",
        ]
        extra = [c.metric for c in sc.constraints if c.metric not in (metric, "slo_attainment", "cost/usd")]
        header = [
            "policy",
            "score",
            "feasible",
            metric,
            "slo_attainment",
            "cost/usd",
            *extra,
            "ttft p99 (s)",
            "n",
            f"{metric} − reference, paired",
        ]
        body = []
        for r in rows:
            d, half, n_paired = paired_vs_reference(board, r)
            paired = "-" if math.isnan(d) else (f"{d:+.3g}" + ("" if math.isnan(half) else f" ± {half:.2g}"))
            body.append(
                [
                    f"`{r.policy}`" + (" (clairvoyant reference, unranked)" if r.kind == REFERENCE else ""),
                    "-" if math.isnan(r.score) else f"{r.score:.3f}",
                    "yes"
                    if r.feasible
                    else ("no: " + "; ".join(r.violations) if r.complete else "incomplete"),
                    fmt_ci(r.stats.get(metric)),
                    fmt_ci(r.stats.get("slo_attainment")),
                    fmt_ci(r.stats.get("cost/usd")),
                    *(fmt_ci(r.stats.get(m)) for m in extra),
                    fmt_ci(r.stats.get("ttft_s/p99")),
                    str(len(r.seeds)),
                    paired if n_paired == len(r.seeds) else f"{paired} ({n_paired} seeds)",
                ]
            )
        lines += _table(header, body, right_from=1)
        lines.append("")
    lines += [
        "Values are `mean ± 95% CI half-width` (Student t) over the test seeds; the last column is the mean "
        "per-seed difference to the reference heuristic on the same seeds (paired), with its 95% CI.",
        "",
        "Plots: [score per scenario](leaderboard/score_per_scenario.png), "
        "[cost vs SLO attainment](leaderboard/cost_vs_attainment.png).",
        "",
    ]
    return "\n".join(lines)
