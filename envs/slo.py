"""The SLO rule and the fairness index, one home for the metrics of envs/metrics.py and envs/app_metrics.py.

A finished interactive request meets its SLO iff its TTFT and its TPOT are within its tenant's; a finished
batch request iff it finished by its deadline (docs/metrics.md). Dot products are fused multiply-adds left
to right (``_dot``), so that a metric's last digit does not depend on the CPU's BLAS kernel.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from servegym.envs.sim.outcome import TIER_INTERACTIVE, SimOutcome

_FLOAT_MAX = Fraction(np.finfo(np.float64).max)


def _tpot(o: SimOutcome, mask: np.ndarray) -> np.ndarray:
    """TPOT of the masked (finished) requests; 0 for single-token outputs, which have no decode gap."""
    decode_steps = o.output_tokens[mask].astype(np.float64) - 1.0
    decode_time = o.finish_s[mask] - o.first_token_s[mask]
    # The maximum() keeps the division finite; single-token rows are then overwritten with 0.
    return np.where(decode_steps > 0, decode_time / np.maximum(decode_steps, 1.0), 0.0)


def met_finished(o: SimOutcome, finished: np.ndarray, tpot: np.ndarray | None = None) -> np.ndarray:
    """For the ``finished`` rows (a boolean mask over requests), in order: whether each met its SLO.
    ``tpot``: their ``_tpot(o, finished)`` when the caller has it already."""
    ttft = o.first_token_s[finished] - o.arrival_s[finished]
    tpot = _tpot(o, finished) if tpot is None else tpot
    interactive_ok = (ttft <= o.ttft_slo_s[finished]) & (tpot <= o.tpot_slo_s[finished])
    batch_ok = o.finish_s[finished] <= o.deadline_s[finished]
    return np.where(o.tier[finished] == TIER_INTERACTIVE, interactive_ok, batch_ok)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b) as fused multiply-adds left to right, each step rounded once to float64.

    Not np.dot: BLAS picks its kernel, and with it the order and rounding of the additions, by CPU, so the
    last digit of a metric depended on the machine that computed it, and leaderboard entries made on one CPU
    did not replay bit for bit on another. This is the order and rounding the v0 entries were computed with
    (OpenBLAS's FMA loop, which its x86 kernels use below 16 elements: the pools, replicas and tenants of the
    v0 scenarios), now fixed in code for every length.
    Exact rational arithmetic gives the single rounding of an FMA (math.fma needs Python 3.13); the vectors
    are short, so its cost does not matter.
    """
    xs, ys = np.asarray(a, np.float64), np.asarray(b, np.float64)
    total = 0.0
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):  # inf/nan: no exact value; float semantics
        for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
            total = x * y + total
        return total
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        exact = Fraction(x) * Fraction(y) + Fraction(total)
        total = float(exact) if abs(exact) <= _FLOAT_MAX else (math.inf if exact > 0 else -math.inf)
    return total


def jain_index(x: np.ndarray) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2); 1.0 for n <= 1 or all-zero x (all equal)."""
    n = x.size
    sq = _dot(x, x)
    if n <= 1 or sq == 0.0:
        return 1.0
    return float(x.sum()) ** 2 / (n * sq)
