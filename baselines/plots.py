"""PNG plots: the timeline of one episode, and TTFT/TPOT CDFs comparing policies.

matplotlib is imported lazily with the Agg backend, so importing this module (and running the harness on a
headless machine) never needs a display. The timeline is sampled by running the simulator in time slices
(``Simulator.advance(t)``) and reading its state between slices; it runs the core's built-in rules, like the
harness's default episode runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from servegym.baselines.episodes import EpisodeSpec, scenario_overrides
from servegym.envs.sim.outcome import STATUS_FINISHED, SimOutcome
from servegym.envs.sim.simulator import Simulator


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def timeline(
    scenario: str,
    seed: int,
    policy: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    n_slices: int = 120,
) -> tuple[dict[str, np.ndarray], SimOutcome]:
    """Sample one episode at ``n_slices`` even instants; returns the series and the final outcome.

    Series (one value per slice, at its end time ``t_s``): ``arrivals_per_s`` in the slice, ``queue_len``
    (waiting in replica queues + held for lack of a replica), ``active_replicas`` and ``up_replicas``
    (starting or active), ``kv_util`` (used / capacity over active replicas), ``slo_attainment`` of the
    requests judged in the slice (finished or dropped; NaN if none) and ``slo_attainment_cum``.
    """

    over = dict(overrides or {})
    if policy is not None:
        over = scenario_overrides(EpisodeSpec(policy, scenario, seed, over))
    sim = Simulator(scenario, seed=seed, overrides=over)
    horizon = sim.scenario.horizon_s
    cols: dict[str, list[float]] = {
        k: []
        for k in (
            "t_s",
            "arrivals_per_s",
            "queue_len",
            "active_replicas",
            "up_replicas",
            "kv_util",
            "slo_attainment",
            "slo_attainment_cum",
        )
    }
    prev_t, prev_arr, prev_met, prev_judged = 0.0, 0, 0, 0
    for k in range(1, n_slices + 1):
        t = horizon * k / n_slices
        sim.advance(t)
        now = sim.sample()
        arrived, met, judged = now.arrived, now.slo_met, now.slo_judged
        cols["t_s"].append(t)
        cols["arrivals_per_s"].append((arrived - prev_arr) / max(t - prev_t, 1e-12))
        cols["queue_len"].append(float(now.waiting))
        cols["active_replicas"].append(float(now.active.sum()))
        cols["up_replicas"].append(float(np.count_nonzero(now.up)))
        cols["kv_util"].append(now.kv_util_active)
        d_judged = judged - prev_judged
        cols["slo_attainment"].append((met - prev_met) / d_judged if d_judged else np.nan)
        cols["slo_attainment_cum"].append(met / judged if judged else np.nan)
        prev_t, prev_arr, prev_met, prev_judged = t, arrived, met, judged
    return {k: np.asarray(v) for k, v in cols.items()}, sim.outcome(final=True)


def plot_timeline(series: Mapping[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Five stacked panels sharing the time axis; returns the PNG path."""
    plt = _pyplot()
    t = np.asarray(series["t_s"])
    fig, axes = plt.subplots(5, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(t, series["arrivals_per_s"], color="tab:blue")
    axes[0].set_ylabel("arrivals/s")
    axes[1].plot(t, series["queue_len"], color="tab:orange")
    axes[1].set_ylabel("queued")
    axes[2].step(t, series["active_replicas"], where="post", label="active", color="tab:green")
    axes[2].step(t, series["up_replicas"], where="post", label="active+starting", color="tab:olive", ls="--")
    axes[2].set_ylabel("replicas")
    axes[2].legend(loc="upper left", fontsize="small")
    axes[3].plot(t, series["kv_util"], color="tab:purple")
    axes[3].set_ylabel("KV util")
    axes[3].set_ylim(0, 1.05)
    axes[4].plot(t, series["slo_attainment"], label="per slice", color="tab:red", alpha=0.6)
    axes[4].plot(t, series["slo_attainment_cum"], label="cumulative", color="black")
    axes[4].set_ylabel("SLO attainment")
    axes[4].set_ylim(0, 1.05)
    axes[4].set_xlabel("simulated time (s)")
    axes[4].legend(loc="lower left", fontsize="small")
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def latency_samples(o: SimOutcome) -> dict[str, np.ndarray]:
    """TTFT of every arrived request with a first token, TPOT of every finished one (envs.metrics' rules)."""
    arrived = o.status != 0
    has_first = arrived & ~np.isnan(o.first_token_s)
    fin = o.status == STATUS_FINISHED
    steps = o.output_tokens[fin].astype(np.float64) - 1.0
    tpot = np.where(steps > 0, (o.finish_s[fin] - o.first_token_s[fin]) / np.maximum(steps, 1.0), 0.0)
    return {"ttft_s": o.first_token_s[has_first] - o.arrival_s[has_first], "tpot_s": tpot}


def plot_latency_cdfs(
    outcomes: Mapping[str, SimOutcome],
    path: str | Path,
    ttft_slo_s: float | None = None,
    tpot_slo_s: float | None = None,
    title: str = "",
) -> Path:
    """Empirical CDFs of TTFT and TPOT, one line per policy (log x axis), with the SLOs as vertical lines."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, o in outcomes.items():
        samples = latency_samples(o)
        for ax, key in zip(axes, ("ttft_s", "tpot_s"), strict=True):
            x = np.sort(samples[key])
            if x.size:
                ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", label=label)
    for ax, key, slo in zip(axes, ("TTFT (s)", "TPOT (s)"), (ttft_slo_s, tpot_slo_s), strict=True):
        if slo is not None:
            ax.axvline(slo, color="grey", ls=":", label="SLO")
        ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_attainment_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    threshold: float = 0.9,
    goodput: Mapping[str, float] | None = None,
    xlabel: str = "request rate (req/s)",
    title: str = "",
) -> Path:
    """SLO attainment against rate, one line per policy, with the attainment target and each crossing."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (x, y) in curves.items():
        (line,) = ax.plot(x, y, marker="o", label=label)
        g = (goodput or {}).get(label)
        if g is not None and np.isfinite(g):
            ax.axvline(g, color=line.get_color(), ls=":", alpha=0.8)
    ax.axhline(threshold, color="grey", ls="--", label=f"{threshold:.0%} target")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("SLO attainment")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path
