"""A binary min-heap of (time, request id) pairs, stored as a ``(2, H)`` float array of the state.

Two of the core's event sources keep one: pending session steps (``relq``, envs/sim/sessions.py) and KV
transfers in flight (``xfq``, envs/sim/disagg.py). Ties in time break on the request id, so the pop order, and
with it the simulation, does not depend on insertion order. The caller owns the entry count (a ``K_*`` counter)
and passes it in; freed slots are reset to (inf, -1) so that an empty heap reads ``inf`` at its top.
"""

from __future__ import annotations

import numpy as np

from servegym.envs.sim.jit import hot

INF = np.inf


@hot
def heap_less(h, a, b):
    """Heap order: time, then request id."""
    ta = h[0, a]
    tb = h[0, b]
    return ta < tb or (ta == tb and h[1, a] < h[1, b])


@hot
def heap_swap(h, a, b):
    for f in range(2):
        x = h[f, a]
        h[f, a] = h[f, b]
        h[f, b] = x


@hot
def heap_fix(h, p, n):
    """Restore the heap order around entry p of an n-entry heap: sift it up, then down."""
    while p > 0 and heap_less(h, p, (p - 1) >> 1):
        heap_swap(h, p, (p - 1) >> 1)
        p = (p - 1) >> 1
    while True:
        c = 2 * p + 1
        if c >= n:
            break
        if c + 1 < n and heap_less(h, c + 1, c):
            c += 1
        if not heap_less(h, c, p):
            break
        heap_swap(h, p, c)
        p = c


@hot
def heap_push(h, n, t, i):
    """Add (t, i) to an n-entry heap; the caller then counts n + 1 entries."""
    h[0, n] = t
    h[1, n] = i
    heap_fix(h, n, n + 1)


@hot
def heap_delete_at(h, p, n):
    """Remove entry p of an n-entry heap and return its request id; the caller then counts n - 1 entries."""
    i = int(h[1, p])
    n -= 1
    h[0, p] = h[0, n]
    h[1, p] = h[1, n]
    h[0, n] = INF
    h[1, n] = -1.0
    if p < n:
        heap_fix(h, p, n)
    return i
