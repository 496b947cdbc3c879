"""Forking a run: copies of the packed state, and handing pending decisions back to the built-in rules.

A run is a pure function of its ``SimState`` (every random draw comes from the state's own xorshift64*
word, ``st.rng``), so a copy of its packed arrays is a complete, independent snapshot: continued with
the same decisions, a copy reproduces the original bit for bit (tested in tests/test_fork.py). Planners
(servegym.baselines.planning) fork a run at a decision, try an action, and let ``release_control`` give
every later decision to the scenario's built-in rules for a rollout.
"""

from __future__ import annotations

from servegym.envs.sim.admission import builtin_verdict, settle
from servegym.envs.sim.disagg import builtin_decode_route, start_transfer
from servegym.envs.sim.jit import kernel
from servegym.envs.sim.queues import hold_push
from servegym.envs.sim.replica import admit_builtin, budget_left, launch
from servegym.envs.sim.routing import builtin_route, enqueue
from servegym.envs.sim.scaling import builtin_scale
from servegym.envs.sim.state import (
    C_NOW,
    K_CTRL_ADMIT,
    K_CTRL_BATCH,
    K_CTRL_ROUTE,
    K_CTRL_SCALE,
    K_FORM_REPLICA,
    K_PENDING_ADMIT,
    K_PENDING_ROUTE,
    K_PENDING_SCALE,
    K_ROUTE_PHASE,
    K_XFER_RETRY,
    SimState,
)


def copy_state(st: SimState) -> SimState:
    """An independent copy of every array of ``st`` (what ``Simulator.snapshot`` returns)."""
    return SimState(*(a.copy() for a in st))


def copy_into(dst: SimState, src: SimState) -> None:
    """Overwrite ``dst``'s arrays in place with ``src``'s (same run: same shapes), keeping their identity."""
    for name, a, b in zip(SimState._fields, dst, src, strict=True):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(
                f"restore: snapshot field {name!r} is {b.dtype}{list(b.shape)} but this run's is "
                f"{a.dtype}{list(a.shape)}; a snapshot restores only into the run it was taken from"
            )
        a[...] = b


@kernel
def release_control(st):
    """Stop handing decisions to the caller, and settle the pending one with the built-in rule.

    A pending route goes where the scenario's routing rule sends it (or to the hold queue), a batch being
    formed is completed by the batching rule and launched, a pending scaling tick is taken by the scaling
    rule, exactly as ``advance`` does when the caller controls nothing.
    """
    st.cnt[K_CTRL_ROUTE] = 0
    st.cnt[K_CTRL_BATCH] = 0
    st.cnt[K_CTRL_SCALE] = 0
    st.cnt[K_CTRL_ADMIT] = 0
    now = st.clock[C_NOW]
    j = st.cnt[K_PENDING_ADMIT]
    if j >= 0:  # an arrival waiting for admission (admission.py): the built-in rule, then built-in routing
        st.cnt[K_PENDING_ADMIT] = -1
        if settle(st, j, builtin_verdict(st, j, now), now):
            r = builtin_route(st, j)
            if r < 0:
                hold_push(st, j, now)
            else:
                enqueue(st, j, r, now)
    i = st.cnt[K_PENDING_ROUTE]
    if i >= 0 and st.cnt[K_ROUTE_PHASE]:  # a KV cache's decode replica (disagg.py)
        st.cnt[K_PENDING_ROUTE] = -1
        st.cnt[K_ROUTE_PHASE] = 0
        start_transfer(st, i, builtin_decode_route(st, i), now)  # it had a candidate when handed out
        st.cnt[K_XFER_RETRY] = 1
    elif i >= 0:
        st.cnt[K_PENDING_ROUTE] = -1
        r = builtin_route(st, i)
        if r < 0:
            hold_push(st, i, now)
        else:
            enqueue(st, i, r, now)
    r = st.cnt[K_FORM_REPLICA]
    if r >= 0:
        admit_builtin(st, r, budget_left(st, r), now)
        launch(st, r, now)
        st.cnt[K_FORM_REPLICA] = -1
    if st.cnt[K_PENDING_SCALE]:
        st.cnt[K_PENDING_SCALE] = 0
        builtin_scale(st, now)
