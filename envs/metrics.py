"""Episode metrics computed from a `SimOutcome` (see docs/metrics.md, which mirrors this docstring).

`compute_metrics(o)` returns a flat ``dict[str, int | float]`` with stable keys.  A key without a
qualifier is over all requests (``ttft_s/p50``, ``slo_attainment``); ``.../interactive``, ``.../batch``
and ``.../tenant/<name>`` restrict it.  Requests with status 0 (not yet arrived at ``now_s``) are
ignored by every metric.  Times are in simulated seconds.

Latency (seconds)
    TTFT = first_token_s - arrival_s.  TPOT = (finish_s - first_token_s) / (output_tokens - 1), and 0
    when output_tokens == 1.  E2E = finish_s - arrival_s.  ``{ttft_s,tpot_s,e2e_s}[/<tier>]/{p50,p90,p99}``
    are numpy's default (linear) percentiles; TPOT and E2E over finished requests, TTFT over every
    arrived request with a first token (in flight and dropped ones included).  NaN with no samples.

SLO
    Interactive: met iff finished and TTFT <= ttft_slo_s and TPOT <= tpot_slo_s.  Batch: met iff
    finished and finish_s <= deadline_s.  Missed: finished but not met, dropped, or in flight with
    deadline_s < now_s (it can no longer make it).  In flight with deadline_s >= now_s: not judged,
    counted in ``unjudged``.  ``judged = slo_met + slo_missed``; ``slo_attainment[/<tier>|/tenant/<name>]
    = met / judged``, NaN when nothing is judged.

Throughput and goodput (per second of ``now_s``; NaN when now_s == 0)
    ``throughput/req_per_s`` finished requests, ``throughput/tok_per_s`` generated tokens (including
    partial outputs of unfinished and dropped requests).  ``goodput/req_per_s`` SLO-met requests,
    ``goodput/tok_per_s`` their output tokens.  ``gpus/mean_billed`` = sum(pool_billed_gpu_s) / now_s,
    the time-averaged number of billed GPUs; ``goodput/*_per_gpu`` divide by it (NaN with no billing).

Cost
    ``cost/gpu_hours/<pool>`` = pool_billed_gpu_s / 3600; ``cost/gpu_hours`` their sum; ``cost/usd`` =
    sum over pools of GPU-hours x price_per_gpu_hour; ``cost/usd_per_1m_output_tokens`` = cost/usd /
    sum(generated_tokens) x 1e6 (NaN with no tokens).  ``cost/usd/on_demand`` and ``cost/usd/spot`` split
    cost/usd by the pools' capacity class (``spot: true`` pools).

Fairness (VTC service, Sheng et al., OSDI'24: 1 per input token, 2 per output token)
    service_i = sum over tenant i's requests of (prompt_tokens if the request produced a first token
    else 0) + 2 x generated_tokens; demand_i = sum of prompt_tokens + 2 x output_tokens over its arrived
    requests.  Only tenants with an arrived request take part.  Jain's index J(x) = (sum x)^2 / (n sum
    x^2), 1.0 when n <= 1 or when every x is 0 (everyone equally served).
    ``fairness/jain`` = J(service_i / weight_i).  This penalizes a light tenant that was *fully*
    served: its service is small because it asked for little, not because it was starved.
    ``fairness/jain_maxmin`` = J(service_i / f_i), with f_i the weighted max-min fair share of the total
    delivered service given the demands (water-filling: raise a level L; tenant i gets min(d_i, L w_i);
    sum of shares = total service).  It is 1.0 exactly when the scheduler delivered the max-min fair
    allocation.  A tenant with f_i == 0 (zero demand) counts as x_i = 1.
    ``fairness/max_service_gap`` is copied from the simulator's VTC counter tracking.

Utilization
    ``util/busy`` = mean over replicas with up_s > 0 of busy_s / up_s (NaN if none).  ``util/kv`` =
    sum(kv_block_s) / sum(kv_capacity x up_s) (NaN if the denominator is 0).

Counters
    arrived, finished, dropped, in_flight, judged, unjudged, slo_met, slo_missed, preemptions,
    recomputed_tokens, cached_prompt_tokens, generated_tokens (sums over arrived requests, ints) and
    drop_rate = dropped / arrived (NaN with no arrivals).  Failures and spot: ``failures`` (replica
    failures), ``reclaims`` (spot reclaim warnings), ``evicted`` (times requests were sent back for
    re-routing by a failure or a forced reclaim; their lost KV state is in recomputed_tokens) and
    ``evicted_requests`` (arrived requests evicted at least once).  ``now_s`` and ``horizon_s`` are echoed.

Sessions (only when the outcome has sessions: agentic workloads, envs/workloads/sessions.py)
    A session counts once its first step has arrived (``session/started``).  ``session/completed``: its
    last step finished; completion time = last step's finish_s - first step's arrival_s, and
    ``session/completion_s/{p50,p99}`` over completed sessions.  ``session/failed``: a step was dropped,
    which abandons the rest of the session.  Session SLO (tenant ``session_slo_s``): met iff completed
    within it; judged = completed, failed, or still running past it; ``session/slo_attainment`` =
    session/slo_met / session/judged (NaN when nothing is judged).  Prefix reuse over finished later
    steps: ``session/context_tokens`` is the context each shares with its previous step (that step's
    prompt + output), ``session/reused_tokens`` the part of it served from the prefix cache (at most the
    context), ``session/reprefilled_tokens`` the rest, prefilled again.

Context limits (only under timing v1, which enforces each model's context; envs/sim/timing.py)
    ``context/rejected``: requests removed at load because prompt + output exceed their model's context
    (context_policy reject; not in any other metric); ``context/truncated``: requests whose prompt was
    shortened to fit (truncate); ``context/dropped``: arrived requests dropped because they exceed it (drop;
    also in ``dropped`` and SLO misses).

Disaggregation (only when some pool has role prefill or decode; envs/sim/disagg.py)
    ``disagg/transfers``: KV transfers completed; ``disagg/transfer_bytes``: KV bytes they moved (sums over
    arrived requests); ``disagg/transfer_failures``: transfers or waits cut by a replica failure.
    ``disagg/transfer_s/{mean,p50,p99}``: per request that was transferred, the seconds its transfers took
    (visible time after its prefill, layer-wise overlap taken off). ``disagg/decode_queue_s/{mean,p99}``: per
    transferred request, the seconds its KV waited for a decode replica with room (the decode phase's
    queueing; the prefill phase's queueing is in TTFT). Per role R in {mixed, prefill, decode} present:
    ``util/busy/R`` and ``util/kv/R`` (as util/busy and util/kv over the replicas of R's pools),
    ``gpus/mean_billed/R``, ``cost/usd/R``, and ``goodput/req_per_s_per_gpu/R`` = slo_met / billed GPU-seconds
    of R's pools (every SLO-met request used both phases, so the per-role figures add up as 1/sum(1/x_R)).

Values are Python ints/floats, so ``json.dumps`` works; NaN is emitted as the (non-standard) ``NaN``.
Cost is O(N) time with a handful of N-sized temporaries; the only Python loops are over tenants/pools.
"""

from __future__ import annotations

import math

import numpy as np

from servegym.envs.app_metrics import application_metrics
from servegym.envs.sim.outcome import (
    STATUS_DROPPED,
    STATUS_FINISHED,
    STATUS_IN_FLIGHT,
    STATUS_NOT_ARRIVED,
    TIER_NAMES,
    SimOutcome,
)
from servegym.envs.slo import _dot, _tpot, jain_index, met_finished

PERCENTILES = (50, 90, 99)
NAN = float("nan")


def compute_metrics(o: SimOutcome) -> dict[str, int | float]:
    """All metrics of an outcome as a flat dict; see the module docstring for exact definitions."""
    o.validate()
    m: dict[str, int | float] = {"now_s": float(o.now_s), "horizon_s": float(o.horizon_s)}
    status = o.status
    arrived = status != STATUS_NOT_ARRIVED
    finished = status == STATUS_FINISHED
    # Tenant ids as intp once: every bincount would otherwise make its own converted copy.
    tenant = o.tenant.astype(np.intp)
    n_tenants = len(o.tenant_names)

    counts = o.summary_counts()
    m.update(counts)
    generated = int(o.generated_tokens.sum(where=arrived, dtype=np.int64))

    met_tokens = _slo_metrics(o, m, finished, tenant, n_tenants)
    _latency_metrics(o, m, arrived, finished)

    # Throughput / goodput.
    billed_gpu_s = float(o.pool_billed_gpu_s.sum())
    m["throughput/req_per_s"] = _div(counts["finished"], o.now_s)
    m["throughput/tok_per_s"] = _div(generated, o.now_s)
    m["goodput/req_per_s"] = _div(m["slo_met"], o.now_s)
    m["goodput/tok_per_s"] = _div(met_tokens, o.now_s)
    m["gpus/mean_billed"] = _div(billed_gpu_s, o.now_s)
    # (met / now) / (billed / now) == met / billed, which stays defined only if both are nonzero.
    m["goodput/req_per_s_per_gpu"] = _div(m["slo_met"], billed_gpu_s) if o.now_s > 0 else NAN
    m["goodput/tok_per_s_per_gpu"] = _div(met_tokens, billed_gpu_s) if o.now_s > 0 else NAN

    # Cost.
    gpu_hours = o.pool_billed_gpu_s / 3600.0
    usd = _dot(gpu_hours, o.pool_price_per_gpu_hour)
    m["cost/usd"] = usd
    m["cost/usd_per_1m_output_tokens"] = _div(usd * 1e6, generated)
    m["cost/gpu_hours"] = float(gpu_hours.sum())
    for name, h in zip(o.pool_names, gpu_hours.tolist(), strict=True):
        m[f"cost/gpu_hours/{name}"] = h
    spot = o.pool_spot.astype(bool) if o.pool_spot is not None else np.zeros(len(o.pool_names), bool)
    usd_pool = gpu_hours * o.pool_price_per_gpu_hour
    m["cost/usd/on_demand"] = float(usd_pool[~spot].sum())
    m["cost/usd/spot"] = float(usd_pool[spot].sum())

    _fairness_metrics(o, m, arrived, tenant, n_tenants)

    # Utilization.
    up = o.replica_up_s
    active = up > 0
    m["util/busy"] = float(np.mean(o.replica_busy_s[active] / up[active])) if active.any() else NAN
    kv_capacity_s = _dot(o.replica_kv_capacity.astype(np.float64), up)
    m["util/kv"] = _div(float(o.replica_kv_block_s.sum()), kv_capacity_s)

    # Counters.
    m["preemptions"] = int(o.preemptions.sum(where=arrived, dtype=np.int64))
    m["recomputed_tokens"] = int(o.recomputed_tokens.sum(where=arrived, dtype=np.int64))
    m["cached_prompt_tokens"] = int(o.cached_prompt_tokens.sum(where=arrived, dtype=np.int64))
    m["generated_tokens"] = generated
    m["failures"] = int(o.failures)
    m["reclaims"] = int(o.reclaims)
    ev = o.evictions
    m["evicted"] = int(ev.sum(where=arrived, dtype=np.int64)) if ev is not None else 0
    m["evicted_requests"] = int(np.count_nonzero((ev > 0) & arrived)) if ev is not None else 0
    m["drop_rate"] = _div(counts["dropped"], counts["arrived"])
    if o.context_limit is not None:
        _context_metrics(o, m, arrived)
    if o.session is not None:
        _session_metrics(o, m, arrived, finished)
    if o.pool_role is not None:
        _disagg_metrics(o, m, arrived)
    if o.tenant_application is not None:
        m.update(application_metrics(o))
    return m


ROLE_NAMES = ("mixed", "prefill", "decode")


def _disagg_metrics(o: SimOutcome, m: dict, arrived: np.ndarray) -> None:
    """Prefill/decode disaggregation (module docstring, Disaggregation)."""
    assert o.transfers is not None and o.transfer_s is not None and o.transfer_wait_s is not None
    assert o.transfer_bytes is not None
    moved = arrived & (o.transfers > 0)
    m["disagg/transfers"] = int(o.transfers.sum(where=arrived, dtype=np.int64))
    m["disagg/transfer_bytes"] = float(o.transfer_bytes.sum(where=arrived))
    m["disagg/transfer_failures"] = int(o.transfer_failures)
    t = o.transfer_s[moved]
    w = o.transfer_wait_s[moved]
    m["disagg/transfer_s/mean"] = float(t.mean()) if t.size else NAN
    for p in (50, 99):
        m[f"disagg/transfer_s/p{p}"] = float(np.percentile(t, p)) if t.size else NAN
    m["disagg/decode_queue_s/mean"] = float(w.mean()) if w.size else NAN
    m["disagg/decode_queue_s/p99"] = float(np.percentile(w, 99)) if w.size else NAN
    rep_role = o.pool_role[o.replica_pool]
    up = o.replica_up_s
    usd_pool = o.pool_billed_gpu_s / 3600.0 * o.pool_price_per_gpu_hour
    for role, name in enumerate(ROLE_NAMES):
        pools = o.pool_role == role
        if not pools.any():
            continue
        reps = rep_role == role
        act = reps & (up > 0)
        m[f"util/busy/{name}"] = float(np.mean(o.replica_busy_s[act] / up[act])) if act.any() else NAN
        cap_s = _dot(o.replica_kv_capacity[reps].astype(np.float64), up[reps])
        m[f"util/kv/{name}"] = _div(float(o.replica_kv_block_s[reps].sum()), cap_s)
        billed = float(o.pool_billed_gpu_s[pools].sum())
        m[f"gpus/mean_billed/{name}"] = _div(billed, o.now_s)
        m[f"cost/usd/{name}"] = float(usd_pool[pools].sum())
        m[f"goodput/req_per_s_per_gpu/{name}"] = _div(m["slo_met"], billed) if o.now_s > 0 else NAN


def _context_metrics(o: SimOutcome, m: dict, arrived: np.ndarray) -> None:
    over = o.prompt_tokens.astype(np.int64) + o.output_tokens > o.context_limit
    m["context/rejected"] = int(o.context_rejected)
    m["context/truncated"] = int(o.context_truncated)
    m["context/dropped"] = int(np.count_nonzero(arrived & over & (o.status == STATUS_DROPPED)))


def _session_metrics(o: SimOutcome, m: dict, arrived: np.ndarray, finished: np.ndarray) -> None:
    """Agentic sessions (module docstring, Sessions); only sessions whose first step has arrived count."""
    sid = o.session
    in_sess = sid >= 0
    n_sess = int(sid.max(initial=-1)) + 1
    first = in_sess & (o.session_context_tokens == 0) & arrived
    first &= np.isfinite(o.arrival_s)
    start = np.full(n_sess, np.nan)
    start[sid[first]] = o.arrival_s[first]
    tenant = np.zeros(n_sess, dtype=np.intp)
    tenant[sid[in_sess]] = o.tenant[in_sess]
    last = in_sess & (o.session_steps_left == 0) & finished
    end = np.full(n_sess, np.nan)
    end[sid[last]] = o.finish_s[last]
    dropped = np.zeros(n_sess, dtype=bool)
    dropped[sid[in_sess & (o.status == STATUS_DROPPED)]] = True
    started = ~np.isnan(start)
    done = started & ~np.isnan(end)
    failed = started & dropped  # a dropped step abandons the rest of its session
    slo = o.tenant_session_slo_s[tenant] if o.tenant_session_slo_s is not None else np.full(n_sess, np.nan)
    has_slo = started & ~np.isnan(slo)
    ct = end - start
    met = has_slo & done & (ct <= slo)
    # judged: completed, failed, or still running past its target (it can no longer make it)
    late = has_slo & ~done & ~failed & (o.now_s - start > slo)
    judged = has_slo & (done | failed | late)
    m["session/started"] = int(started.sum())
    m["session/completed"] = int(done.sum())
    m["session/failed"] = int(failed.sum())
    m["session/completion_s/p50"] = float(np.percentile(ct[done], 50)) if done.any() else NAN
    m["session/completion_s/p99"] = float(np.percentile(ct[done], 99)) if done.any() else NAN
    m["session/slo_met"] = int(met.sum())
    m["session/judged"] = int(judged.sum())
    m["session/slo_attainment"] = _div(int(met.sum()), int(judged.sum()))
    # context a later step shares with its predecessor: served from the prefix cache, or prefilled again
    later = in_sess & finished & (o.session_context_tokens > 0)
    ctx = o.session_context_tokens[later].astype(np.int64)
    reused = np.minimum(o.cached_prompt_tokens[later].astype(np.int64), ctx)
    m["session/context_tokens"] = int(ctx.sum())
    m["session/reused_tokens"] = int(reused.sum())
    m["session/reprefilled_tokens"] = int((ctx - reused).sum())


def _latency_metrics(o: SimOutcome, m: dict, arrived: np.ndarray, finished: np.ndarray) -> None:
    has_first = arrived & ~np.isnan(o.first_token_s)
    ttft = o.first_token_s[has_first] - o.arrival_s[has_first]
    _percentiles(m, "ttft_s", ttft, o.tier[has_first])
    del ttft
    fin_tier = o.tier[finished]
    _percentiles(m, "tpot_s", _tpot(o, finished), fin_tier)
    _percentiles(m, "e2e_s", o.finish_s[finished] - o.arrival_s[finished], fin_tier)


def _percentiles(m: dict, prefix: str, values: np.ndarray, tier: np.ndarray) -> None:
    groups = [(prefix, values)] + [
        (f"{prefix}/{name}", values[tier == t]) for t, name in enumerate(TIER_NAMES)
    ]
    for key, x in groups:
        # np.percentile raises on empty input; documented result is NaN.
        qs = np.percentile(x, PERCENTILES).tolist() if x.size else [NAN] * len(PERCENTILES)
        for p, q in zip(PERCENTILES, qs, strict=True):
            m[f"{key}/p{p}"] = float(q)


def _slo_metrics(o: SimOutcome, m: dict, finished: np.ndarray, tenant: np.ndarray, n_tenants: int) -> int:
    """SLO counters and attainment; returns the output tokens of SLO-met requests (for goodput)."""
    # Judge finished requests on compact arrays (only finished rows need TTFT/TPOT).
    fin_tier = o.tier[finished]
    met_fin = met_finished(o, finished)

    in_flight = o.status == STATUS_IN_FLIGHT
    overdue = in_flight & (o.deadline_s < o.now_s)
    judged = finished | (o.status == STATUS_DROPPED) | overdue

    n_judged = int(np.count_nonzero(judged))
    n_met = int(np.count_nonzero(met_fin))
    m["judged"] = n_judged
    m["unjudged"] = int(np.count_nonzero(in_flight)) - int(np.count_nonzero(overdue))
    m["slo_met"] = n_met
    m["slo_missed"] = n_judged - n_met
    m["slo_attainment"] = _div(n_met, n_judged)

    judged_tier = np.bincount(o.tier[judged], minlength=len(TIER_NAMES))
    met_tier = np.bincount(fin_tier[met_fin], minlength=len(TIER_NAMES))
    for t, name in enumerate(TIER_NAMES):
        m[f"slo_attainment/{name}"] = _div(int(met_tier[t]), int(judged_tier[t]))

    judged_tenant = np.bincount(tenant[judged], minlength=n_tenants)
    met_tenant = np.bincount(tenant[finished][met_fin], minlength=n_tenants)
    for i, name in enumerate(o.tenant_names):
        m[f"slo_attainment/tenant/{name}"] = _div(int(met_tenant[i]), int(judged_tenant[i]))

    return int(o.output_tokens[finished][met_fin].sum(dtype=np.int64))


def _fairness_metrics(
    o: SimOutcome, m: dict, arrived: np.ndarray, tenant: np.ndarray, n_tenants: int
) -> None:
    # Prompt tokens count as served once the request produced its first token (prefill done).
    prefilled = arrived & ~np.isnan(o.first_token_s)
    service = _tenant_sum(tenant[prefilled], o.prompt_tokens[prefilled], n_tenants)
    service += 2.0 * _tenant_sum(tenant[arrived], o.generated_tokens[arrived], n_tenants)
    demand_tokens = o.prompt_tokens[arrived].astype(np.float64) + 2.0 * o.output_tokens[arrived]
    demand = _tenant_sum(tenant[arrived], demand_tokens, n_tenants)
    present = np.bincount(tenant[arrived], minlength=n_tenants) > 0

    service, demand, weight = service[present], demand[present], o.tenant_weights[present]
    m["fairness/jain"] = jain_index(service / weight)
    share = max_min_shares(demand, weight, float(service.sum()))
    # f_i == 0 only with zero demand (then service is 0 too): the tenant got all it asked for.
    ratio = np.divide(service, share, out=np.ones_like(service), where=share > 0)
    m["fairness/jain_maxmin"] = jain_index(ratio)
    m["fairness/max_service_gap"] = float(o.max_service_gap)


def _tenant_sum(tenant: np.ndarray, values: np.ndarray, n_tenants: int) -> np.ndarray:
    """Per-tenant float64 sums; the astype guards numpy returning int64 for an empty weighted bincount."""
    return np.bincount(tenant, weights=values, minlength=n_tenants).astype(np.float64, copy=False)


def max_min_shares(demand: np.ndarray, weight: np.ndarray, capacity: float) -> np.ndarray:
    """Weighted max-min fair split of `capacity` among tenants with `demand`s, by water-filling.

    Tenants are visited in increasing demand/weight order; while the current level (remaining capacity /
    remaining weight) covers a tenant's demand it is fully satisfied and leaves; the rest share the
    remaining capacity in proportion to weight.  If capacity >= total demand every tenant gets its demand.
    """
    share = np.zeros(demand.shape, dtype=np.float64)
    remaining_capacity, remaining_weight = capacity, float(weight.sum())
    order = np.argsort(demand / weight, kind="stable")
    for k, i in enumerate(order):
        level = max(remaining_capacity, 0.0) / remaining_weight
        if demand[i] <= level * weight[i]:
            share[i] = demand[i]
            remaining_capacity -= demand[i]
            remaining_weight -= weight[i]
        else:
            rest = order[k:]
            share[rest] = level * weight[rest]
            break
    return share


def format_metrics_table(metrics: dict[str, int | float], keys: list[str] | None = None) -> str:
    """Aligned two-column Markdown table (readable as plain text in a terminal).

    `keys` selects and orders rows (default: all, in dict order); a key missing from `metrics` shows "-".
    Ints print as-is, floats with 6 significant digits, NaN as "nan".
    """
    rows = [(k, _format_value(metrics[k]) if k in metrics else "-") for k in (keys or list(metrics))]
    kw = max([len("metric")] + [len(k) for k, _ in rows])
    vw = max([len("value")] + [len(v) for _, v in rows])
    lines = [f"| {'metric':<{kw}} | {'value':>{vw}} |", f"|{'-' * (kw + 2)}|{'-' * (vw + 1)}:|"]
    lines += [f"| {k:<{kw}} | {v:>{vw}} |" for k, v in rows]
    return "\n".join(lines)


def _format_value(v: int | float) -> str:
    if isinstance(v, (bool, int, np.integer)):
        return str(int(v))
    return "nan" if math.isnan(v) else f"{v:.6g}"


def _div(num: float, den: float) -> float:
    """num / den as float, NaN when the denominator is 0 (an empty population, not an error)."""
    return float(num) / float(den) if den else NAN
