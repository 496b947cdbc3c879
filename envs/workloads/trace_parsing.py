"""Parsing and checking shared by the trace loaders (traces.py): chunked CSV reading (numpy's C parser, with
a Python path for what it cannot parse), timestamp and field conversion, the errors that name file, line and
field, and the window / request-limit / tenant post-processing every loader applies.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NoReturn

import numpy as np

from servegym.envs.workloads.requests import RequestTable, WorkloadError

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


@dataclass
class _Skipped:
    """Rows read and checked but dropped because they arrive before the window (whole chunks of them): what
    the checks and messages of the rows after them need."""

    rows: int = 0
    first_arrival: float = math.nan
    last_key: float | int | None = None
    last_arrival: float = math.nan
    first_tie: int | None = None  # row of the first tie among them (ties may be legal: decided at the end)

    def add(self, order_key: np.ndarray, arrival: np.ndarray) -> None:
        ties = np.flatnonzero(
            np.diff(order_key, prepend=order_key[:1] if self.last_key is None else self.last_key) == 0
        )
        if self.last_key is None:
            ties = ties[ties > 0]
            self.first_arrival = float(arrival[0])
        if self.first_tie is None and ties.size:
            self.first_tie = self.rows + int(ties[0])
        self.rows += order_key.shape[0]
        self.last_key = order_key[-1]
        self.last_arrival = float(arrival[-1])


def _check_rows(
    path: str,
    header_lines: int,
    skipped: _Skipped,
    order_key: np.ndarray,
    arrival: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    tenant: np.ndarray | int,
    *,
    allow_ties: bool,
    tie_reason: str,
    skip: np.ndarray | None,
    fields: dict[str, str],
) -> None:
    """The row checks on raw values (before any int32 cast) of rows that follow ``skipped``'s."""

    def bad(mask: np.ndarray, field: str, msg) -> None:
        hits = np.flatnonzero(mask)
        if hits.size:
            k = int(hits[0])
            _fail(path, msg(k), _data_row_to_line(path, skipped.rows + k, header_lines), fields[field])

    def before(k: int):
        return arrival[k - 1] if k > 0 else skipped.last_arrival

    bad(~np.isfinite(arrival), "arrival", lambda k: f"timestamp {arrival[k]!r} is not finite")
    if skipped.last_key is None:
        d = np.concatenate([[0], np.diff(order_key)])
        first = np.zeros(order_key.shape[0], dtype=bool)
        first[:1] = True
    else:
        d = np.diff(order_key, prepend=skipped.last_key)
        first = np.zeros(order_key.shape[0], dtype=bool)
    bad(
        ~first & (d < 0),
        "arrival",
        lambda k: f"timestamp {arrival[k]!r} is earlier than the previous row's {before(k)!r} (unsorted)",
    )
    if not allow_ties:
        bad(~first & (d == 0), "arrival", lambda k: f"timestamp equal to the previous row's ({tie_reason})")
    bad(arrival < 0, "arrival", lambda k: f"negative timestamp {arrival[k]!r}")
    keep = np.ones(arrival.shape[0], dtype=bool) if skip is None else ~skip
    for name, arr in (("prompt", prompt), ("output", output)):
        bad(keep & (arr < 1), name, lambda k, a=arr: f"token count {a[k]} must be >= 1")
        bad(keep & (arr > _INT32_MAX), name, lambda k, a=arr: f"token count {a[k]} exceeds int32")
    if isinstance(tenant, np.ndarray):
        bad((tenant < 0) | (tenant > _INT16_MAX), "tenant", lambda k: f"tenant {tenant[k]} not in [0, 32767]")


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
    skipped: _Skipped | None = None,
) -> RequestTable:
    """Row checks on raw values (before any int32 cast), then window, limit, scale, validate.
    `skip` marks rows that are dropped (BurstGPT failures): they count for ordering, not for lengths.
    `skipped`: the rows before these that the loader already checked and dropped (before the window)."""
    skipped = _Skipped() if skipped is None else skipped
    if arrival.shape[0] == 0 and skipped.rows == 0:
        _fail(path, "empty file (no data rows)")
    if not allow_ties and skipped.first_tie is not None:
        _fail(
            path,
            f"timestamp equal to the previous row's ({tie_reason})",
            _data_row_to_line(path, skipped.first_tie, header_lines),
            fields["arrival"],
        )
    _check_rows(
        path,
        header_lines,
        skipped,
        order_key,
        arrival,
        prompt,
        output,
        tenant,
        allow_ties=allow_ties,
        tie_reason=tie_reason,
        skip=skip,
        fields=fields,
    )
    if skip is not None and skip.any():
        if offsets is not None:
            raise AssertionError("row dropping is not implemented for prefix data")
        keep = ~skip
        arrival, prompt, output = arrival[keep], prompt[keep], output[keep]
        tenant = tenant[keep] if isinstance(tenant, np.ndarray) else tenant
    last = float(arrival[-1]) if arrival.shape[0] else skipped.last_arrival
    if window_start_s > last:  # reading stops early only inside the window
        first = skipped.first_arrival if skipped.rows else float(arrival[0])
        _fail(
            path,
            f"window_start_s {window_start_s:g} s is past the end of the trace: its "
            f"{arrival.shape[0] + skipped.rows:,} requests arrive from {first:g} s to {last:g} s (trace seconds); "
            f"start the window at most at {last:g} s",
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
