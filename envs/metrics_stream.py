"""``compute_metrics`` for a streamed run, folded block by block in bounded memory.

``StreamingMetrics`` is the sink of ``StreamingSimulator.run`` (envs/sim/stream.py): it receives the SimOutcome
fields of every retired block of requests (all finished or dropped) and, at the end, the outcome of the rows
still resident with the run's pool and replica totals. It returns the keys ``compute_metrics`` returns for the
whole run, by the same definitions (envs/metrics.py):

- counts, SLO judgement, token sums, per-tenant fairness sums: exact. Token sums are kept as integers; the
  whole-run code sums the same integers in float64, which is exact below 2**53, so the values are identical.
- pool, replica and cost keys: ``compute_metrics`` of the final outcome (they come from the run's totals).
- latency percentiles (``ttft_s``, ``tpot_s``, ``e2e_s``, overall and per tier): exact while a metric has at
  most ``exact_limit`` samples (its values are kept, and numpy's percentile runs on them as in the whole run);
  past that, the samples move into a histogram of log-spaced buckets (relative width ``REL_BUCKET``), and a
  percentile is numpy's linear interpolation between the bucket centres of its two neighbouring ranks:
  relative error at most REL_BUCKET / 2 (0.05%) for values in [MIN_VALUE, MAX_VALUE] s; values below
  MIN_VALUE (TPOT 0 of single-token outputs) are counted as 0 exactly, values above MAX_VALUE clip to it.

Not covered (``StreamingSimulator`` refuses these runs): session and disaggregation metrics.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from servegym.envs.metrics import NAN, PERCENTILES, _div, _percentiles, compute_metrics, max_min_shares
from servegym.envs.sim.outcome import (
    STATUS_DROPPED,
    STATUS_FINISHED,
    STATUS_IN_FLIGHT,
    STATUS_NOT_ARRIVED,
    TIER_NAMES,
    SimOutcome,
)
from servegym.envs.slo import _tpot, jain_index, met_finished

REL_BUCKET = 1e-3
MIN_VALUE, MAX_VALUE = 1e-6, 1e7
_N_BUCKETS = int(math.ceil(math.log(MAX_VALUE / MIN_VALUE) / math.log1p(REL_BUCKET))) + 2
_LOG_STEP = math.log1p(REL_BUCKET)


class _Quantiles:
    """One latency metric's samples with their tiers: exact values up to ``limit``, then a histogram."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.values: list[np.ndarray] = []
        self.tiers: list[np.ndarray] = []
        self.n = 0
        self.hist: np.ndarray | None = None  # [tier, bucket]; bucket 0 holds the zeros

    def add(self, values: np.ndarray, tier: np.ndarray) -> None:
        self.n += values.shape[0]
        if self.hist is None:
            self.values.append(values)
            self.tiers.append(tier)
            if self.n <= self.limit:
                return
            values, tier = np.concatenate(self.values), np.concatenate(self.tiers)
            self.values, self.tiers = [], []
            self.hist = np.zeros((len(TIER_NAMES), _N_BUCKETS), dtype=np.int64)
        b = np.zeros(values.shape[0], dtype=np.int64)
        pos = values >= MIN_VALUE
        b[pos] = 1 + np.floor(np.log(np.minimum(values[pos], MAX_VALUE) / MIN_VALUE) / _LOG_STEP).astype(
            np.int64
        )
        np.minimum(b, _N_BUCKETS - 1, out=b)
        b += tier.astype(np.int64) * _N_BUCKETS
        self.hist += np.bincount(b, minlength=self.hist.size).reshape(self.hist.shape)

    def write(self, m: dict, prefix: str) -> None:
        if self.hist is None:
            if self.values:
                _percentiles(m, prefix, np.concatenate(self.values), np.concatenate(self.tiers))
            else:
                _percentiles(m, prefix, np.zeros(0), np.zeros(0, dtype=np.int8))
            return
        centre = np.empty(_N_BUCKETS)
        centre[0] = 0.0
        centre[1:] = MIN_VALUE * np.exp((np.arange(_N_BUCKETS - 1) + 0.5) * _LOG_STEP)
        groups = [(prefix, self.hist.sum(axis=0))] + [
            (f"{prefix}/{name}", self.hist[t]) for t, name in enumerate(TIER_NAMES)
        ]
        for key, h in groups:
            n = int(h.sum())
            cum = np.cumsum(h)
            for p in PERCENTILES:
                if n == 0:
                    m[f"{key}/p{p}"] = NAN
                    continue
                r = p / 100.0 * (n - 1)
                lo, frac = int(math.floor(r)), r - math.floor(r)
                v_lo = centre[int(np.searchsorted(cum, lo, side="right"))]
                v_hi = centre[int(np.searchsorted(cum, min(lo + 1, n - 1), side="right"))]
                m[f"{key}/p{p}"] = float(v_lo + (v_hi - v_lo) * frac)


class StreamingMetrics:
    """The sink that folds a streamed run's requests into ``compute_metrics``'s keys (see module doc)."""

    def __init__(self, n_tenants: int, exact_limit: int = 1_000_000) -> None:
        self.n_tenants = n_tenants
        self.status = np.zeros(4, dtype=np.int64)
        self.ints = dict.fromkeys(
            ("generated", "met", "met_tokens", "overdue", "preemptions", "recomputed", "cached", "evicted",
             "evicted_requests", "context_dropped"),
            0,
        )  # fmt: skip
        t, k = len(TIER_NAMES), n_tenants
        self.judged_tier = np.zeros(t, np.int64)
        self.met_tier = np.zeros(t, np.int64)
        self.judged_tenant = np.zeros(k, np.int64)
        self.met_tenant = np.zeros(k, np.int64)
        self.service_prompt = np.zeros(k, np.int64)
        self.service_generated = np.zeros(k, np.int64)
        self.demand_prompt = np.zeros(k, np.int64)
        self.demand_output = np.zeros(k, np.int64)
        self.present = np.zeros(k, np.int64)
        self.q = {name: _Quantiles(exact_limit) for name in ("ttft_s", "tpot_s", "e2e_s")}

    def add(self, fields: dict[str, np.ndarray], now_s: float = math.inf) -> None:
        """Fold a block of requests (SimOutcome per-request fields); ``now_s`` judges the ones in flight."""
        o = SimpleNamespace(**fields)
        status, tier = o.status, o.tier
        tenant = o.tenant.astype(np.intp)
        self.status += np.bincount(status, minlength=4)
        arrived = status != STATUS_NOT_ARRIVED
        finished = status == STATUS_FINISHED
        k = self.n_tenants

        fin_tier = tier[finished]
        tpot_fin = _tpot(o, finished)
        met_fin = met_finished(o, finished, tpot_fin)  # the SLO rule of envs/slo.py
        in_flight = status == STATUS_IN_FLIGHT
        overdue = in_flight & (o.deadline_s < now_s)
        judged = finished | (status == STATUS_DROPPED) | overdue
        self.ints["overdue"] += int(np.count_nonzero(overdue))
        self.ints["met"] += int(np.count_nonzero(met_fin))
        self.ints["met_tokens"] += int(o.output_tokens[finished][met_fin].sum(dtype=np.int64))
        self.judged_tier += np.bincount(tier[judged], minlength=len(TIER_NAMES))
        self.met_tier += np.bincount(fin_tier[met_fin], minlength=len(TIER_NAMES))
        self.judged_tenant += np.bincount(tenant[judged], minlength=k)
        self.met_tenant += np.bincount(tenant[finished][met_fin], minlength=k)

        has_first = arrived & ~np.isnan(o.first_token_s)
        self.q["ttft_s"].add(o.first_token_s[has_first] - o.arrival_s[has_first], tier[has_first])
        self.q["tpot_s"].add(tpot_fin, fin_tier)
        self.q["e2e_s"].add(o.finish_s[finished] - o.arrival_s[finished], fin_tier)

        gen = o.generated_tokens.astype(np.int64)
        self.ints["generated"] += int(gen.sum(where=arrived))
        self.service_prompt += _isum(tenant[has_first], o.prompt_tokens[has_first], k)
        self.service_generated += _isum(tenant[arrived], gen[arrived], k)
        self.demand_prompt += _isum(tenant[arrived], o.prompt_tokens[arrived], k)
        self.demand_output += _isum(tenant[arrived], o.output_tokens[arrived], k)
        self.present += np.bincount(tenant[arrived], minlength=k)
        self.ints["preemptions"] += int(o.preemptions.sum(where=arrived, dtype=np.int64))
        self.ints["recomputed"] += int(o.recomputed_tokens.sum(where=arrived, dtype=np.int64))
        self.ints["cached"] += int(o.cached_prompt_tokens.sum(where=arrived, dtype=np.int64))
        self.ints["evicted"] += int(o.evictions.sum(where=arrived, dtype=np.int64))
        self.ints["evicted_requests"] += int(np.count_nonzero((o.evictions > 0) & arrived))
        if "context_limit" in fields:
            over = o.prompt_tokens.astype(np.int64) + o.output_tokens > o.context_limit
            self.ints["context_dropped"] += int(np.count_nonzero(arrived & over & (status == STATUS_DROPPED)))

    def finish(self, outcome: SimOutcome) -> dict[str, int | float]:
        """Fold the resident rows of the final outcome and return the whole run's metrics."""
        names = [f for f in ("arrival_s", "prompt_tokens", "output_tokens", "tenant", "tier", "ttft_slo_s",
                             "tpot_slo_s", "deadline_s", "status", "first_token_s", "finish_s", "drop_s",
                             "generated_tokens", "cached_prompt_tokens", "preemptions", "recomputed_tokens",
                             "evictions", "context_limit") if getattr(outcome, f) is not None]  # fmt: skip
        self.add({f: getattr(outcome, f) for f in names}, now_s=outcome.now_s)
        m = compute_metrics(outcome)  # the run's pool/replica totals; request keys are replaced below
        c = self.status
        counts = {"arrived": int(c[1:].sum()), "finished": int(c[STATUS_FINISHED]),
                  "dropped": int(c[STATUS_DROPPED]), "in_flight": int(c[STATUS_IN_FLIGHT])}  # fmt: skip
        m.update(counts)
        n_judged = int(self.judged_tier.sum())
        n_met = self.ints["met"]
        m["judged"] = n_judged
        m["unjudged"] = counts["in_flight"] - self.ints["overdue"]
        m["slo_met"] = n_met
        m["slo_missed"] = n_judged - n_met
        m["slo_attainment"] = _div(n_met, n_judged)
        for t, name in enumerate(TIER_NAMES):
            m[f"slo_attainment/{name}"] = _div(int(self.met_tier[t]), int(self.judged_tier[t]))
        for i, name in enumerate(outcome.tenant_names):
            m[f"slo_attainment/tenant/{name}"] = _div(int(self.met_tenant[i]), int(self.judged_tenant[i]))
        for name, q in self.q.items():
            q.write(m, name)

        generated, met_tokens, now = self.ints["generated"], self.ints["met_tokens"], outcome.now_s
        billed_gpu_s = float(outcome.pool_billed_gpu_s.sum())
        m["throughput/req_per_s"] = _div(counts["finished"], now)
        m["throughput/tok_per_s"] = _div(generated, now)
        m["goodput/req_per_s"] = _div(n_met, now)
        m["goodput/tok_per_s"] = _div(met_tokens, now)
        m["goodput/req_per_s_per_gpu"] = _div(n_met, billed_gpu_s) if now > 0 else NAN
        m["goodput/tok_per_s_per_gpu"] = _div(met_tokens, billed_gpu_s) if now > 0 else NAN
        m["cost/usd_per_1m_output_tokens"] = _div(m["cost/usd"] * 1e6, generated)

        present = self.present > 0
        service = self.service_prompt.astype(np.float64) + 2.0 * self.service_generated.astype(np.float64)
        demand = self.demand_prompt.astype(np.float64) + 2.0 * self.demand_output.astype(np.float64)
        service, demand, weight = service[present], demand[present], outcome.tenant_weights[present]
        m["fairness/jain"] = jain_index(service / weight)
        share = max_min_shares(demand, weight, float(service.sum()))
        m["fairness/jain_maxmin"] = jain_index(
            np.divide(service, share, out=np.ones_like(service), where=share > 0)
        )

        m["preemptions"] = self.ints["preemptions"]
        m["recomputed_tokens"] = self.ints["recomputed"]
        m["cached_prompt_tokens"] = self.ints["cached"]
        m["generated_tokens"] = generated
        m["evicted"] = self.ints["evicted"]
        m["evicted_requests"] = self.ints["evicted_requests"]
        m["drop_rate"] = _div(counts["dropped"], counts["arrived"])
        if outcome.context_limit is not None:
            m["context/dropped"] = self.ints["context_dropped"]
        return m


def _isum(tenant: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """Per-tenant integer sums: float64 sums of integers are exact below 2**53, far above one block's."""
    return np.bincount(tenant, weights=values.astype(np.float64), minlength=k).astype(np.int64)
