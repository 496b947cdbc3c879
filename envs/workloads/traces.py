"""Trace loaders: public request traces -> RequestTable.

Formats (all read in chunks of lines: the CSV fast path is numpy's C parser, ~0.3 s per million rows):
- Azure LLM inference (2023 and 2024 releases): `TIMESTAMP,ContextTokens,GeneratedTokens`.
  2023 timestamps are naive wall-clock with 7 fractional digits (`2023-11-16 18:15:46.6805900`, 100 ns);
  2024 ones carry a UTC offset and up to 6 digits (`2024-05-10 00:00:00.009930+00:00`; the fraction is
  absent when it is zero). Both are parsed to int64 ns (offsets applied, so UTC); arrival is seconds since
  the first request. Ties: at 100 ns resolution two requests at the same instant are a sign of a
  duplicated row (19,366 requests/h give ~0.01 expected ties), so they are an error; at 1 us they are
  expected in a week of traffic (~1e7 rows at tens of requests/s give ~1e2), so they are legal.
  `allow_ties` overrides the rule.
- Mooncake JSONL: `{"timestamp": ms, "input_length", "output_length", "hash_ids": [...]}`; arrival is
  timestamp/1000 as given (already relative). Ties are legal (ms resolution). `hash_ids` become the
  prefix blocks; their count must be ceil(input_length / 512) (FAST25-release/README.md).
- BurstGPT CSV: `Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`; Timestamp is
  seconds from the trace start (used as given), ties legal. Failed requests are recorded with
  `Response tokens` == 0 (HPMLL/BurstGPT README); `failed="drop"` (default) removes them (they did
  no decode work, and most also have 0 request tokens), `failed="error"` rejects the file.
  `tenant_column` ("Model" or "Log Type") with `tenant_names` maps a name column to tenants.
- Generic CSV (format "generic"): header `arrival_s,prompt_tokens,output_tokens[,tenant][,prefix_hashes]`, any column
  order, extra columns ignored. arrival_s is seconds from episode start (used as given, must be >= 0).
  tenant is an int, or a name when `tenant_names` is given. prefix_hashes is space-separated int64
  block hashes (512-token blocks; may be empty); files with it take the slower Python path.
  Ties are legal unless `allow_ties=False`. Quoted fields work; fields with embedded newlines do not.

Every loader takes `tenant_index`, then `window_start_s`/`window_s` (trace seconds, RequestTable.window:
re-based to 0), `max_requests` (first N of the window), `time_scale` (RequestTable.time_scaled: 2 =
twice as fast), applied in that order. Rows past the window / request limit are not read (so not
validated). Errors are WorkloadError(file, row, field) with `row` the 1-based *line number* in the
file (the CSV header is line 1); blank lines are skipped but counted. The chunked parsing and the checks
the loaders share are in trace_parsing.py.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Literal

import numpy as np

from servegym.envs.workloads.requests import PREFIX_BLOCK_TOKENS, RequestTable, WorkloadError
from servegym.envs.workloads.trace_parsing import (
    _check_args,
    _check_rows,
    _check_tenant_names,
    _Col,
    _data_row_to_line,
    _fail,
    _finish,
    _iter_csv_chunks,
    _map_names,
    _not_utf8,
    _Skipped,
    _Stop,
)

__all__ = [
    "WorkloadError",
    "load_azure_trace",
    "load_burstgpt_trace",
    "load_generic_csv",
    "load_mooncake_trace",
    "load_trace",
]

# ---------------------------------------------------------------- loaders


def load_azure_trace(
    path: str | os.PathLike,
    *,
    tenant_index: int = 0,
    allow_ties: bool | None = None,
    window_start_s: float = 0.0,
    window_s: float | None = None,
    max_requests: int | None = None,
    time_scale: float = 1.0,
) -> RequestTable:
    """Azure LLM inference trace CSV (2023 or 2024 release). `allow_ties=None` decides from the
    timestamp resolution (ties are an error at 100 ns, legal at 1 us or coarser)."""
    path = os.fspath(path)
    _check_args(tenant_index, time_scale, window_start_s, window_s, max_requests)
    cols = [_Col("TIMESTAMP", "timestamp"), _Col("ContextTokens", "int"), _Col("GeneratedTokens", "int")]
    stop = _Stop(window_start_s, window_s, max_requests)
    ns_parts, p_parts, o_parts, digits, ns0 = [], [], [], 0, None
    skipped = _Skipped()
    fields = {"arrival": "TIMESTAMP", "prompt": "ContextTokens", "output": "GeneratedTokens"}
    for chunk in _iter_csv_chunks(path, cols):
        ns, dg = chunk["TIMESTAMP"]
        if ns.shape[0] == 0:
            continue
        ns0 = int(ns[0]) if ns0 is None else ns0
        digits = max(digits, dg)
        rel = (ns - ns0) / 1e9
        if not ns_parts and rel[-1] < window_start_s:  # wholly before the window: check it, keep nothing
            p, o = chunk["ContextTokens"], chunk["GeneratedTokens"]
            _check_rows(path, 1, skipped, ns, rel, p, o, tenant_index, allow_ties=True, tie_reason="",
                        skip=None, fields=fields)  # fmt: skip
            skipped.add(ns, rel)
            continue
        ns_parts.append(ns)
        p_parts.append(chunk["ContextTokens"])
        o_parts.append(chunk["GeneratedTokens"])
        if stop.done(rel):
            break
    ns = np.concatenate(ns_parts) if ns_parts else np.zeros(0, dtype=np.int64)
    arrival = (ns - ns0) / 1e9 if ns.shape[0] else np.zeros(0)
    return _finish(
        path,
        1,
        ns,
        arrival,
        np.concatenate(p_parts) if p_parts else np.zeros(0, np.int64),
        np.concatenate(o_parts) if o_parts else np.zeros(0, np.int64),
        tenant_index,
        None,
        None,
        allow_ties=(digits < 7) if allow_ties is None else allow_ties,
        tie_reason=f"at {digits}-digit fractional seconds a tie means a duplicated row",
        skip=None,
        fields=fields,
        window_start_s=window_start_s,
        window_s=window_s,
        max_requests=max_requests,
        time_scale=time_scale,
        skipped=skipped,
    )


def load_burstgpt_trace(
    path: str | os.PathLike,
    *,
    tenant_index: int = 0,
    tenant_column: Literal["Model", "Log Type"] | None = None,
    tenant_names: dict[str, int] | None = None,
    failed: Literal["drop", "error"] = "drop",
    window_start_s: float = 0.0,
    window_s: float | None = None,
    max_requests: int | None = None,
    time_scale: float = 1.0,
) -> RequestTable:
    """BurstGPT CSV. Failed requests (Response tokens == 0) are dropped or rejected per `failed`.
    With `tenant_names`, tenants come from `tenant_column` (default "Model")."""
    path = os.fspath(path)
    _check_args(tenant_index, time_scale, window_start_s, window_s, max_requests)
    _check_tenant_names(tenant_names)
    if failed not in ("drop", "error"):
        raise ValueError(f"failed must be 'drop' or 'error', got {failed!r}")
    if tenant_column is not None and tenant_names is None:
        raise ValueError("tenant_column needs tenant_names")
    if tenant_names is not None and tenant_column is None:
        tenant_column = "Model"
    cols = [_Col("Timestamp", "float"), _Col("Request tokens", "int"), _Col("Response tokens", "int")]
    if tenant_column is not None:
        cols.append(_Col(tenant_column, "name"))
    stop = _Stop(window_start_s, window_s, max_requests)
    parts: dict[str, list] = {c.name: [] for c in cols}
    rows = 0
    for chunk in _iter_csv_chunks(path, cols):
        for c in cols:
            v = chunk[c.name]
            if c.kind == "name":
                v = _map_names(path, v, tenant_names, c.name, rows, 1)
            parts[c.name].append(v)
        rows += chunk["Timestamp"].shape[0]
        # Failed rows will be dropped, so they must not count towards max_requests.
        if stop.done(chunk["Timestamp"][chunk["Response tokens"] != 0]):
            break
    a = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    output = a["Response tokens"].astype(np.int64)
    failed_rows = output == 0
    if failed == "error" and failed_rows.any():
        k = int(np.flatnonzero(failed_rows)[0])
        _fail(path, "failed request (Response tokens == 0)", _data_row_to_line(path, k, 1), "Response tokens")
    return _finish(
        path,
        1,
        a["Timestamp"],
        a["Timestamp"],
        a["Request tokens"].astype(np.int64),
        output,
        a[tenant_column] if tenant_column else tenant_index,
        None,
        None,
        allow_ties=True,
        tie_reason="",
        skip=failed_rows,
        fields={"arrival": "Timestamp", "prompt": "Request tokens", "output": "Response tokens"}
        | ({"tenant": tenant_column} if tenant_column else {}),
        window_start_s=window_start_s,
        window_s=window_s,
        max_requests=max_requests,
        time_scale=time_scale,
    )


def load_generic_csv(
    path: str | os.PathLike,
    *,
    tenant_index: int = 0,
    tenant_names: dict[str, int] | None = None,
    allow_ties: bool = True,
    window_start_s: float = 0.0,
    window_s: float | None = None,
    max_requests: int | None = None,
    time_scale: float = 1.0,
) -> RequestTable:
    """`arrival_s,prompt_tokens,output_tokens[,tenant][,prefix_hashes]` (see the module docstring).
    Without a tenant column every row gets `tenant_index`."""
    path = os.fspath(path)
    _check_args(tenant_index, time_scale, window_start_s, window_s, max_requests)
    _check_tenant_names(tenant_names)
    cols = [
        _Col("arrival_s", "float"),
        _Col("prompt_tokens", "int"),
        _Col("output_tokens", "int"),
        _Col("tenant", "name" if tenant_names is not None else "int", required=False),
        _Col("prefix_hashes", "hashes", required=False),
    ]
    stop = _Stop(window_start_s, window_s, max_requests)
    parts: dict[str, list] = {c.name: [] for c in cols}
    rows = 0
    for chunk in _iter_csv_chunks(path, cols):
        for name, v in chunk.items():
            if name == "tenant" and tenant_names is not None:
                v = _map_names(path, v, tenant_names, "tenant", rows, 1)
            parts[name].append(v)
        rows += chunk["arrival_s"].shape[0]
        if stop.done(chunk["arrival_s"]):
            break
    cat = {k: np.concatenate(v) for k, v in parts.items() if v and k != "prefix_hashes"}
    arrival = cat.get("arrival_s", np.zeros(0))
    offsets = hashes = None
    if parts["prefix_hashes"]:
        lengths = np.concatenate([p[0] for p in parts["prefix_hashes"]])
        hashes = np.concatenate([p[1] for p in parts["prefix_hashes"]])
        offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
    fields = {
        "arrival": "arrival_s",
        "prompt": "prompt_tokens",
        "output": "output_tokens",
        "tenant": "tenant",
    }
    return _finish(
        path,
        1,
        arrival,
        arrival,
        cat.get("prompt_tokens", np.zeros(0, np.int64)),
        cat.get("output_tokens", np.zeros(0, np.int64)),
        cat["tenant"] if "tenant" in cat else tenant_index,
        offsets,
        hashes,
        allow_ties=allow_ties,
        tie_reason="allow_ties=False",
        skip=None,
        fields=fields,
        window_start_s=window_start_s,
        window_s=window_s,
        max_requests=max_requests,
        time_scale=time_scale,
    )


def _json_int(path: str, line: int, rec: dict, key: str) -> int:
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            _fail(path, f"expected an integer, got {v!r:.40}", line, key)
    if not -(2**63) <= v < 2**63:
        _fail(path, "integer out of int64 range", line, key)
    return v


def load_mooncake_trace(
    path: str | os.PathLike,
    *,
    tenant_index: int = 0,
    block_tokens: int = PREFIX_BLOCK_TOKENS,
    window_start_s: float = 0.0,
    window_s: float | None = None,
    max_requests: int | None = None,
    time_scale: float = 1.0,
) -> RequestTable:
    """Mooncake JSONL trace with prefix hash_ids (one block per `block_tokens` input tokens)."""
    path = os.fspath(path)
    _check_args(tenant_index, time_scale, window_start_s, window_s, max_requests)
    stop = _Stop(window_start_s, window_s, max_requests)
    skipped = _Skipped()
    fields = {"arrival": "timestamp", "prompt": "input_length", "output": "output_length"}
    parts: list[tuple[np.ndarray, ...]] = []  # per chunk of lines: arrival, input, output, blocks, hashes
    try:
        for chunk in _read_mooncake(path, block_tokens):
            arrival, inp, out = chunk[:3]
            if not parts and arrival[-1] < window_start_s:  # wholly before the window: check it, keep nothing
                _check_rows(path, 0, skipped, arrival, arrival, inp, out, tenant_index, allow_ties=True,
                            tie_reason="", skip=None, fields=fields)  # fmt: skip
                skipped.add(arrival, arrival)
                continue
            parts.append(chunk)
            if stop.done(arrival):
                break
    except UnicodeDecodeError as exc:
        _not_utf8(path, exc)
    cols = [np.concatenate([c[k] for c in parts]) if parts else np.zeros(0) for k in range(5)]
    arrival = cols[0].astype(np.float64)
    nblk = cols[3].astype(np.int64)
    offsets = np.zeros(nblk.shape[0] + 1, dtype=np.int64)
    np.cumsum(nblk, out=offsets[1:])
    return _finish(
        path,
        0,
        arrival,
        arrival,
        cols[1].astype(np.int64),
        cols[2].astype(np.int64),
        tenant_index,
        offsets,
        cols[4].astype(np.int64),
        allow_ties=True,
        tie_reason="",
        skip=None,
        fields=fields,
        window_start_s=window_start_s,
        window_s=window_s,
        max_requests=max_requests,
        time_scale=time_scale,
        skipped=skipped,
    )


# Records per Mooncake chunk: one chunk's Python lists are all the loader holds as lists. Measured on a 60 MB
# file of 400k records: peak 2.25x the file for the whole file (the table and its assembly), 0.91x for its last
# quarter (3.75x and 3.85x when every record was kept in lists); each chunk is one stop / window check.
_MOONCAKE_CHUNK = 1 << 16


def _read_mooncake(path: str, block_tokens: int) -> Iterator[tuple[np.ndarray, ...]]:
    """The Mooncake JSONL records in chunks of _MOONCAKE_CHUNK records, each as numpy columns (arrival s, input,
    output, blocks per record, hashes): Python lists of ints cost ~5x their numpy size, so a chunk at a time."""
    ts, inp, out, nblk, flat = [], [], [], [], []

    def columns() -> tuple[np.ndarray, ...]:
        try:
            hashes = np.asarray(flat, dtype=np.int64)
        except OverflowError:
            _fail(path, "a hash id does not fit in int64", None, "hash_ids")
        cols = (
            np.asarray(ts, dtype=np.float64) / 1e3,
            np.asarray(inp, dtype=np.int64),
            np.asarray(out, dtype=np.int64),
            np.asarray(nblk, dtype=np.int64),
            hashes,
        )
        for lst in (ts, inp, out, nblk, flat):
            lst.clear()
        return cols

    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                _fail(path, f"invalid JSON: {exc}", line_no)
            if not isinstance(rec, dict):
                _fail(path, "expected a JSON object", line_no)
            for key in ("timestamp", "input_length", "output_length", "hash_ids"):
                if key not in rec:
                    _fail(path, "missing key", line_no, key)
            t = rec["timestamp"]
            if isinstance(t, bool) or not isinstance(t, int | float):
                _fail(path, f"expected a number (ms), got {t!r:.40}", line_no, "timestamp")
            if not (abs(t) < 1e18 and math.isfinite(t)):  # 10**400 would overflow the float64 column
                _fail(path, f"out of range (finite, |t| < 1e18 ms), got {t!r:.40}", line_no, "timestamp")
            n_in = _json_int(path, line_no, rec, "input_length")
            hids = rec["hash_ids"]
            if not isinstance(hids, list) or any(isinstance(h, bool) or not isinstance(h, int) for h in hids):
                _fail(path, "expected a list of integers", line_no, "hash_ids")
            if n_in >= 1 and len(hids) != -(-n_in // block_tokens):
                _fail(
                    path,
                    f"{len(hids)} blocks for input_length {n_in}; expected ceil({n_in}/{block_tokens})",
                    line_no,
                    "hash_ids",
                )
            ts.append(t)
            inp.append(n_in)
            out.append(_json_int(path, line_no, rec, "output_length"))
            nblk.append(len(hids))
            flat.extend(hids)
            if len(ts) == _MOONCAKE_CHUNK:
                yield columns()
    if ts:
        yield columns()


_LOADERS = {
    "azure": load_azure_trace,
    "mooncake": load_mooncake_trace,
    "burstgpt": load_burstgpt_trace,
    "generic": load_generic_csv,
}


def load_trace(
    fmt: Literal["azure", "mooncake", "burstgpt", "generic"], path: str | os.PathLike, **kwargs
) -> RequestTable:
    """Dispatch on `fmt` (the scenario's `format`); kwargs go to that format's loader. Only "generic" and
    "burstgpt" have a tenant name column, so only they accept `tenant_names`."""
    if fmt not in _LOADERS:
        raise ValueError(f"unknown trace format {fmt!r}; known: {sorted(_LOADERS)}")
    if "tenant_names" in kwargs and fmt not in ("generic", "burstgpt"):
        raise ValueError(
            f"trace format {fmt!r} has no tenant column: give a tenant_index instead of tenant_names"
        )
    return _LOADERS[fmt](path, **kwargs)
