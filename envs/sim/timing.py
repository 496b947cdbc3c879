"""Timing versions: which engine profile and which context rule a run's dynamics follow.

A change of timing changes every result, so timing is versioned like the suite and the env ids:

- ``v0``: the Splitwise-era overheads (``engine: splitwise`` for every pool) and no context limit. Suite v0,
  its leaderboard entries and the ``servegym/*-v0`` env ids replay with it bit for bit.
- ``v1`` (the default of ``Simulator``, the CLI and the ``servegym/*-v1`` env ids): each pool's ``engine``
  (default ``vllm``, envs/perf/engines.py) and each model's context limit (envs/perf/specs.py
  ``max_context``), with the scenario's ``context_policy`` for requests that exceed it.

A scenario's explicit ``timing:`` wins over the caller's default; a pool's explicit ``engine:`` wins over
its timing version's engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from servegym.envs.perf.specs import get_model
from servegym.envs.scenario import PoolConfig, Scenario
from servegym.envs.workloads.requests import RequestTable

DEFAULT_TIMING = "v1"
TIMING_ENGINE = {"v0": "splitwise", "v1": "vllm"}
TIMING_CONTEXT_LIMIT = {"v0": False, "v1": True}
# Busy time (util/busy) counts an iteration still running at the snapshot only up to the snapshot's time.
# v0 credits it in full when it starts, so a replica busy to the horizon reads util/busy up to ~1.0002; kept
# for v0 because its published leaderboard entries replay that accounting bit for bit.
TIMING_BUSY_TO_NOW = {"v0": False, "v1": True}


def resolve_timing(scenario: Scenario, default: str | None = None) -> str:
    """The run's timing version: the scenario's, else the caller's default, else DEFAULT_TIMING."""
    t = scenario.timing or default or DEFAULT_TIMING
    if t not in TIMING_ENGINE:
        raise ValueError(f"unknown timing version {t!r}; known: {sorted(TIMING_ENGINE)}")
    return t


def pool_engine(pool: PoolConfig, timing: str) -> str:
    return pool.engine or TIMING_ENGINE[timing]


def tenant_context_limits(scenario: Scenario, timing: str) -> np.ndarray | None:
    """Max prompt + output tokens per tenant (its model's context), or None when the timing has no limit."""
    if not TIMING_CONTEXT_LIMIT[timing]:
        return None
    first = scenario.pools[0].model
    return np.array([get_model(t.model or first).max_context for t in scenario.tenants], dtype=np.int64)


@dataclass(frozen=True)
class ContextCounts:
    """What the context rule did at load: requests removed (reject) and prompts shortened (truncate)."""

    rejected: int = 0
    truncated: int = 0


def apply_context_policy(
    requests: RequestTable, limits: np.ndarray | None, policy: str
) -> tuple[RequestTable, ContextCounts]:
    """Enforce the per-tenant context ``limits`` on a request table at load.

    ``reject``: over-long requests leave the table (a later session step that is rejected ends its session
    there: every later step of that session leaves too). ``truncate``: the output is capped at limit - 1 and
    the prompt at limit - output, keeping the prompt's last tokens (left truncation), so its prefix-block
    hashes no longer describe it and are removed (no prefix-cache hits). ``drop``: the table is unchanged;
    the core drops such requests on arrival (envs/sim/core.py fits_any_pool) and the metrics count them.
    """
    if limits is None or len(requests) == 0:
        return requests, ContextCounts()
    lim = limits[requests.tenant.astype(np.intp)]
    total = requests.prompt_tokens.astype(np.int64) + requests.output_tokens
    over = total > lim
    if not over.any() or policy == "drop":
        return requests, ContextCounts()
    if policy == "reject":
        cut = over
        sess = requests.sessions
        if sess is not None:  # the rest of a session after a rejected step cannot happen either
            in_s = sess.session >= 0
            first_bad = np.full(int(sess.session.max(initial=-1)) + 1, np.iinfo(np.int32).max, dtype=np.int64)
            np.minimum.at(first_bad, sess.session[over & in_s], sess.step[over & in_s])
            cut = over | (in_s & (sess.step >= first_bad[np.where(in_s, sess.session, 0)]))
        return requests.take(np.flatnonzero(~cut)), ContextCounts(rejected=int(cut.sum()))
    if policy != "truncate":
        raise ValueError(f"unknown context_policy {policy!r}")
    out = np.minimum(requests.output_tokens.astype(np.int64), lim - 1)
    prompt = np.minimum(requests.prompt_tokens.astype(np.int64), lim - out)
    nb = np.diff(requests.prefix_offsets)
    keep_blocks = np.where(over, 0, nb)
    offsets = np.zeros(len(requests) + 1, dtype=np.int64)
    np.cumsum(keep_blocks, out=offsets[1:])
    owner = np.repeat(np.arange(len(requests)), nb)
    hashes = requests.prefix_hashes[~over[owner]] if nb.sum() else requests.prefix_hashes
    table = RequestTable(
        arrival_s=requests.arrival_s,
        prompt_tokens=prompt.astype(np.int32),
        output_tokens=out.astype(np.int32),
        tenant=requests.tenant,
        prefix_offsets=offsets,
        prefix_hashes=np.ascontiguousarray(hashes, dtype=np.int64),
        sessions=requests.sessions,
    )
    return table, ContextCounts(truncated=int(over.sum()))


def context_fields(limits: np.ndarray | None, counts: ContextCounts, tenant: np.ndarray) -> dict:
    """SimOutcome's context fields: none under a timing without a limit (v0 outcomes stay as they were)."""
    if limits is None:
        return {}
    return {
        "context_limit": limits[tenant.astype(np.intp)].astype(np.int32),
        "context_rejected": counts.rejected,
        "context_truncated": counts.truncated,
    }
