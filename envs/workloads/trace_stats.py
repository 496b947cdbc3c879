"""Summary statistics of a request trace, to size a scenario on it (``servegym trace-stats FILE``).

Rows, time span and mean rate, the inter-arrival coefficient of variation (1 for a Poisson process; the
synthetic ``gamma`` arrival's ``cv``), prompt and output length percentiles, prefix-block reuse (traces with
prefix hashes: Mooncake ``hash_ids``, a generic CSV's ``prefix_hashes``) and the share of requests over given
context limits. The trace is read by the same loaders as a scenario's trace source (envs/workloads/traces.py),
so a file this accepts is one a scenario can replay; rows are as the loader keeps them (BurstGPT's failed
requests are dropped).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from servegym.envs.workloads.requests import RequestTable, WorkloadError
from servegym.envs.workloads.traces import load_trace

FORMATS = ("azure", "mooncake", "burstgpt", "generic")
PERCENTILES = (50, 90, 99)


def detect_format(path: str | os.PathLike) -> str:
    """The trace format from the file: JSON lines are Mooncake; a CSV is told apart by its header."""
    p = Path(path)
    with open(p, encoding="utf-8-sig", errors="replace") as f:
        first = next((line for line in f if line.strip()), "")
    if first.lstrip().startswith("{"):
        return "mooncake"
    header = {h.strip() for h in next(csv.reader([first]), [])}
    if "TIMESTAMP" in header:
        return "azure"
    if "Timestamp" in header and "Request tokens" in header:
        return "burstgpt"
    if "arrival_s" in header:
        return "generic"
    raise WorkloadError(
        f"{p}: cannot tell the trace format from its first line {first.strip()[:80]!r}; name it "
        f"(one of {', '.join(FORMATS)})",
        file=str(p),
    )


def load_for_stats(path: str | os.PathLike, fmt: str | None = None) -> tuple[RequestTable, str]:
    """The whole trace as a request table, and its format (detected when ``fmt`` is None)."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown trace format {fmt!r}; known: {', '.join(FORMATS)}")
    kwargs: dict[str, Any] = {}
    if fmt == "generic":
        names = _tenant_names(path)
        if names is not None:
            kwargs["tenant_names"] = names
    return load_trace(fmt, path, **kwargs), fmt  # type: ignore[arg-type]


def _tenant_names(path: str | os.PathLike) -> dict[str, int] | None:
    """A generic CSV's tenant names (numbered in order of appearance), or None when the column is absent or
    holds integers (the loader reads those as they are)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if "tenant" not in (reader.fieldnames or []):
            return None
        names: dict[str, int] = {}
        for row in reader:
            v = (row.get("tenant") or "").strip()
            if v.lstrip("-").isdigit():
                return None
            names.setdefault(v, len(names))
    return names


def _lengths(x: np.ndarray) -> dict[str, float]:
    out = {"mean": float(x.mean())}
    out.update({f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(x, PERCENTILES), strict=True)})
    out["max"] = float(x.max())
    return out


def prefix_reuse(table: RequestTable) -> dict[str, float] | None:
    """Prefix blocks in the trace, distinct ones, and the share of blocks whose hash an earlier block of the
    trace already had (the prefix-cache hit rate of an unbounded cache, in blocks). None without hashes."""
    hashes = table.prefix_hashes
    if hashes.shape[0] == 0:
        return None
    offsets = table.prefix_offsets
    _, first, inv = np.unique(hashes, return_index=True, return_inverse=True)
    distinct = int(first.shape[0])
    first_of_block = first[inv.reshape(-1)]  # the index of the first block with each block's hash
    block_req = np.repeat(np.arange(len(table)), np.diff(offsets))
    has = offsets[1:] > offsets[:-1]
    lead = offsets[:-1][has]  # each request's first block
    # requests whose first block an earlier request already had: they share at least one block of prefix
    shared_first = int(np.count_nonzero(block_req[first_of_block[lead]] < block_req[lead]))
    return {
        "blocks": int(hashes.shape[0]),
        "distinct_blocks": distinct,
        "reused_block_share": 1.0 - distinct / hashes.shape[0],
        "requests_with_blocks": int(np.count_nonzero(has)),
        "requests_sharing_first_block": shared_first,
    }


def trace_stats(table: RequestTable, context_limits: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Statistics of a request table; ``context_limits`` ({model: max prompt + output tokens}) adds, per
    model, the share of prompts longer than its context and of requests whose prompt + output exceed it
    (what timing v1's ``context_policy`` rejects, truncates or drops)."""
    n = len(table)
    if n == 0:
        raise ValueError("the trace has no requests")
    arr = table.arrival_s
    span = float(arr[-1] - arr[0])
    gaps = np.diff(arr)
    prompt = table.prompt_tokens.astype(np.int64)
    output = table.output_tokens.astype(np.int64)
    out: dict[str, Any] = {
        "rows": n,
        "first_arrival_s": float(arr[0]),
        "last_arrival_s": float(arr[-1]),
        "span_s": span,
        "rate_per_s": (n - 1) / span if span > 0 else float("nan"),
        "interarrival_cv": float(gaps.std() / gaps.mean()) if gaps.size and gaps.mean() > 0 else float("nan"),
        "tenants": int(np.unique(table.tenant).shape[0]),
        "prompt_tokens": _lengths(prompt),
        "output_tokens": _lengths(output),
        "prefix": prefix_reuse(table),
    }
    if context_limits:
        out["context"] = {
            model: {
                "max_context": int(limit),
                "prompt_over_share": float(np.count_nonzero(prompt > limit)) / n,
                "request_over_share": float(np.count_nonzero(prompt + output > limit)) / n,
            }
            for model, limit in context_limits.items()
        }
    return out


def format_stats(path: str, fmt: str, s: Mapping[str, Any]) -> str:
    """The statistics as the terminal table ``servegym trace-stats`` prints."""
    lines = [
        f"{path} ({fmt})",
        f"  rows              {s['rows']:,}",
        f"  span              {s['span_s']:,.1f} s ({s['first_arrival_s']:g} to {s['last_arrival_s']:g} s)",
        f"  rate              {s['rate_per_s']:.3f} req/s",
        f"  inter-arrival CV  {s['interarrival_cv']:.3f}",
        f"  tenants           {s['tenants']}",
        "  tokens            mean      p50      p90      p99      max",
    ]
    for key in ("prompt_tokens", "output_tokens"):
        d = s[key]
        lines.append(
            f"    {key.split('_')[0]:14s}{d['mean']:8.0f} {d['p50']:8.0f} {d['p90']:8.0f} {d['p99']:8.0f} "
            f"{d['max']:8.0f}"
        )
    pre = s.get("prefix")
    if pre is None:
        lines.append("  prefix blocks     none in this trace")
    else:
        lines.append(
            f"  prefix blocks     {pre['blocks']:,} ({pre['distinct_blocks']:,} distinct): "
            f"{pre['reused_block_share']:.1%} repeat an earlier block; "
            f"{pre['requests_sharing_first_block']:,} of {pre['requests_with_blocks']:,} requests share "
            "their first block with an earlier one"
        )
    ctx = s.get("context")
    if ctx:
        lines.append("  over context      model            context   prompt > ctx   prompt+output > ctx")
        for model, c in ctx.items():
            lines.append(
                f"    {model:30s} {c['max_context']:>7,}   {c['prompt_over_share']:11.2%}   "
                f"{c['request_over_share']:19.2%}"
            )
    return "\n".join(lines)
