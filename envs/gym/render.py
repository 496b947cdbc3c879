"""Rendering: a text snapshot of the cluster ("ansi") and a small matplotlib picture ("rgb_array").

matplotlib is imported only when a picture is drawn, so the envs do not depend on it.
"""

from __future__ import annotations

import numpy as np

from servegym.envs.sim import state as S
from servegym.envs.sim.simulator import Simulator

STATE_NAMES = {
    S.RS_OFF: "off",
    S.RS_STARTING: "starting",
    S.RS_ACTIVE: "active",
    S.RS_DRAINING: "draining",
    S.RS_FAILED: "failed",
}


def ansi(sim: Simulator, decision: str) -> str:
    st = sim.state
    c = sim.counts()
    lines = [
        f"t={sim.now:9.3f}s / {sim.scenario.horizon_s:g}s  scenario={sim.scenario.name}  pending={decision}",
        f"arrived={c['arrived']} finished={c['finished']} dropped={c['dropped']} in_flight={c['in_flight']} "
        f"held={c['held']} slo_met={int(st.cnt[S.K_SLO_MET])}",
        "replica pool                state     queue running   kv",
    ]
    names = [p.name for p in sim.scenario.pools]
    for r in range(st.repi.shape[1]):
        s = int(st.repi[S.XI_STATE, r])
        kv = st.repi[S.XI_KV_USED, r] / st.repi[S.XI_KV_CAP, r]
        running = int(st.repi[S.XI_ND, r] + st.repi[S.XI_NPF, r])
        bar = "#" * int(round(kv * 10))
        lines.append(
            f"{r:7d} {names[int(st.repi[S.XI_POOL, r])][:18]:18s} {STATE_NAMES[s]:9s} "
            f"{int(st.repi[S.XI_QN, r]):5d} {running:7d} {kv:5.1%} {bar}"
        )
    return "\n".join(lines) + "\n"


def rgb(history: list, sim: Simulator, decision: str) -> np.ndarray:
    """Queues, KV use and replica states over the recorded steps (or the current state alone)."""
    # A bare Figure on the Agg canvas: no pyplot, so the user's backend and open figures are left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    st = sim.state
    if not history:
        kv = st.repi[S.XI_KV_USED] / st.repi[S.XI_KV_CAP]
        history = [(sim.now, st.repi[S.XI_QN].copy(), kv, st.repi[S.XI_STATE].copy())]
    t = np.array([h[0] for h in history])
    queue = np.stack([h[1] for h in history])
    kv = np.stack([h[2] for h in history])
    states = np.stack([h[3] for h in history])
    fig = Figure(figsize=(4.0, 4.0), dpi=80)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1)
    axes[0].plot(t, queue)
    axes[0].set_ylabel("queue", fontsize=7)
    axes[0].set_title(f"{sim.scenario.name}  t={sim.now:.1f}s  pending={decision}", fontsize=7)
    axes[1].plot(t, kv)
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("KV use", fontsize=7)
    axes[2].imshow(states.T, aspect="auto", interpolation="nearest", vmin=0, vmax=3, cmap="viridis")
    axes[2].set_ylabel("replica\nstate", fontsize=7)
    for ax in axes:
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
