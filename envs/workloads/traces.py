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
file (the CSV header is line 1); blank lines are skipped but counted.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NoReturn

import numpy as np

from servegym.envs.workloads.requests import PREFIX_BLOCK_TOKENS, RequestTable, WorkloadError

__all__ = [
    "WorkloadError",
    "load_azure_trace",
    "load_burstgpt_trace",
    "load_generic_csv",
    "load_mooncake_trace",
    "load_trace",
]

_CHUNK_LINES = 1 << 18
_INT32_MAX = int(np.iinfo(np.int32).max)
_INT16_MAX = int(np.iinfo(np.int16).max)
_NAME_WIDTH = 64  # tenant names are read as fixed-width strings; longer names are rejected
_TS_WIDTH = 40


def _fail(path: str, msg: str, line: int | None = None, field: str | None = None) -> NoReturn:
    where = "".join([f": line {line}" if line else "", f": field '{field}'" if field else ""])
    raise WorkloadError(f"{path}{where}: {msg}", file=path, row=line, field=field)


@dataclass(frozen=True)
class _Col:
    name: str
    kind: Literal["float", "int", "name", "timestamp", "hashes"]
    required: bool = True


_NP_KIND = {"float": "f8", "int": "i8", "name": f"U{_NAME_WIDTH}", "timestamp": f"S{_TS_WIDTH}"}


# ---------------------------------------------------------------- parsing helpers


def _timestamps_ns(ts: np.ndarray) -> tuple[np.ndarray, int]:
    """ISO-like timestamps (bytes) -> (int64 ns UTC, most fractional digits seen). Raises ValueError."""
    ts = np.strings.strip(ts)
    z = np.strings.endswith(ts, b"Z")
    if z.any():
        ts = np.where(z, np.strings.slice(ts, 0, -1), ts)
    sign, colon = np.strings.slice(ts, -6, -5), np.strings.slice(ts, -3, -2)
    has_off = ((sign == b"+") | (sign == b"-")) & (colon == b":")
    off_ns = np.zeros(ts.shape[0], dtype=np.int64)
    if has_off.any():
        sub = ts[has_off]
        hh = np.strings.slice(sub, -5, -3).astype(np.int64)
        mm = np.strings.slice(sub, -2, None).astype(np.int64)
        sgn = np.where(sign[has_off] == b"-", -1, 1)
        off_ns[has_off] = sgn * (hh * 3600 + mm * 60) * 1_000_000_000
        ts = np.where(has_off, np.strings.slice(ts, 0, -6), ts)
    dt = ts.astype("datetime64[ns]")
    if np.isnat(dt).any():
        raise ValueError("NaT")
    dot = np.strings.find(ts, b".")
    digits = np.where(dot >= 0, np.strings.str_len(ts) - dot - 1, 0)
    return dt.view(np.int64) - off_ns, int(digits.max(initial=0))


def _convert_py(kind: str, s: str):
    """One field, Python path. Raises ValueError with a short reason."""
    if kind == "float":
        return float(s)
    if kind == "int":
        v = int(s)
        if not -(2**63) <= v < 2**63:
            raise ValueError("out of int64 range")
        return v
    if kind == "name":
        s = s.strip()
        if len(s) >= _NAME_WIDTH:
            raise ValueError(f"longer than {_NAME_WIDTH - 1} characters")
        return s
    if kind == "timestamp":
        b = s.strip().encode("ascii")
        if len(b) >= _TS_WIDTH:
            raise ValueError(f"longer than {_TS_WIDTH - 1} characters")
        _timestamps_ns(np.array([b]))
        return b
    if kind == "hashes":
        return [_convert_py("int", x) for x in s.split()]
    raise AssertionError(kind)


def _parse_python(
    path: str, raw: list[str], first_line: int, cols: list[_Col], idx: dict[str, int], n_fields: int
) -> dict[str, object]:
    """Parse a chunk with the csv module; raises WorkloadError at the first bad field."""
    values: dict[str, list] = {c.name: [] for c in cols}
    for offset, (text, row) in enumerate(zip(raw, csv.reader(raw), strict=True)):
        line = first_line + offset
        if text.isspace():
            continue
        for c in cols:
            j = idx[c.name]
            if j >= len(row):
                _fail(path, f"row has {len(row)} fields, column {j + 1} missing", line, c.name)
            try:
                values[c.name].append(_convert_py(c.kind, row[j]))
            except (ValueError, UnicodeEncodeError) as exc:
                _fail(path, f"not a valid {c.kind} value: {row[j]!r} ({exc})", line, c.name)
        if len(row) != n_fields:  # a row with extra or missing fields has its values under other columns
            _fail(path, f"row has {len(row)} fields but the header has {n_fields}", line)
    out: dict[str, object] = {}
    for c in cols:
        v = values[c.name]
        if c.kind == "hashes":
            lengths = np.fromiter((len(h) for h in v), dtype=np.int64, count=len(v))
            out[c.name] = (lengths, np.fromiter(itertools.chain.from_iterable(v), dtype=np.int64))
        elif c.kind == "timestamp":
            out[c.name] = _timestamps_ns(np.array(v, dtype=f"S{_TS_WIDTH}"))
        else:
            out[c.name] = np.array(v, dtype=_NP_KIND[c.kind])
    return out


def _first_non_utf8_line(path: str) -> int | None:
    """1-based number of the first line that is not UTF-8 (only on the error path)."""
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return line_no
    return None


def _not_utf8(path: str, exc: UnicodeDecodeError) -> NoReturn:
    _fail(path, f"not UTF-8 text ({exc.reason}); traces must be UTF-8", _first_non_utf8_line(path))


def _iter_csv_chunks(path: str, cols: list[_Col]) -> Iterator[dict[str, object]]:
    """Yield per-chunk column arrays. Timestamps come as (ns, digits), hashes as (lengths, flat)."""
    try:
        yield from _iter_utf8_csv_chunks(path, cols)
    except UnicodeDecodeError as exc:
        _not_utf8(path, exc)


def _iter_utf8_csv_chunks(path: str, cols: list[_Col]) -> Iterator[dict[str, object]]:
    with open(path, encoding="utf-8-sig", newline=None) as f:
        header_line = f.readline()
        if not header_line.strip():
            _fail(path, "empty file (no header line)")
        header = [h.strip() for h in next(csv.reader([header_line]))]
        for c in cols:
            if header.count(c.name) > 1:
                _fail(
                    path, f"column '{c.name}' appears {header.count(c.name)} times in the header", 1, c.name
                )
        n_fields = len(header)
        idx = {c.name: header.index(c.name) for c in cols if c.name in header}
        for c in cols:
            if c.required and c.name not in idx:
                # the header is not quoted back: a file that is not a trace may hold anything
                _fail(
                    path,
                    f"missing column '{c.name}' (the header has {len(header)} columns; this format needs "
                    f"{[c.name for c in cols if c.required]})",
                    1,
                    c.name,
                )
        present = [c for c in cols if c.name in idx]
        fast = all(c.kind != "hashes" for c in present)
        dtype = np.dtype([(f"c{i}", _NP_KIND[c.kind]) for i, c in enumerate(present)] if fast else [])
        usecols = [idx[c.name] for c in present]
        next_line = 2
        while raw := list(itertools.islice(f, _CHUNK_LINES)):
            first, next_line = next_line, next_line + len(raw)
            if not fast:
                yield _parse_python(path, raw, first, present, idx, n_fields)
                continue
            lines = [ln for ln in raw if not ln.isspace()]
            if not lines:
                continue
            if any(ln.count(",") != n_fields - 1 for ln in lines):  # or quoted commas: the csv module decides
                _parse_python(path, raw, first, present, idx, n_fields)
            try:
                arr = np.loadtxt(
                    lines, delimiter=",", dtype=dtype, usecols=usecols, comments=None, quotechar='"', ndmin=1
                )
                out: dict[str, object] = {}
                for i, c in enumerate(present):
                    col = arr[f"c{i}"]
                    if c.kind == "timestamp":
                        out[c.name] = _timestamps_ns(col)
                    elif c.kind == "name":
                        if (np.strings.str_len(col) >= _NAME_WIDTH).any():
                            raise ValueError("name too long")
                        out[c.name] = np.strings.strip(col)
                    else:
                        out[c.name] = np.ascontiguousarray(col)
            except (ValueError, TypeError) as exc:
                _parse_python(path, raw, first, present, idx, n_fields)  # raises at the exact line and field
                _fail(path, f"lines {first}-{next_line - 1}: {exc}")
            yield out


def _data_row_to_line(path: str, k: int, header_lines: int) -> int:
    """1-based line number of the k-th (0-based) non-blank data line; used only to report errors."""
    with open(path, encoding="utf-8-sig", newline=None) as f:
        seen = -1
        for line_no, line in enumerate(f, start=1):
            if line_no <= header_lines or not line.strip():
                continue
            seen += 1
            if seen == k:
                return line_no
    return -1


# ---------------------------------------------------------------- shared checks and post-processing


def _check_args(tenant_index, time_scale, window_start_s, window_s, max_requests) -> None:
    if not 0 <= tenant_index <= _INT16_MAX:
        raise ValueError(f"tenant_index must be in [0, {_INT16_MAX}], got {tenant_index}")
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise ValueError(f"time_scale must be finite and > 0, got {time_scale}")
    if not (math.isfinite(window_start_s) and window_start_s >= 0):
        raise ValueError(f"window_start_s must be finite and >= 0, got {window_start_s}")
    if window_s is not None and not (math.isfinite(window_s) and window_s >= 0):
        raise ValueError(f"window_s must be finite and >= 0 or None, got {window_s}")
    if max_requests is not None and max_requests < 0:
        raise ValueError(f"max_requests must be >= 0 or None, got {max_requests}")


class _Stop:
    """Decides when later rows cannot enter the window / request limit, so reading can stop."""

    def __init__(self, window_start_s: float, window_s: float | None, max_requests: int | None):
        self.start, self.max = window_start_s, max_requests
        self.end = math.inf if window_s is None else window_start_s + window_s
        self.count = 0

    def done(self, arrival_chunk: np.ndarray) -> bool:
        if arrival_chunk.shape[0] == 0:
            return False
        self.count += int(np.count_nonzero(arrival_chunk >= self.start))
        return bool(arrival_chunk[-1] >= self.end) or (self.max is not None and self.count >= self.max)


def _finish(
    path: str,
    header_lines: int,
    order_key: np.ndarray,
    arrival: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    tenant: np.ndarray | int,
    offsets: np.ndarray | None,
    hashes: np.ndarray | None,
    *,
    allow_ties: bool,
    tie_reason: str,
    skip: np.ndarray | None,
    fields: dict[str, str],
    window_start_s: float,
    window_s: float | None,
    max_requests: int | None,
    time_scale: float,
) -> RequestTable:
    """Row checks on raw values (before any int32 cast), then window, limit, scale, validate.
    `skip` marks rows that are dropped (BurstGPT failures): they count for ordering, not for lengths."""
    if arrival.shape[0] == 0:
        _fail(path, "empty file (no data rows)")

    def bad(mask: np.ndarray, field: str, msg) -> None:
        hits = np.flatnonzero(mask)
        if hits.size:
            k = int(hits[0])
            _fail(path, msg(k), _data_row_to_line(path, k, header_lines), fields[field])

    bad(~np.isfinite(arrival), "arrival", lambda k: f"timestamp {arrival[k]!r} is not finite")
    d = np.diff(order_key)
    bad(
        np.concatenate([[False], d < 0]),
        "arrival",
        lambda k: (
            f"timestamp {arrival[k]!r} is earlier than the previous row's {arrival[k - 1]!r} (unsorted)"
        ),
    )
    if not allow_ties:
        bad(
            np.concatenate([[False], d == 0]),
            "arrival",
            lambda k: f"timestamp equal to the previous row's ({tie_reason})",
        )
    bad(arrival < 0, "arrival", lambda k: f"negative timestamp {arrival[k]!r}")
    keep = np.ones(arrival.shape[0], dtype=bool) if skip is None else ~skip
    for name, arr in (("prompt", prompt), ("output", output)):
        bad(keep & (arr < 1), name, lambda k, a=arr: f"token count {a[k]} must be >= 1")
        bad(keep & (arr > _INT32_MAX), name, lambda k, a=arr: f"token count {a[k]} exceeds int32")
    if isinstance(tenant, np.ndarray):
        bad((tenant < 0) | (tenant > _INT16_MAX), "tenant", lambda k: f"tenant {tenant[k]} not in [0, 32767]")
    if skip is not None and skip.any():
        if offsets is not None:
            raise AssertionError("row dropping is not implemented for prefix data")
        arrival, prompt, output = arrival[keep], prompt[keep], output[keep]
        tenant = tenant[keep] if isinstance(tenant, np.ndarray) else tenant
    if arrival.shape[0] and window_start_s > arrival[-1]:  # reading stops early only inside the window
        _fail(
            path,
            f"window_start_s {window_start_s:g} s is past the end of the trace: its {arrival.shape[0]:,} "
            f"requests arrive from {arrival[0]:g} s to {arrival[-1]:g} s (trace seconds); start the window "
            f"at most at {arrival[-1]:g} s",
            field=fields["arrival"],
        )
    table = RequestTable.from_arrays(arrival, prompt, output, tenant, offsets, hashes)
    if window_start_s != 0 or window_s is not None:
        table = table.window(window_start_s, window_s)
    if max_requests is not None and max_requests < len(table):
        table = table.slice_rows(0, max_requests)
    table = table.time_scaled(time_scale)
    table.validate(path)
    return table


def _map_names(path: str, names: np.ndarray, tenant_names: dict[str, int], field: str, row0: int, hl: int):
    uniq, inv = np.unique(names, return_inverse=True)
    ids = np.empty(uniq.shape[0], dtype=np.int64)
    for i, u in enumerate(uniq.tolist()):
        if u not in tenant_names:
            k = row0 + int(np.flatnonzero(inv == i)[0])
            _fail(
                path,
                f"unknown tenant name {u!r}; known: {sorted(tenant_names)}",
                _data_row_to_line(path, k, hl),
                field,
            )
        ids[i] = tenant_names[u]
    return ids[inv]


def _check_tenant_names(tenant_names: dict[str, int] | None) -> None:
    for k, v in (tenant_names or {}).items():
        if not 0 <= v <= _INT16_MAX:
            raise ValueError(f"tenant_names[{k!r}] = {v} not in [0, {_INT16_MAX}]")


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
    for chunk in _iter_csv_chunks(path, cols):
        ns, dg = chunk["TIMESTAMP"]
        if ns.shape[0] == 0:
            continue
        ns0 = int(ns[0]) if ns0 is None else ns0
        digits = max(digits, dg)
        ns_parts.append(ns)
        p_parts.append(chunk["ContextTokens"])
        o_parts.append(chunk["GeneratedTokens"])
        if stop.done((ns - ns0) / 1e9):
            break
    ns = np.concatenate(ns_parts) if ns_parts else np.zeros(0, dtype=np.int64)
    arrival = (ns - ns[0]) / 1e9 if ns.shape[0] else np.zeros(0)
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
        fields={"arrival": "TIMESTAMP", "prompt": "ContextTokens", "output": "GeneratedTokens"},
        window_start_s=window_start_s,
        window_s=window_s,
        max_requests=max_requests,
        time_scale=time_scale,
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
    ts, inp, out, nblk, flat = [], [], [], [], []
    try:
        _read_mooncake(path, block_tokens, stop, ts, inp, out, nblk, flat)
    except UnicodeDecodeError as exc:
        _not_utf8(path, exc)
    arrival = np.asarray(ts, dtype=np.float64) / 1e3
    offsets = np.zeros(len(nblk) + 1, dtype=np.int64)
    np.cumsum(nblk, out=offsets[1:])
    try:
        hashes = np.asarray(flat, dtype=np.int64)
    except OverflowError:
        _fail(path, "a hash id does not fit in int64", None, "hash_ids")
    return _finish(
        path,
        0,
        arrival,
        arrival,
        np.asarray(inp, dtype=np.int64),
        np.asarray(out, dtype=np.int64),
        tenant_index,
        offsets,
        hashes,
        allow_ties=True,
        tie_reason="",
        skip=None,
        fields={"arrival": "timestamp", "prompt": "input_length", "output": "output_length"},
        window_start_s=window_start_s,
        window_s=window_s,
        max_requests=max_requests,
        time_scale=time_scale,
    )


def _read_mooncake(path: str, block_tokens: int, stop: _Stop, ts, inp, out, nblk, flat) -> None:
    """The Mooncake JSONL records, appended to the column lists (the loop of ``load_mooncake_trace``)."""
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
            if len(ts) % _CHUNK_LINES == 0 and stop.done(
                np.asarray(ts[-_CHUNK_LINES:], dtype=np.float64) / 1e3
            ):
                break


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
