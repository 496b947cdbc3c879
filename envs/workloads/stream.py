"""A scenario's synthetic requests in arrival-time windows, without building the whole table.

``requests_for_scenario`` draws each source's whole horizon at once: 100M requests are ~100 B each before the
simulator packs them. ``RequestStream`` yields the same table in time windows ``[k w, (k+1) w)``: each
synthetic source is generated lazily, drawing the *same* random numbers in the same order and blocks as
``synthetic.generate_tenant_requests``, so the windows concatenated equal ``requests_for_scenario``'s table
bit for bit (tests/test_streaming.py). Memory is O(one draw block per source + one window).

How the equality is kept (each point is an order of draws in synthetic.py):
- arrivals: ``_renewal`` fills a buffer sized from the expected count in blocks of ``_CHUNK`` gaps, each block
  cumulated on top of the previous block's last epoch; the stream replays the same block sizes (the block
  boundaries decide the float rounding of the sums). A diurnal source draws its peak time first, then runs
  the renewal in operational time; the inversion is elementwise, and the running maximum is carried.
- lengths: drawn in blocks of ``_CHUNK`` rows whose last block depends on the total count ``n``, and a
  lognormal source draws every prompt before any output. A first pass counts ``n`` on a copy of the arrival
  generator, and the output draws start from a copy of the length generator advanced past the ``n`` prompt
  draws (empirical lengths draw prompt and output per block, so they need only ``n``).
- sources are merged per window with the same stable sort as ``RequestTable.concat_sorted``: ties keep source
  order, then row order, as in the whole table.

Supported: synthetic sources without prefix groups (prefix groups draw from the scenario's generator after a
source's last request, which would need its count before the next source starts; sessions release later
steps by their predecessors' finishes; trace sources are read in windows by ``traces.iter_trace_windows``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import numpy as np

from servegym.envs.scenario import Scenario, ScenarioError, SyntheticSource
from servegym.envs.workloads.requests import RequestTable
from servegym.envs.workloads.scenario_requests import length_spec
from servegym.envs.workloads.synthetic import (
    _CHUNK,
    _child,
    _invert_diurnal,
    _round_clip,
    arrival_plan,
    load_length_table,
)


def streaming_unsupported(scenario: Scenario) -> str | None:
    """Why the scenario's workload cannot be streamed (None when it can)."""
    if scenario.applications:
        # an application's users are closed-loop sessions drawn by envs/workloads/applications.py, which
        # the window-by-window generator does not draw: streaming them would silently lose their requests
        return "applications: FairServe applications (their users' sessions) are not streamed"
    for i, src in enumerate(scenario.sources):
        if not isinstance(src, SyntheticSource):
            return f"sources.{i} is a {src.kind} source; streaming generates synthetic sources only"
        if src.prefix is not None:
            return f"sources.{i}.prefix: prefix groups are not streamed"
    return None


class _Arrivals:
    """One source's arrival epochs in order, block by block, as synthetic.generate_arrivals draws them."""

    def __init__(self, rng: np.random.Generator, src: SyntheticSource, horizon_s: float) -> None:
        a = src.arrival
        self.rng = rng
        self.rate = a.rate_per_s
        self.horizon = horizon_s
        # the renewal runs on [0, end) (operational time under a diurnal rate)
        self.gamma, self.cv, self.diurnal, self.end = arrival_plan(rng, a, horizon_s)
        self.done = self.rate == 0 or self.end <= 0
        n_exp = self.rate * self.end
        self.cap = int(n_exp + 8 * max(self.cv, 1.0) * math.sqrt(n_exp) + 64) if not self.done else 0
        self.filled = 0
        self.t = 0.0
        self.run_max = -np.inf

    def next_block(self) -> np.ndarray | None:
        """The next block of epochs below the horizon (None when the process has ended)."""
        if self.done:
            return None
        if not self.t < self.end:
            self.done = True
            return None
        if self.filled == self.cap:
            self.cap += self.cap // 2 + 64
        seg = np.empty(min(self.filled + _CHUNK, self.cap) - self.filled)
        if self.gamma:
            shape = 1.0 / (self.cv * self.cv)
            self.rng.standard_gamma(shape, out=seg)
            seg *= 1.0 / (self.rate * shape)
        else:
            self.rng.standard_exponential(out=seg)
            seg *= 1.0 / self.rate
        np.cumsum(seg, out=seg)
        seg += self.t
        self.t = float(seg[-1])
        self.filled += seg.shape[0]
        seg = seg[: int(np.searchsorted(seg, self.end, side="left"))]
        if self.diurnal is not None and seg.shape[0]:
            _invert_diurnal(seg, *self.diurnal)
            seg[0] = max(seg[0], self.run_max)  # the whole array's running maximum, carried across blocks
            np.maximum.accumulate(seg, out=seg)
            self.run_max = float(seg[-1])
            seg = seg[: int(np.searchsorted(seg, self.horizon, side="left"))]
        return seg


def _count(arrivals: _Arrivals) -> int:
    probe = copy.deepcopy(arrivals)
    n = 0
    while (block := probe.next_block()) is not None:
        n += block.shape[0]
    return n


class _Lengths:
    """One source's (prompt, output) lengths for rows in order, as synthetic.sample_lengths draws them."""

    def __init__(self, rng: np.random.Generator, spec, n: int) -> None:
        self.spec, self.n, self.rng = spec, n, rng
        self.row = 0
        if spec.dist == "lognormal":
            self.out_rng = copy.deepcopy(rng)
            for s in range(0, n, _CHUNK):  # the output draws come after every prompt draw
                self.out_rng.standard_normal(min(_CHUNK, n - s))
        else:
            self.table = load_length_table(spec.table)

    def next_block(self) -> tuple[np.ndarray, np.ndarray]:
        m = min(_CHUNK, self.n - self.row)
        self.row += m
        prompt = np.empty(m, dtype=np.int32)
        output = np.empty(m, dtype=np.int32)
        spec = self.spec
        if spec.dist == "lognormal":
            for side, out, rng in (("prompt", prompt, self.rng), ("output", output, self.out_rng)):
                mean, cv, sigma = (getattr(spec, f"{side}_{k}") for k in ("mean", "cv", "sigma"))
                sig = math.sqrt(math.log1p(cv * cv)) if sigma is None else sigma
                mu = math.log(mean) - sig * sig / 2
                z = rng.standard_normal(m)
                z *= sig
                z += mu
                np.exp(z, out=z)
                _round_clip(z, getattr(spec, f"{side}_min"), getattr(spec, f"{side}_max"), out)
            return prompt, output
        tab = self.table
        up = self.rng.random(m)
        uo = self.rng.random(m)
        if spec.joint:
            cell = np.searchsorted(tab.copula_cum, self.rng.random(m), side="right")
            np.minimum(cell, tab.bins * tab.bins - 1, out=cell)
            row, col = np.divmod(cell, tab.bins)
            up += row
            up /= tab.bins
            uo += col
            uo /= tab.bins
        _round_clip(np.interp(up, tab.levels, tab.prompt_q), spec.prompt_min, spec.prompt_max, prompt)
        _round_clip(np.interp(uo, tab.levels, tab.output_q), spec.output_min, spec.output_max, output)
        return prompt, output


class _SourceStream:
    """One synthetic source's rows, buffered a block ahead, taken by arrival time."""

    def __init__(self, src: SyntheticSource, tenant: int, horizon_s: float, rng: np.random.Generator) -> None:
        arrival_rng, length_rng = _child(rng), _child(rng)
        self.arrivals = _Arrivals(arrival_rng, src, horizon_s)
        self.n = _count(self.arrivals)
        self.lengths = _Lengths(length_rng, length_spec(src.lengths), self.n)
        self.tenant = tenant
        self.buf_t = np.zeros(0)
        self.buf_p = np.zeros(0, dtype=np.int32)
        self.buf_o = np.zeros(0, dtype=np.int32)
        self.len_p = np.zeros(0, dtype=np.int32)
        self.len_o = np.zeros(0, dtype=np.int32)

    def _refill(self) -> bool:
        block = self.arrivals.next_block()
        if block is None:
            return False
        k = block.shape[0]
        while self.len_p.shape[0] < k:  # lengths come in their own blocks of rows
            p, o = self.lengths.next_block()
            if p.shape[0] == 0:  # the counting pass and this one must draw the same arrivals
                raise RuntimeError("RequestStream: more arrivals than the counting pass found")
            self.len_p = np.concatenate([self.len_p, p])
            self.len_o = np.concatenate([self.len_o, o])
        self.buf_t = np.concatenate([self.buf_t, block])
        self.buf_p = np.concatenate([self.buf_p, self.len_p[:k]])
        self.buf_o = np.concatenate([self.buf_o, self.len_o[:k]])
        self.len_p, self.len_o = self.len_p[k:], self.len_o[k:]
        return True

    def take_before(self, t_end: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(arrival, prompt, output) of the rows arriving before ``t_end`` not taken yet."""
        while (not self.buf_t.shape[0] or self.buf_t[-1] < t_end) and self._refill():
            pass
        k = int(np.searchsorted(self.buf_t, t_end, side="left"))
        out = self.buf_t[:k], self.buf_p[:k], self.buf_o[:k]
        self.buf_t, self.buf_p, self.buf_o = self.buf_t[k:], self.buf_p[k:], self.buf_o[k:]
        return out


class RequestStream:
    """The scenario's requests as tables of consecutive arrival windows (``window_s`` each), drawn from
    ``rng`` as ``requests_for_scenario(scenario, rng)`` draws them. ``total`` is the request count."""

    def __init__(self, scenario: Scenario, rng: np.random.Generator, window_s: float) -> None:
        why = streaming_unsupported(scenario)
        if why:
            raise ScenarioError(f"scenario {scenario.name!r}: cannot stream its workload: {why}")
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be finite and > 0, got {window_s}")
        tenants = scenario.tenant_index()
        self.horizon_s = scenario.horizon_s
        self.window_s = float(window_s)
        self.sources = [
            _SourceStream(src, tenants[src.tenant], scenario.horizon_s, rng) for src in scenario.sources
        ]
        self.total = sum(s.n for s in self.sources)

    def windows(self) -> Iterator[RequestTable]:
        k = 0
        while k * self.window_s < self.horizon_s:
            k += 1
            t_end = min(k * self.window_s, self.horizon_s)
            parts = [s.take_before(t_end) for s in self.sources]
            arrival = np.concatenate([p[0] for p in parts])
            order = np.argsort(arrival, kind="stable")
            tenant = np.concatenate(
                [
                    np.full(p[0].shape[0], s.tenant, dtype=np.int16)
                    for p, s in zip(parts, self.sources, strict=True)
                ]
            )
            yield RequestTable.from_arrays(
                arrival[order],
                np.concatenate([p[1] for p in parts])[order],
                np.concatenate([p[2] for p in parts])[order],
                tenant[order],
            )
