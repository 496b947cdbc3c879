"""Leaderboard plots: the score per scenario per policy, and cost against SLO attainment per scenario."""

from __future__ import annotations

import math
import os
from pathlib import Path

from servegym.baselines.leaderboard.board import Board


def _save(fig: object, path: Path) -> None:
    """Atomically: an interrupted run never leaves a truncated PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)  # type: ignore[attr-defined]
    os.replace(tmp, path)


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, n)
    return math.ceil(n / cols), cols


def plot_scores(board: Board, path: Path) -> None:
    """One panel per scenario: horizontal bars of each policy's score (hatched: breaks a constraint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scen = board.suite.scenarios
    nr, nc = _grid(len(scen))
    fig, axes = plt.subplots(nr, nc, figsize=(4.2 * nc, 3.2 * nr), squeeze=False)
    for ax, sc in zip(axes.flat, scen, strict=False):
        rows = sorted(
            (r for r in board.rows if r.scenario == sc.name and not math.isnan(r.score)),
            key=lambda r: r.score,
        )
        ys = range(len(rows))
        colors = ["tab:orange" if r.kind == "agent" else "tab:blue" for r in rows]
        bars = ax.barh(list(ys), [r.score for r in rows], color=colors)
        for b, r in zip(bars, rows, strict=True):
            if not r.feasible:
                b.set_hatch("//")
                b.set_alpha(0.5)
        ax.set_yticks(list(ys), [r.policy for r in rows], fontsize=7)
        ax.axvline(1.0, color="k", lw=0.8, ls="--")
        ax.set_title(f"{sc.name}\n{sc.env_id.split('/')[-1]}", fontsize=9)
        ax.set_xlabel("score (1 = best heuristic)", fontsize=8)
    for ax in list(axes.flat)[len(scen) :]:
        ax.axis("off")
    fig.suptitle(
        f"suite {board.suite.version}: score per scenario (blue heuristic, orange agent, hatched infeasible)",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_frontier(board: Board, path: Path) -> None:
    """One panel per scenario: mean cost vs mean SLO attainment per policy, the Pareto frontier (cheaper and
    better-attaining), and the constraint lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scen = board.suite.scenarios
    nr, nc = _grid(len(scen))
    fig, axes = plt.subplots(nr, nc, figsize=(4.2 * nc, 3.4 * nr), squeeze=False)
    for ax, sc in zip(axes.flat, scen, strict=False):
        rows = [r for r in board.rows if r.scenario == sc.name]
        pts = [(r.mean("cost/usd"), r.mean("slo_attainment"), r) for r in rows]
        pts = [p for p in pts if not (math.isnan(p[0]) or math.isnan(p[1]))]
        for c, a, r in pts:
            ax.scatter(
                c,
                a,
                s=18,
                color="tab:orange" if r.kind == "agent" else "tab:blue",
                marker="o" if r.feasible else "x",
            )
            ax.annotate(r.policy, (c, a), fontsize=6, xytext=(2, 2), textcoords="offset points")
        front, best = [], -math.inf
        for c, a, _ in sorted(pts, key=lambda p: (p[0], -p[1])):
            if a > best:
                front.append((c, a))
                best = a
        if len(front) > 1:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:green", lw=1)
        for con in sc.constraints:
            for bound in (con.min, con.max):
                if bound is None:
                    continue
                if con.metric == "slo_attainment":
                    ax.axhline(bound, color="tab:red", lw=0.7, ls=":")
                elif con.metric == "cost/usd":
                    ax.axvline(bound, color="tab:red", lw=0.7, ls=":")
        ax.set_title(sc.name, fontsize=9)
        ax.set_xlabel("cost (USD)", fontsize=8)
        ax.set_ylabel("SLO attainment", fontsize=8)
    for ax in list(axes.flat)[len(scen) :]:
        ax.axis("off")
    fig.suptitle(
        f"suite {board.suite.version}: cost vs SLO attainment (green: frontier; red: constraints; x: infeasible)",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
