"""Step kernels of the envs: validate and apply an action, advance the core, reward, observe.

One env reset or step is one compiled call (``env_call``), and a step of N envs is one call (``vec_step``)
over ``numba.typed.List``s of the simulators' ``SimState`` tuples and the envs' ``EnvAux`` tuples: Python work
per step stays at unpacking the result. Both paths run the same ``env_core``, so sub-env i of the vector env
is bit-identical to a single env.

Compilation follows the core (envs/sim/jit.py): helpers are ``hot`` (inlined); ``advance`` and ``observe``
are kernels. numba optimises and emits a kernel's code again in every library that calls it, so reset and
step share one kernel (``env_core``) with one call of each, and the single env's entry point ``env_call`` and
the vector env's entry points all call that one compiled copy. Before, separate reset and step kernels and
their wrappers emitted the event loop five times on a first reset() and step().
The entry points that allocate fresh arrays are plain njit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from servegym.envs.gym.aux_state import (
    AF_PREV_COST,
    AF_PREV_GAP,
    AF_W,
    AI_A_BATCH,
    AI_A_ROUTE,
    AI_A_SCALE,
    AI_DONE,
    AI_EV,
    AI_K,
    AI_M_BATCH,
    AI_M_ROUTE,
    AI_M_SCALE,
    AI_MASK_N,
    AI_NACT,
    AI_NF,
    AI_NI,
    AI_NOOP,
    AI_OBS_N,
    AI_P,
    AI_PPAD,
    AI_PREV_DROPS,
    AI_PREV_MET,
    AI_PREV_MISS,
    AI_PREV_TOK,
    AI_R,
    AI_ROUTES,
    AI_RPAD,
    AI_SK,
    INF,
)
from servegym.envs.gym.decisions import observe
from servegym.envs.gym.features import cost_usd, drained
from servegym.envs.sim.core import advance, apply_admit, apply_route, apply_scale, apply_start, finalize
from servegym.envs.sim.jit import hot, kernel
from servegym.envs.sim.routing import builtin_pending_route, pending_allowed
from servegym.envs.sim.scaling import pool_counts
from servegym.envs.sim.state import (
    C_MAX_GAP,
    EV_BATCH,
    EV_DONE,
    EV_ROUTE,
    EV_SCALE,
    K_DROPS,
    K_ROUTE_PHASE,
    K_SLO_MET,
    K_SLO_MET_TOKENS,
    K_SLO_MISSED_FINISHED,
    PI_MAX,
    PI_MIN,
    PI_SCALE_DELTA,
)

N_RC = 8  # 7 raw reward components, then the weighted reward
ST_RUNNING, ST_TRUNCATED, ST_TERMINATED = 0, 1, 2
ERR_RANGE, ERR_MASKED = -1, -2


# ---------------------------------------------------------------- actions


@hot
def validate(st, ax, act):
    """(0, -1) if ``act`` is a valid answer to the pending decision, else (ERR_RANGE|ERR_MASKED, dim)."""
    ai = ax.ai
    k = ai[AI_K]
    sk = ai[AI_SK]
    for d in range(ai[AI_NACT]):
        if d == ai[AI_A_ROUTE]:
            n = ai[AI_RPAD]
        elif d == ai[AI_A_BATCH]:
            n = k + 1
        else:
            n = 2 * sk + 1
        if act[d] < 0 or act[d] >= n:
            return ERR_RANGE, d
    ev = ai[AI_EV]
    if ev == EV_ROUTE:
        d = ai[AI_A_ROUTE]
        r = act[d]
        if r >= ai[AI_R] or not pending_allowed(st, r):
            return ERR_MASKED, d
    elif ev == EV_BATCH:
        d = ai[AI_A_BATCH]
        j = act[d]
        if j < k and ax.cand[1, j] == 0:
            return ERR_MASKED, d
    elif ev == EV_SCALE:
        for p in range(ai[AI_PPAD]):
            d = ai[AI_A_SCALE] + p
            delta = act[d] - sk
            if delta == 0:
                continue
            if p >= ai[AI_P]:
                return ERR_MASKED, d
            n_up, _ = pool_counts(st, p)
            if not st.pooli[PI_MIN, p] <= n_up + delta <= st.pooli[PI_MAX, p]:
                return ERR_MASKED, d
    return 0, -1


@hot
def apply_action(st, ax, act, invalid):
    """Answer the pending decision; an invalid action (noop mode) becomes that decision's no-op."""
    ai = ax.ai
    ev = ai[AI_EV]
    if ev == EV_ROUTE:
        new_request = st.cnt[K_ROUTE_PHASE] == 0  # else a KV cache's decode replica (disaggregation)
        r = builtin_pending_route(st) if invalid else act[ai[AI_A_ROUTE]]
        apply_route(st, r)
        if new_request:  # the round-robin pointer counts new requests, as the core's
            ai[AI_ROUTES] += 1
    elif ev == EV_BATCH:
        j = act[ai[AI_A_BATCH]]
        if invalid or j == ai[AI_K]:
            apply_start(st)
        else:
            apply_admit(st, ax.cand[0, j])
    elif ev == EV_SCALE:
        for p in range(st.pooli.shape[1]):
            st.pooli[PI_SCALE_DELTA, p] = 0 if invalid else act[ai[AI_A_SCALE] + p] - ai[AI_SK]
        apply_scale(st)


@hot
def mark_counters(st, ax):
    """Start the reward bookkeeping from the current state."""
    ai = ax.ai
    ai[AI_PREV_MET] = st.cnt[K_SLO_MET]
    ai[AI_PREV_TOK] = st.cnt[K_SLO_MET_TOKENS]
    ai[AI_PREV_MISS] = st.cnt[K_SLO_MISSED_FINISHED]
    ai[AI_PREV_DROPS] = st.cnt[K_DROPS]
    ax.af[AF_PREV_COST] = cost_usd(st, ax)
    ax.af[AF_PREV_GAP] = st.clock[C_MAX_GAP]


@hot
def rewards(st, ax, rc, invalid):
    ai = ax.ai
    af = ax.af
    rc[0] = st.cnt[K_SLO_MET] - ai[AI_PREV_MET]
    rc[1] = st.cnt[K_SLO_MET_TOKENS] - ai[AI_PREV_TOK]
    rc[2] = st.cnt[K_SLO_MISSED_FINISHED] - ai[AI_PREV_MISS]
    rc[3] = st.cnt[K_DROPS] - ai[AI_PREV_DROPS]
    prev_cost = af[AF_PREV_COST]
    prev_gap = af[AF_PREV_GAP]
    mark_counters(st, ax)
    rc[4] = af[AF_PREV_COST] - prev_cost
    rc[5] = af[AF_PREV_GAP] - prev_gap
    rc[6] = invalid
    total = 0.0
    for c in range(7):
        total += af[AF_W + c] * rc[c]
    rc[7] = total


@kernel
def env_core(st, ax, act, obs, mask, ii, ff, rc, reset):
    """A reset (advance a fresh simulator to its first decision) or one step, observed into zeroed buffers.

    Returns (status, dim): for a step, status < 0 is an invalid action (state unchanged) and otherwise
    ST_RUNNING / ST_TRUNCATED / ST_TERMINATED; for a reset, status is the pending event code. Both share one
    call of the core and of the observation, so the event loop is compiled once per entry point.
    """
    ai = ax.ai
    invalid = 0
    dim = -1
    if not reset:
        code, dim = validate(st, ax, act)
        if code != 0:
            if ai[AI_NOOP] == 0:
                return code, dim
            invalid = 1
        apply_action(st, ax, act, invalid)
    ev = advance(st, INF)
    if reset:
        status = ev
        ai[AI_EV] = ev
        ai[AI_DONE] = 1 if ev == EV_DONE else 0
        ai[AI_ROUTES] = 0
        mark_counters(st, ax)
    else:
        status = ST_RUNNING
        if ev == EV_DONE:
            finalize(st)  # overdue waits count as drops in this last step's reward, as in the metrics
            status = ST_TERMINATED if drained(st) else ST_TRUNCATED
        elif drained(st):
            status = ST_TERMINATED
        if status != ST_RUNNING:
            ai[AI_DONE] = 1
            ev = EV_DONE
        ai[AI_EV] = ev
        rewards(st, ax, rc, invalid)
    observe(st, ax, obs, mask, ii, ff)
    return status, dim


# ---------------------------------------------------------------- allocating entry points


@njit(cache=True)
def _buffers(ax, n):
    ai = ax.ai
    obs = np.zeros((n, ai[AI_OBS_N]), np.float32)
    mask = np.zeros((n, ai[AI_MASK_N]), np.int8)
    ii = np.zeros((n, ai[AI_NI]), np.int64)
    ff = np.zeros((n, ai[AI_NF]), np.float64)
    return obs, mask, ii, ff


@njit(cache=True)
def env_call(st, ax, act, reset):
    """The single env's reset (``reset=True``, ``act`` ignored) or step: one compiled call either way.

    Returns (status, dim, pending event, obs, mask, ii, ff, reward components); see ``env_core``.
    """
    obs, mask, ii, ff = _buffers(ax, 1)
    rc = np.zeros(N_RC)
    status, dim = env_core(st, ax, act, obs[0], mask[0], ii[0], ff[0], rc, reset)
    return status, dim, ax.ai[AI_EV], obs[0], mask[0], ii[0], ff[0], rc


@njit(cache=True)
def vec_reset(states, auxs, envs):
    """Reset-observe the sub-envs listed in ``envs`` (their simulators are fresh); other rows stay zero."""
    n = len(states)
    obs, mask, ii, ff = _buffers(auxs[0], n)
    evs = np.zeros(n, np.int64)
    act = np.zeros(auxs[0].ai[AI_NACT], np.int64)  # unread by a reset
    rc = np.zeros(N_RC)
    for j in envs:
        evs[j], _ = env_core(states[j], auxs[j], act, obs[j], mask[j], ii[j], ff[j], rc, True)
    return evs, obs, mask, ii, ff


@njit(cache=True)
def vec_reset_into(states, auxs, j, obs, mask, ii, ff):
    """Same-step autoreset of sub-env j: overwrite its rows with the first observation of the new episode."""
    obs[j] = 0
    mask[j] = 0
    ii[j] = 0
    ff[j] = 0
    act = np.zeros(auxs[j].ai[AI_NACT], np.int64)  # unread by a reset
    rc = np.zeros(N_RC)
    ev, _ = env_core(states[j], auxs[j], act, obs[j], mask[j], ii[j], ff[j], rc, True)
    return ev


@hot
def mask_check(ai, ev, act, mask):
    """``validate`` against the mask the env returned for this decision: no simulator state is read."""
    sk = ai[AI_SK]
    ns = 2 * sk + 1
    for d in range(ai[AI_NACT]):
        if d == ai[AI_A_ROUTE]:
            n = ai[AI_RPAD]
            m = ai[AI_M_ROUTE]
            relevant = ev == EV_ROUTE
        elif d == ai[AI_A_BATCH]:
            n = ai[AI_K] + 1
            m = ai[AI_M_BATCH]
            relevant = ev == EV_BATCH
        else:
            n = ns
            m = ai[AI_M_SCALE] + (d - ai[AI_A_SCALE]) * ns
            relevant = ev == EV_SCALE
        v = act[d]
        if v < 0 or v >= n:
            return ERR_RANGE, d
        if relevant and mask[m + v] == 0:
            return ERR_MASKED, d
    return 0, -1


@njit(cache=True)
def first_invalid(ai0, acts, prev_mask, prev_evs):
    """In raise mode, (sub-env, error code, action dim) of the first action the previous mask forbids."""
    if ai0[AI_NOOP] == 0:
        for j in range(acts.shape[0]):
            code, dim = mask_check(ai0, prev_evs[j], acts[j], prev_mask[j])
            if code != 0:
                return j, code, dim
    return -1, 0, -1


@njit(cache=True)
def _rejected(auxs, bad, code, dim):
    """vec_step's answer when sub-env ``bad`` got an invalid action: nothing was stepped."""
    obs, mask, ii, ff = _buffers(auxs[0], 0)
    none = np.zeros(0, np.int64)
    return bad, code, dim, none, none, obs, mask, ii, ff, np.zeros((0, N_RC))


@njit(cache=True)
def _step_buffers(auxs, n):
    obs, mask, ii, ff = _buffers(auxs[0], n)
    return obs, mask, ii, ff, np.zeros((n, N_RC)), np.zeros(n, np.int64), np.zeros(n, np.int64)


@hot
def _step_sub(states, auxs, acts, j, obs, mask, ii, ff, rc, status, evs):
    """Step sub-env j into row j of the batch buffers (shared by the serial and the threaded loop)."""
    ax = auxs[j]
    s, _ = env_core(states[j], ax, acts[j], obs[j], mask[j], ii[j], ff[j], rc[j], False)
    status[j] = s
    evs[j] = ax.ai[AI_EV]


@njit(cache=True)
def vec_step(states, auxs, acts, prev_mask, prev_evs, ai0):
    """Step every sub-env; ``ai0`` is sub-env 0's ``ai`` (all share the layout).

    In raise mode every action is first checked against the mask returned with the previous observation,
    so an invalid one changes nothing. Returns (bad env or -1, error code, dim, status[N], pending
    event[N], obs, mask, ii, ff, rc).
    """
    n = len(states)
    bad, code, dim = first_invalid(ai0, acts, prev_mask, prev_evs)
    if bad >= 0:
        return _rejected(auxs, bad, code, dim)
    obs, mask, ii, ff, rc, status, evs = _step_buffers(auxs, n)
    for j in range(n):
        _step_sub(states, auxs, acts, j, obs, mask, ii, ff, rc, status, evs)
    return -1, 0, -1, status, evs, obs, mask, ii, ff, rc


@njit(cache=True, parallel=True)
def vec_step_parallel(states, auxs, acts, prev_mask, prev_evs, ai0):
    """``vec_step`` with the sub-envs spread over numba's threads (same results: envs are independent)."""
    n = len(states)
    bad, code, dim = first_invalid(ai0, acts, prev_mask, prev_evs)
    if bad >= 0:
        return _rejected(auxs, bad, code, dim)
    obs, mask, ii, ff, rc, status, evs = _step_buffers(auxs, n)
    for jj in prange(n):
        # prange counts unsigned; the typed List wants a signed index
        _step_sub(states, auxs, acts, np.int64(jj), obs, mask, ii, ff, rc, status, evs)
    return -1, 0, -1, status, evs, obs, mask, ii, ff, rc
