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
        off = self.prefix_offsets[start : stop + 1]
        return RequestTable(
            arrival_s=self.arrival_s[start:stop].copy(),
            prompt_tokens=self.prompt_tokens[start:stop].copy(),
            output_tokens=self.output_tokens[start:stop].copy(),
            tenant=self.tenant[start:stop].copy(),
            prefix_offsets=off - off[0],
            prefix_hashes=self.prefix_hashes[off[0] : off[-1]].copy(),
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
        return RequestTable(
            arrival_s=self.arrival_s / factor,
            prompt_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens,
            tenant=self.tenant,
            prefix_offsets=self.prefix_offsets,
            prefix_hashes=self.prefix_hashes,
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
        _first_bad(~np.isfinite(self.arrival_s), fail, "arrival_s", "not finite")
        _first_bad(self.arrival_s < 0, fail, "arrival_s", "negative arrival time")
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
