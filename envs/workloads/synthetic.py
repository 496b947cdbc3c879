"""Per-tenant synthetic request streams: an arrival process times a length distribution.

All randomness comes from the `np.random.Generator` passed in: the same generator state gives
bit-identical tables. A tenant draws two child seeds from it (arrivals, lengths) so that changing the
length spec does not move the arrival times; `generate_workload` draws one child seed per tenant so
that tenants do not perturb each other (common random numbers across experiments).

Arrival processes (on [0, horizon_s)):
- "poisson": exponential gaps at `rate_per_s`.
- "gamma": renewal process with gamma gaps of mean 1/rate and coefficient of variation `cv`
  (shape 1/cv^2). cv > 1 is burstier than Poisson; cv == 1 *is* the Poisson path (same draws).
  The process starts with the clock at an arrival epoch (an ordinary, not stationary, renewal process):
  for large cv the first gap is drawn from the gap distribution, not its equilibrium version.
- diurnal modulation (either process): rate(t) = rate_per_s * (1 + a cos(2 pi (t - peak_time_s) / period_s)),
  a = (r - 1) / (r + 1) for peak-to-trough ratio r, so `rate_per_s` stays the mean rate over a period.
  Applied by time-rescaling, not thinning: the base process runs at the mean rate in "operational
  time" u and each arrival is mapped to t = L^-1(u), L(t) = integral of rate(s)/rate_per_s ds. For a
  Poisson base this is exactly the inhomogeneous Poisson process; for a gamma base it keeps the
  burstiness (the CV of gaps in operational time), whereas thinning a renewal process pulls its CV
  towards 1. It also spends no random draws on rejected points.

Lengths:
- "lognormal": given mean and cv (or sigma), rounded to integers, clipped to [min, max]. The mean is
  that of the unclipped distribution. Prompt and output are drawn independently.
- "empirical": a quantile table from length_tables.json (built by scripts/derive_length_tables.py from
  public traces; each table cites its source). Sampling inverts the piecewise-linear quantile function.
  With `joint=True` (default) prompt and output are drawn through the table's 20x20 rank-copula
  histogram, keeping their rank dependence; `joint=False` assumes independence.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from servegym.envs.workloads.requests import RequestTable

_TABLES_PATH = Path(__file__).with_name("length_tables.json")
_CHUNK = 1 << 20  # elements per vectorized block: bounds temporaries to ~50 MB whatever the size
_INT32_MAX = int(np.iinfo(np.int32).max)
_INT16_MAX = int(np.iinfo(np.int16).max)
_SEED_HIGH = 2**63 - 1


@dataclass(frozen=True)
class DiurnalSpec:
    """Sinusoidal rate modulation. `peak_to_trough` = max rate / min rate (>= 1; 1 = flat).
    `peak_time_s`: time of the first peak; None draws it uniformly in [0, period_s) from the generator."""

    period_s: float
    peak_to_trough: float
    peak_time_s: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ValueError(f"diurnal period_s must be > 0, got {self.period_s}")
        if not (math.isfinite(self.peak_to_trough) and self.peak_to_trough >= 1):
            raise ValueError(f"diurnal peak_to_trough must be finite and >= 1, got {self.peak_to_trough}")
        if self.peak_time_s is not None and not math.isfinite(self.peak_time_s):
            raise ValueError(f"diurnal peak_time_s must be finite or None, got {self.peak_time_s}")


@dataclass(frozen=True)
class ArrivalSpec:
    """process: "poisson" or "gamma"; rate_per_s: mean requests/s (>= 0); cv: gap coefficient of
    variation for "gamma" (> 0; ignored for "poisson"); diurnal: optional rate modulation."""

    process: Literal["poisson", "gamma"]
    rate_per_s: float
    cv: float = 1.0
    diurnal: DiurnalSpec | None = None

    def __post_init__(self) -> None:
        if self.process not in ("poisson", "gamma"):
            raise ValueError(f"arrival process must be 'poisson' or 'gamma', got {self.process!r}")
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s >= 0):
            raise ValueError(f"rate_per_s must be finite and >= 0, got {self.rate_per_s}")
        if not (math.isfinite(self.cv) and self.cv > 0):
            raise ValueError(f"cv must be finite and > 0, got {self.cv}")


@dataclass(frozen=True)
class LengthSpec:
    """dist: "lognormal" (needs prompt_mean/output_mean and, for each, cv or sigma) or "empirical"
    (needs `table`, a name in length_tables.json). min/max clip the sampled token counts (max None =
    int32 max). `joint` (empirical only): sample prompt and output through the table's rank copula."""

    dist: Literal["lognormal", "empirical"]
    prompt_mean: float | None = None
    prompt_cv: float | None = None
    prompt_sigma: float | None = None
    output_mean: float | None = None
    output_cv: float | None = None
    output_sigma: float | None = None
    prompt_min: int = 1
    prompt_max: int | None = None
    output_min: int = 1
    output_max: int | None = None
    table: str | None = None
    joint: bool = True

    def __post_init__(self) -> None:
        if self.dist == "lognormal":
            for side in ("prompt", "output"):
                mean, cv, sigma = (getattr(self, f"{side}_{k}") for k in ("mean", "cv", "sigma"))
                if mean is None or not (math.isfinite(mean) and mean > 0):
                    raise ValueError(f"lognormal needs {side}_mean > 0, got {mean}")
                if (cv is None) == (sigma is None):
                    raise ValueError(f"lognormal needs exactly one of {side}_cv and {side}_sigma")
                spread = cv if cv is not None else sigma
                if not (math.isfinite(spread) and spread >= 0):
                    raise ValueError(f"{side}_cv/{side}_sigma must be finite and >= 0, got {spread}")
        elif self.dist == "empirical":
            if self.table not in available_length_tables():
                raise ValueError(f"unknown length table {self.table!r}; shipped: {available_length_tables()}")
        else:
            raise ValueError(f"length dist must be 'lognormal' or 'empirical', got {self.dist!r}")
        for side in ("prompt", "output"):
            lo, hi = getattr(self, f"{side}_min"), getattr(self, f"{side}_max")
            if not 1 <= lo <= _INT32_MAX or (hi is not None and not lo <= hi <= _INT32_MAX):
                raise ValueError(f"need 1 <= {side}_min <= {side}_max <= 2**31-1, got {lo}, {hi}")


@dataclass(frozen=True)
class LengthTable:
    name: str
    levels: np.ndarray  # quantile levels in [0, 1]
    prompt_q: np.ndarray  # prompt tokens at each level
    output_q: np.ndarray
    copula_cum: np.ndarray  # cumulative cell probabilities of the K x K rank histogram, row-major
    bins: int
    meta: dict


@functools.cache
def _tables_json() -> dict:
    return json.loads(_TABLES_PATH.read_text())


def available_length_tables() -> list[str]:
    return sorted(_tables_json()["tables"])


@functools.cache
def load_length_table(name: str) -> LengthTable:
    doc = _tables_json()
    if name not in doc["tables"]:
        raise ValueError(f"unknown length table {name!r}; shipped: {available_length_tables()}")
    t = doc["tables"][name]
    counts = np.asarray(t["copula"]["counts"], dtype=np.float64).ravel()
    meta = {k: v for k, v in t.items() if k not in ("prompt", "output", "copula")}
    meta["prompt_mean"], meta["output_mean"] = t["prompt"]["mean"], t["output"]["mean"]
    return LengthTable(
        name=name,
        levels=np.asarray(doc["levels"], dtype=np.float64),
        prompt_q=np.asarray(t["prompt"]["quantiles"], dtype=np.float64),
        output_q=np.asarray(t["output"]["quantiles"], dtype=np.float64),
        copula_cum=np.cumsum(counts) / counts.sum(),
        bins=int(t["copula"]["bins"]),
        meta=meta,
    )


# ---------------------------------------------------------------- arrivals


def _renewal(rng: np.random.Generator, rate: float, cv: float, gamma: bool, horizon: float) -> np.ndarray:
    """Arrival epochs in [0, horizon) of a renewal process with mean gap 1/rate."""
    if rate == 0 or horizon <= 0:
        return np.zeros(0)
    n_exp = rate * horizon
    # Count sd is ~cv*sqrt(n); 8 sd of headroom makes a second allocation practically never needed.
    buf = np.empty(int(n_exp + 8 * max(cv, 1.0) * math.sqrt(n_exp) + 64))
    shape = 1.0 / (cv * cv)
    filled, t = 0, 0.0
    while t < horizon:
        if filled == buf.shape[0]:
            buf = np.concatenate([buf, np.empty(buf.shape[0] // 2 + 64)])
        seg = buf[filled : min(filled + _CHUNK, buf.shape[0])]
        if gamma:
            rng.standard_gamma(shape, out=seg)
            seg *= 1.0 / (rate * shape)
        else:
            rng.standard_exponential(out=seg)
            seg *= 1.0 / rate
        np.cumsum(seg, out=seg)
        seg += t
        t = float(seg[-1])
        filled += seg.shape[0]
    return buf[: int(np.searchsorted(buf[:filled], horizon, side="left"))]


def _diurnal_integral(t: np.ndarray, a: float, period: float, peak: float) -> np.ndarray:
    """L(t) = integral_0^t (1 + a cos(2 pi (s - peak)/period)) ds; L(k*period) = k*period."""
    w = 2 * math.pi / period
    return t + (a / w) * (np.sin(w * (t - peak)) + math.sin(w * peak))


def _invert_diurnal(u: np.ndarray, a: float, period: float, peak: float) -> None:
    """In place: u (operational time) -> t with L(t) = u. Table interpolation inside one period
    (L(t + period) = L(t) + period), then two Newton steps (L' = 1 + a cos(...) >= 1 - a > 0)."""
    grid_t = np.linspace(0.0, period, 4097)
    grid_u = _diurnal_integral(grid_t, a, period, peak)
    w = 2 * math.pi / period
    for s in range(0, u.shape[0], _CHUNK):
        x = u[s : s + _CHUNK]
        target = x.copy()
        k = np.floor(x / period)
        k *= period
        x -= k
        x[:] = np.interp(x, grid_u, grid_t)
        x += k
        for _ in range(2):
            x -= (_diurnal_integral(x, a, period, peak) - target) / (1 + a * np.cos(w * (x - peak)))
    # Newton rounding may reorder points closer than an ulp; arrivals must stay non-decreasing.
    np.maximum.accumulate(u, out=u)


def diurnal_amplitude(peak_to_trough: float) -> float:
    """The sinusoid's relative amplitude a, rate(t) = mean x (1 + a cos(...)), of a max/min rate ratio."""
    return (peak_to_trough - 1.0) / (peak_to_trough + 1.0)


def arrival_plan(
    rng: np.random.Generator, spec: Any, horizon_s: float
) -> tuple[bool, float, tuple[float, float, float] | None, float]:
    """What the renewal process of ``spec`` (an ArrivalSpec here or the scenario schema's) is drawn from:
    (gamma gaps?, their cv, the diurnal (amplitude, period, peak time) or None, the end of the renewal in
    operational time). Draws the peak time first when it is random, as every generator of it must (the whole
    table here, the streamed windows in envs/workloads/stream.py)."""
    gamma = spec.process == "gamma" and spec.cv != 1.0
    cv = spec.cv if gamma else 1.0
    d = spec.diurnal
    if d is None or d.peak_to_trough == 1.0:
        return gamma, cv, None, horizon_s
    peak = d.peak_time_s if d.peak_time_s is not None else float(rng.uniform(0.0, d.period_s))
    a = diurnal_amplitude(d.peak_to_trough)
    u_end = float(_diurnal_integral(np.array([horizon_s]), a, d.period_s, peak)[0])
    return gamma, cv, (a, d.period_s, peak), u_end


def generate_arrivals(rng: np.random.Generator, spec: ArrivalSpec, horizon_s: float) -> np.ndarray:
    """float64 arrival times in [0, horizon_s), sorted."""
    if not (math.isfinite(horizon_s) and horizon_s >= 0):
        raise ValueError(f"horizon_s must be finite and >= 0, got {horizon_s}")
    gamma, cv, diurnal, end = arrival_plan(rng, spec, horizon_s)
    t = _renewal(rng, spec.rate_per_s, cv, gamma, end)
    if diurnal is None:
        return t
    _invert_diurnal(t, *diurnal)
    # The inverse of u < u_end is < horizon_s in exact arithmetic; trim rounding spill-over.
    return t[: int(np.searchsorted(t, horizon_s, side="left"))]


# ---------------------------------------------------------------- lengths


def _round_clip(x: np.ndarray, lo: int, hi: int | None, out: np.ndarray) -> None:
    np.rint(x, out=x)
    np.clip(x, lo, _INT32_MAX if hi is None else hi, out=x)
    out[:] = x


def sample_lengths(rng: np.random.Generator, spec: LengthSpec, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_tokens, output_tokens) as int32 arrays of length n."""
    prompt = np.empty(n, dtype=np.int32)
    output = np.empty(n, dtype=np.int32)
    if spec.dist == "lognormal":
        for side, out in (("prompt", prompt), ("output", output)):
            mean, cv, sigma = (getattr(spec, f"{side}_{k}") for k in ("mean", "cv", "sigma"))
            sig = math.sqrt(math.log1p(cv * cv)) if sigma is None else sigma
            mu = math.log(mean) - sig * sig / 2  # E[exp(N(mu, sig^2))] = mean
            lo, hi = getattr(spec, f"{side}_min"), getattr(spec, f"{side}_max")
            for s in range(0, n, _CHUNK):
                z = rng.standard_normal(min(_CHUNK, n - s))
                z *= sig
                z += mu
                np.exp(z, out=z)
                _round_clip(z, lo, hi, out[s : s + z.shape[0]])
        return prompt, output
    tab = load_length_table(spec.table)
    for s in range(0, n, _CHUNK):
        m = min(_CHUNK, n - s)
        up = rng.random(m)
        uo = rng.random(m)
        if spec.joint:
            cell = np.searchsorted(tab.copula_cum, rng.random(m), side="right")
            np.minimum(cell, tab.bins * tab.bins - 1, out=cell)  # guards cum[-1] rounding below 1
            row, col = np.divmod(cell, tab.bins)
            up += row
            up /= tab.bins
            uo += col
            uo /= tab.bins
        p = np.interp(up, tab.levels, tab.prompt_q)
        _round_clip(p, spec.prompt_min, spec.prompt_max, prompt[s : s + m])
        o = np.interp(uo, tab.levels, tab.output_q)
        _round_clip(o, spec.output_min, spec.output_max, output[s : s + m])
    return prompt, output


# ---------------------------------------------------------------- tenants


def _child(rng: np.random.Generator) -> np.random.Generator:
    return np.random.default_rng(int(rng.integers(_SEED_HIGH)))


def generate_tenant_requests(
    rng: np.random.Generator,
    tenant_index: int,
    horizon_s: float,
    arrival_spec: ArrivalSpec,
    length_spec: LengthSpec,
) -> RequestTable:
    """One tenant's requests on [0, horizon_s), tenant column = tenant_index, no prefix information."""
    if not 0 <= tenant_index <= _INT16_MAX:
        raise ValueError(f"tenant_index must be in [0, {_INT16_MAX}], got {tenant_index}")
    arrival_rng, length_rng = _child(rng), _child(rng)
    arrival = generate_arrivals(arrival_rng, arrival_spec, horizon_s)
    prompt, output = sample_lengths(length_rng, length_spec, arrival.shape[0])
    return RequestTable.from_arrays(arrival, prompt, output, tenant_index)


def generate_workload(
    rng: np.random.Generator,
    tenants: list[tuple[ArrivalSpec, LengthSpec]],
    horizon_s: float,
) -> RequestTable:
    """All tenants merged by arrival; tenant i gets index i and its own child generator."""
    children = [_child(rng) for _ in tenants]
    return RequestTable.concat_sorted(
        [
            generate_tenant_requests(child, i, horizon_s, a, lengths)
            for i, (child, (a, lengths)) in enumerate(zip(children, tenants, strict=True))
        ]
    )
