"""The struct-of-arrays request table that every workload source produces and the simulator consumes.

One row per request, one numpy array per field, no Python object per request: a 10-million-request
episode is ~26 bytes/request plus its prefix hashes. Arrays are plain, C-contiguous and writable so
the numba core can take them as they are; treat them as read-only by convention.

Sources call `validate` once at the boundary (loaders, generators); the core trusts the invariants after.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Mooncake's hash_ids are hashes of consecutive 512-token prefix blocks (kvcache-ai/Mooncake,
# FAST25-release/README.md: "The block size is 512 tokens"); prefix_hashes keeps those semantics.
PREFIX_BLOCK_TOKENS = 512

_INT32_MAX = int(np.iinfo(np.int32).max)
_INT16_MAX = int(np.iinfo(np.int16).max)


class WorkloadError(ValueError):
    """Bad workload input. `file` is the file or source name, `row` the 1-based position (the message says
    whether it is a file line or a table row; None when the error is not about one row), `field` the
    column or JSON key (None when not about one field)."""

    def __init__(self, message: str, *, file: str, row: int | None = None, field: str | None = None):
        self.file = file
        self.row = row
        self.field = field
        self.reason = message
        super().__init__(message)


@dataclass(frozen=True)
class SessionColumns:
    """Agentic-session columns of a RequestTable (envs/workloads/sessions.py; the core's closed loop).

    next: int64 row of the session's next step, -1 for none (and for requests outside a session).
    pause_s: float64 tool/think pause between the previous step's finish and this step's arrival (0 for a
        first step or a request outside a session).
    session: int32 session id, -1 outside a session. step: int32 step index. steps_left: int32 steps of the
        session after this one.

    A later step (step > 0) has arrival_s = +inf in the table: it arrives when its predecessor finishes plus
    its pause, which only the simulation knows. Such rows come after every finite arrival.
    """

    next: np.ndarray
    pause_s: np.ndarray
    session: np.ndarray
    step: np.ndarray
    steps_left: np.ndarray

    @staticmethod
    def none(n: int) -> SessionColumns:
        """Columns for n requests outside any session."""
        return SessionColumns(
            next=np.full(n, -1, dtype=np.int64),
            pause_s=np.zeros(n),
            session=np.full(n, -1, dtype=np.int32),
            step=np.zeros(n, dtype=np.int32),
            steps_left=np.zeros(n, dtype=np.int32),
        )


@dataclass(frozen=True)
class RequestTable:
    """Requests sorted by arrival.

    arrival_s: float64, non-decreasing, seconds from episode start (>= 0).
    prompt_tokens, output_tokens: int32 >= 1.
    tenant: int16 index into the scenario's tenant list.
    prefix_offsets: int64, len N+1, offsets[0] == 0; request i's prefix blocks are
        prefix_hashes[offsets[i]:offsets[i+1]] (all-zero offsets when there is no prefix information).
    prefix_hashes: int64 hashes of 512-token prefix blocks (Mooncake hash_ids semantics: equal hashes at
        equal positions mean the KV blocks can be shared). Hashes are compared as they are across tables.
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    tenant: np.ndarray
    prefix_offsets: np.ndarray
    prefix_hashes: np.ndarray
    sessions: SessionColumns | None = None  # agentic sessions; None: no request belongs to a session

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    @staticmethod
    def from_arrays(
        arrival_s: np.ndarray,
        prompt_tokens: np.ndarray,
        output_tokens: np.ndarray,
        tenant: np.ndarray | int,
        prefix_offsets: np.ndarray | None = None,
        prefix_hashes: np.ndarray | None = None,
    ) -> RequestTable:
        """Build a table, casting to the canonical dtypes (values must already be in range: call
        `validate` when they come from outside). A scalar `tenant` fills the column; missing prefix
        arrays mean "no prefix information"."""
        arrival = np.ascontiguousarray(arrival_s, dtype=np.float64)
        n = arrival.shape[0]
        if np.isscalar(tenant):
            tenant_arr = np.full(n, tenant, dtype=np.int16)
        else:
            tenant_arr = np.ascontiguousarray(tenant, dtype=np.int16)
        if prefix_offsets is None:
            offsets = np.zeros(n + 1, dtype=np.int64)
            hashes = np.zeros(0, dtype=np.int64)
        else:
            offsets = np.ascontiguousarray(prefix_offsets, dtype=np.int64)
            hashes = np.ascontiguousarray(
                prefix_hashes if prefix_hashes is not None else np.zeros(0), dtype=np.int64
            )
        return RequestTable(
            arrival_s=arrival,
            prompt_tokens=np.ascontiguousarray(prompt_tokens, dtype=np.int32),
            output_tokens=np.ascontiguousarray(output_tokens, dtype=np.int32),
            tenant=tenant_arr,
            prefix_offsets=offsets,
            prefix_hashes=hashes,
        )

    @staticmethod
    def empty() -> RequestTable:
        return RequestTable.from_arrays(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))

    @property
    def has_prefix_info(self) -> bool:
        return self.prefix_hashes.shape[0] > 0

    @staticmethod
    def concat_sorted(tables: list[RequestTable]) -> RequestTable:
        """Merge tables by arrival. Stable: ties keep list order, then row order. Prefix offsets are
        re-based; hashes are copied unchanged (namespace them first if the sources are independent)."""
        if not tables:
            return RequestTable.empty()
        if len(tables) == 1:
            return tables[0]
        if any(t.sessions is not None for t in tables):
            return _concat_sessions(tables)
        arrival = np.concatenate([t.arrival_s for t in tables])
        order = np.argsort(arrival, kind="stable")
        lengths = np.concatenate([np.diff(t.prefix_offsets) for t in tables])
        starts = np.concatenate(
            [t.prefix_offsets[:-1] + base for t, base in zip(tables, _bases(tables), strict=True)]
        )
        all_hashes = np.concatenate([t.prefix_hashes for t in tables])
        new_lengths = lengths[order]
        offsets = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(new_lengths, out=offsets[1:])
        if all_hashes.shape[0]:
            # Gather: output block j of request i comes from starts[order[i]] + j.
            gather = np.repeat(starts[order] - offsets[:-1], new_lengths) + np.arange(
                offsets[-1], dtype=np.int64
            )
            hashes = all_hashes[gather]
        else:
            hashes = all_hashes
        return RequestTable(
            arrival_s=arrival[order],
            prompt_tokens=np.concatenate([t.prompt_tokens for t in tables])[order],
            output_tokens=np.concatenate([t.output_tokens for t in tables])[order],
            tenant=np.concatenate([t.tenant for t in tables])[order],
            prefix_offsets=offsets,
            prefix_hashes=hashes,
        )

    def slice_rows(self, start: int, stop: int) -> RequestTable:
        """Rows [start, stop) as a copy (no aliasing of the parent's buffers), offsets re-based."""
        n = len(self)
        start, stop = max(0, min(start, n)), max(0, min(stop, n))
        stop = max(start, stop)
        if self.sessions is not None:
            return self.take(np.arange(start, stop))
        off = self.prefix_offsets[start : stop + 1]
        return RequestTable(
            arrival_s=self.arrival_s[start:stop].copy(),
            prompt_tokens=self.prompt_tokens[start:stop].copy(),
            output_tokens=self.output_tokens[start:stop].copy(),
            tenant=self.tenant[start:stop].copy(),
            prefix_offsets=off - off[0],
            prefix_hashes=self.prefix_hashes[off[0] : off[-1]].copy(),
        )

    def take(self, rows: np.ndarray) -> RequestTable:
        """The given rows, in the given order, as a copy; session links are remapped to the new rows (a link
        to a row left out becomes -1: that session ends there)."""
        rows = np.asarray(rows, dtype=np.int64)
        nb = np.diff(self.prefix_offsets)[rows]
        offsets = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(nb, out=offsets[1:])
        gather = np.repeat(self.prefix_offsets[:-1][rows] - offsets[:-1], nb) + np.arange(
            offsets[-1], dtype=np.int64
        )
        sessions = None
        if self.sessions is not None:
            c = self.sessions
            new_row = np.full(len(self) + 1, -1, dtype=np.int64)  # index -1 (no successor) maps to -1
            new_row[rows] = np.arange(rows.shape[0])
            nxt = new_row[c.next[rows]]
            left = c.steps_left[rows].copy()
            cut = (c.next[rows] >= 0) & (nxt < 0)
            if cut.any():  # recount steps_left backwards along the shortened chains
                left[cut] = 0
                for _ in range(int(c.steps_left.max(initial=0))):
                    has = nxt >= 0
                    upd = left[nxt[has]] + 1
                    if np.array_equal(left[has], upd):
                        break
                    left[has] = upd
            sessions = SessionColumns(
                next=nxt,
                pause_s=c.pause_s[rows].copy(),
                session=c.session[rows].copy(),
                step=c.step[rows].copy(),
                steps_left=left,
            )
        return RequestTable(
            arrival_s=self.arrival_s[rows].copy(),
            prompt_tokens=self.prompt_tokens[rows].copy(),
            output_tokens=self.output_tokens[rows].copy(),
            tenant=self.tenant[rows].copy(),
            prefix_offsets=offsets,
            prefix_hashes=self.prefix_hashes[gather],
            sessions=sessions,
        )

    def window(self, start_s: float, duration_s: float | None) -> RequestTable:
        """Requests with start_s <= arrival < start_s + duration_s (to the end when duration_s is None),
        with arrival re-based so that start_s becomes 0."""
        if not np.isfinite(start_s) or (duration_s is not None and not (duration_s >= 0)):
            raise ValueError(f"window needs a finite start and a duration >= 0, got {start_s}, {duration_s}")
        i0 = int(np.searchsorted(self.arrival_s, start_s, side="left"))
        i1 = len(self) if duration_s is None else int(np.searchsorted(self.arrival_s, start_s + duration_s))
        out = self.slice_rows(i0, i1)
        out.arrival_s[:] -= start_s
        # Float rounding can push a re-based time a hair below 0.
        np.maximum(out.arrival_s, 0.0, out=out.arrival_s)
        return out

    def time_scaled(self, factor: float) -> RequestTable:
        """Replay speed-up: arrival times are divided by `factor` (2 = twice as fast, i.e. twice the
        request rate; 0.5 = half the rate). Lengths and prefixes are unchanged."""
        if not (np.isfinite(factor) and factor > 0):
            raise ValueError(f"time_scale factor must be finite and > 0, got {factor}")
        if factor == 1.0:
            return self
        sessions = self.sessions
        if sessions is not None:  # pauses are times too
            sessions = SessionColumns(
                sessions.next, sessions.pause_s / factor, sessions.session, sessions.step, sessions.steps_left
            )
        return RequestTable(
            arrival_s=self.arrival_s / factor,
            prompt_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens,
            tenant=self.tenant,
            prefix_offsets=self.prefix_offsets,
            prefix_hashes=self.prefix_hashes,
            sessions=sessions,
        )

    def validate(self, source: str) -> None:
        """Check every invariant; raise WorkloadError naming `source`, the 1-based table row and the field."""

        def fail(msg: str, row: int | None = None, field: str | None = None) -> None:
            where = f" row {row}" if row is not None else ""
            fld = f" field '{field}'" if field else ""
            raise WorkloadError(f"{source}:{where}{fld}: {msg}", file=source, row=row, field=field)

        n = len(self)
        expected = {
            "arrival_s": (np.float64, n),
            "prompt_tokens": (np.int32, n),
            "output_tokens": (np.int32, n),
            "tenant": (np.int16, n),
            "prefix_offsets": (np.int64, n + 1),
            "prefix_hashes": (np.int64, None),
        }
        for name, (dtype, length) in expected.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.ndim != 1:
                fail("must be a 1-D numpy array", field=name)
            if arr.dtype != dtype:
                fail(f"dtype is {arr.dtype}, expected {np.dtype(dtype)}", field=name)
            if length is not None and arr.shape[0] != length:
                fail(f"length {arr.shape[0]}, expected {length}", field=name)
            if not arr.flags.c_contiguous:
                fail("must be C-contiguous", field=name)
        if n == 0:
            if self.prefix_offsets[0] != 0 or self.prefix_hashes.shape[0] != 0:
                fail("empty table with prefix data", field="prefix_offsets")
            return
        later = np.zeros(n, dtype=bool)
        if self.sessions is not None:
            later = self._validate_sessions(fail)
        _first_bad(~np.isfinite(self.arrival_s) & ~later, fail, "arrival_s", "not finite")
        _first_bad(later & (self.arrival_s != np.inf), fail, "arrival_s", "a later session step must be +inf")
        _first_bad(self.arrival_s < 0, fail, "arrival_s", "negative arrival time")
        with np.errstate(invalid="ignore"):  # inf - inf between later session steps is NaN, not a decrease
            dec = np.flatnonzero(np.diff(self.arrival_s) < 0)
        if dec.size:
            i = int(dec[0]) + 1
            fail(
                f"arrival {self.arrival_s[i]!r} is earlier than the previous {self.arrival_s[i - 1]!r} (not sorted)",
                row=i + 1,
                field="arrival_s",
            )
        _first_bad(self.prompt_tokens < 1, fail, "prompt_tokens", "must be >= 1")
        _first_bad(self.output_tokens < 1, fail, "output_tokens", "must be >= 1")
        _first_bad(self.tenant < 0, fail, "tenant", "must be >= 0")
        if self.prefix_offsets[0] != 0:
            fail("prefix_offsets[0] must be 0", field="prefix_offsets")
        _first_bad(np.diff(self.prefix_offsets) < 0, fail, "prefix_offsets", "offsets decrease")
        if self.prefix_offsets[-1] != self.prefix_hashes.shape[0]:
            fail(
                f"last offset {self.prefix_offsets[-1]} != len(prefix_hashes) {self.prefix_hashes.shape[0]}",
                field="prefix_offsets",
            )

    def _validate_sessions(self, fail) -> np.ndarray:
        """Check the session columns; return the mask of later steps (arrival decided by the simulation)."""
        c = self.sessions
        n = len(self)
        for name, dtype in (
            ("next", np.int64),
            ("pause_s", np.float64),
            ("session", np.int32),
            ("step", np.int32),
            ("steps_left", np.int32),
        ):
            arr = getattr(c, name)
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape != (n,):
                fail(f"must be a 1-D {np.dtype(dtype)} array of length {n}", field=f"sessions.{name}")
            if not arr.flags.c_contiguous:
                fail("must be C-contiguous", field=f"sessions.{name}")
        rows = np.arange(n)
        _first_bad((c.next < -1) | (c.next >= n), fail, "sessions.next", "out of range")
        linked = c.next >= 0
        # a successor comes later in the table, continues the same session at the next step
        _first_bad(linked & (c.next <= rows), fail, "sessions.next", "must point to a later row")
        nxt = np.where(linked, c.next, 0)
        bad = linked & (
            (c.session[nxt] != c.session)
            | (c.step[nxt] != c.step + 1)
            | (c.session < 0)
            | (c.steps_left != c.steps_left[nxt] + 1)
        )
        _first_bad(bad, fail, "sessions.next", "successor is not the next step of the same session")
        _first_bad(~linked & (c.steps_left != 0), fail, "sessions.steps_left", "last step must have 0 left")
        _first_bad(~np.isfinite(c.pause_s) | (c.pause_s < 0), fail, "sessions.pause_s", "must be finite >= 0")
        later = c.step > 0
        _first_bad(later & (c.session < 0), fail, "sessions.step", "step > 0 outside a session")
        _first_bad(c.step < 0, fail, "sessions.step", "must be >= 0")
        pointed = np.bincount(c.next[linked], minlength=n)
        _first_bad(
            later != (pointed == 1), fail, "sessions.step", "a later step must follow exactly one step"
        )
        return later


def _concat_sessions(tables: list[RequestTable]) -> RequestTable:
    """concat_sorted for tables of which some have sessions: session ids and links are re-based per table,
    then the rows are ordered by arrival (stable, so later steps, at +inf, keep table then row order)."""
    cols = []
    row_base = 0
    sess_base = 0
    for t in tables:
        c = t.sessions if t.sessions is not None else SessionColumns.none(len(t))
        cols.append(
            SessionColumns(
                next=np.where(c.next >= 0, c.next + row_base, -1),
                pause_s=c.pause_s,
                session=np.where(c.session >= 0, c.session + sess_base, -1).astype(np.int32),
                step=c.step,
                steps_left=c.steps_left,
            )
        )
        row_base += len(t)
        sess_base += int(c.session.max(initial=-1)) + 1
    offsets = np.zeros(row_base + 1, dtype=np.int64)
    np.cumsum(np.concatenate([np.diff(t.prefix_offsets) for t in tables]), out=offsets[1:])
    whole = RequestTable(
        arrival_s=np.concatenate([t.arrival_s for t in tables]),
        prompt_tokens=np.concatenate([t.prompt_tokens for t in tables]),
        output_tokens=np.concatenate([t.output_tokens for t in tables]),
        tenant=np.concatenate([t.tenant for t in tables]),
        prefix_offsets=offsets,
        prefix_hashes=np.concatenate([t.prefix_hashes for t in tables]),
        sessions=SessionColumns(
            next=np.concatenate([c.next for c in cols]),
            pause_s=np.concatenate([c.pause_s for c in cols]),
            session=np.concatenate([c.session for c in cols]),
            step=np.concatenate([c.step for c in cols]),
            steps_left=np.concatenate([c.steps_left for c in cols]),
        ),
    )
    return whole.take(np.argsort(whole.arrival_s, kind="stable"))


def _bases(tables: list[RequestTable]) -> list[int]:
    bases, total = [], 0
    for t in tables:
        bases.append(total)
        total += t.prefix_hashes.shape[0]
    return bases


def _first_bad(mask: np.ndarray, fail, field: str, msg: str) -> None:
    bad = np.flatnonzero(mask)
    if bad.size:
        fail(msg, row=int(bad[0]) + 1, field=field)
