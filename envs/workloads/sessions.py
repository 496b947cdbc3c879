"""Agentic session workloads: chains of LLM calls with tool/think pauses, for the core's closed loop.

A session is a task of S steps (S geometric with a configured mean, capped). Sessions start by an arrival
process. Each step is one LLM call: step 0's prompt is a first prompt (system prompt and task); step k's
prompt is step k-1's prompt plus step k-1's output plus new input tokens (a tool result or a user turn), so
the context only grows and consecutive steps share their prefix. Step k > 0 arrives a pause after step k-1
finishes; the simulator decides when that is (``envs/sim/sessions.py``), so its ``arrival_s`` is +inf here.
A session stops early at the first step whose prompt plus output would exceed ``max_context_tokens``.

Prefix blocks follow Mooncake's 512-token block hashes: full block b of session s hashes to the same value at
every step (the context is append-only, so the first 512(b+1) tokens are the same), which lets the prefix
cache of the replica that served step k-1 serve step k's shared prefix. A partial last block is unique to its
step: it is not the same 512 tokens at the next step. Hashes are negative and namespaced by the source index
(like the unique blocks of ``attach_prefixes``): -((source+1) << 40 | session << 12 | slot), slot = b for a
full block (b < 2048, so 1M tokens of context) and 2048 + step for the partial one (steps <= 2048).

Everything is vectorized numpy over all steps at once, drawn from the given generator.
"""

from __future__ import annotations

import math

import numpy as np

from servegym.envs.scenario import PauseSpec, SessionSource, StepsSpec, TokenDistSpec
from servegym.envs.workloads.requests import PREFIX_BLOCK_TOKENS, RequestTable, SessionColumns
from servegym.envs.workloads.synthetic import ArrivalSpec, DiurnalSpec, generate_arrivals

# Hash layout (module docstring): 12 bits of block slot under each session, 28 bits of session per source.
_SLOT_BITS = 12
_PARTIAL_SLOT = 2048
_MAX_SESSIONS = 1 << 28


def _lognormal(rng: np.random.Generator, mean: float, cv: float, n: int) -> np.ndarray:
    """Lognormal draws with this mean and coefficient of variation (constant when cv = 0)."""
    if cv == 0:
        return np.full(n, float(mean))
    sig = math.sqrt(math.log1p(cv * cv))
    return np.exp(rng.standard_normal(n) * sig + (math.log(mean) - sig * sig / 2))


def _tokens(rng: np.random.Generator, spec: TokenDistSpec, n: int) -> np.ndarray:
    x = np.rint(_lognormal(rng, spec.mean, spec.cv, n))
    return np.clip(x, spec.min, spec.max if spec.max is not None else np.iinfo(np.int32).max).astype(np.int64)


def _steps(rng: np.random.Generator, spec: StepsSpec, n: int) -> np.ndarray:
    # geometric on {1, 2, ...} with success probability 1/mean has mean `mean`
    return np.minimum(rng.geometric(1.0 / spec.mean, size=n), spec.max).astype(np.int64)


def _pauses(rng: np.random.Generator, spec: PauseSpec, n: int) -> np.ndarray:
    if spec.mean_s == 0:
        return np.zeros(n)
    return _lognormal(rng, spec.mean_s, spec.cv, n)


def generate_sessions(
    rng: np.random.Generator, src: SessionSource, tenant: int, horizon_s: float, source: int
) -> RequestTable:
    """The steps of every session of ``src`` starting in [0, horizon_s): first steps sorted by arrival, then
    the later steps (arrival +inf) session by session in step order."""
    a = src.arrival
    diurnal = None
    if a.diurnal is not None:
        diurnal = DiurnalSpec(a.diurnal.period_s, a.diurnal.peak_to_trough, a.diurnal.peak_time_s)
    start = generate_arrivals(rng, ArrivalSpec(a.process, a.rate_per_s, a.cv, diurnal), horizon_s)
    n_sess = start.shape[0]
    if n_sess >= _MAX_SESSIONS:
        raise ValueError(f"{n_sess} sessions; the prefix-hash layout has room for {_MAX_SESSIONS - 1}")
    n_steps = _steps(rng, src.steps, n_sess)
    total = int(n_steps.sum())
    first = np.zeros(n_sess + 1, dtype=np.int64)
    np.cumsum(n_steps, out=first[1:])
    sess = np.repeat(np.arange(n_sess, dtype=np.int64), n_steps)
    step = np.arange(total, dtype=np.int64) - first[sess]
    is_first = step == 0

    max_ctx = src.max_context_tokens
    out = np.minimum(_tokens(rng, src.output, total), max_ctx // 2)  # room for a prompt at step 0
    new_in = np.where(is_first, _tokens(rng, src.first_prompt, total), _tokens(rng, src.step_input, total))
    new_in[is_first] = np.minimum(new_in[is_first], max_ctx - out[is_first])
    pause = np.where(is_first, 0.0, _pauses(rng, src.pause, total))
    # prompt_k = sum_{j<=k} new_in_j + sum_{j<k} out_j, per session (a global cumsum less the session's base)
    grown = np.cumsum(new_in + out) - out
    base = np.concatenate([[0], np.cumsum(new_in + out)])[first[:-1]]
    prompt = grown - base[sess]
    # the context is monotone, so the steps that fit form a prefix of each session
    fits = prompt + out <= max_ctx
    keep = _prefix_of_sessions(fits, sess, first)
    sess, step, prompt, out, pause = sess[keep], step[keep], prompt[keep], out[keep], pause[keep]
    total = int(keep.sum())
    n_kept = np.bincount(sess, minlength=n_sess)
    steps_left = n_kept[sess] - 1 - step

    # rows: first steps (already in start-time order), then later steps in (session, step) order
    order = np.concatenate([np.flatnonzero(step == 0), np.flatnonzero(step > 0)])
    new_row = np.empty(total, dtype=np.int64)
    new_row[order] = np.arange(total)
    has_next = steps_left > 0
    nxt = np.full(total, -1, dtype=np.int64)
    nxt[has_next] = new_row[np.flatnonzero(has_next) + 1]  # the next step is the next kept row
    arrival = np.where(step == 0, start[sess], np.inf)

    prompt_o = prompt[order]
    sess_o = sess[order]
    step_o = step[order]
    nb = (prompt_o + PREFIX_BLOCK_TOKENS - 1) // PREFIX_BLOCK_TOKENS
    offsets = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(nb, out=offsets[1:])
    owner = np.repeat(np.arange(total), nb)
    pos = np.arange(offsets[-1], dtype=np.int64) - offsets[owner]
    full = (pos + 1) * PREFIX_BLOCK_TOKENS <= prompt_o[owner]
    slot = np.where(full, pos, _PARTIAL_SLOT + step_o[owner])
    hashes = -(((source + 1) << 40) | (sess_o[owner] << _SLOT_BITS) | slot)

    return RequestTable(
        arrival_s=np.ascontiguousarray(arrival[order], dtype=np.float64),
        prompt_tokens=prompt_o.astype(np.int32),
        output_tokens=out[order].astype(np.int32),
        tenant=np.full(total, tenant, dtype=np.int16),
        prefix_offsets=offsets,
        prefix_hashes=hashes.astype(np.int64),
        sessions=SessionColumns(
            next=nxt[order],
            pause_s=np.ascontiguousarray(pause[order], dtype=np.float64),
            session=sess_o.astype(np.int32),
            step=step_o.astype(np.int32),
            steps_left=steps_left[order].astype(np.int32),
        ),
    )


def _prefix_of_sessions(ok: np.ndarray, sess: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Mask of the steps before each session's first step with ``ok`` False (steps in session order)."""
    bad_before = np.cumsum(~ok) - (~ok)  # failures strictly before each step, globally
    base = np.concatenate([[0], np.cumsum(~ok)])[first[:-1]]
    return ok & (bad_before - base[sess] == 0)
