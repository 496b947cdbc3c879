"""The per-iteration trace (as Vidur writes one): what each iteration of each replica held and how long the
performance model said it takes, so that the timing can be checked against other simulators and engines.

``Simulator(..., trace=N)`` keeps the first N iterations in ``SimState.trace`` (replica.launch writes a row);
with N = 0 (the default) the buffer is empty and the only cost is one comparison per iteration.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from servegym.envs.sim import state as S

TRACE_COLUMNS = ("replica", "start_s", "prefill_tokens", "decode_seqs", "kv_context_tokens", "duration_s")
_INT_COLUMNS = ("replica", "prefill_tokens", "decode_seqs", "kv_context_tokens")


def iteration_trace(st: S.SimState) -> dict[str, np.ndarray]:
    """The recorded rows as named columns (integers where the quantity is a count)."""
    rows = st.trace[: int(st.cnt[S.K_TRACE_N])]
    out = {}
    for j, name in enumerate(TRACE_COLUMNS):
        col = rows[:, j].copy()
        out[name] = col.astype(np.int64) if name in _INT_COLUMNS else col
    return out


def write_trace_csv(trace: dict[str, np.ndarray], path: str | Path) -> int:
    """Write the trace as CSV (one row per iteration); return the number of rows."""
    n = len(trace[TRACE_COLUMNS[0]])
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(TRACE_COLUMNS)
        for k in range(n):
            w.writerow(
                [
                    repr(float(trace[c][k])) if c not in _INT_COLUMNS else int(trace[c][k])
                    for c in TRACE_COLUMNS
                ]
            )
    return n
