"""Metrics on small hand-built outcomes; every expected value is worked out by hand in the comments."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servegym.envs.metrics import compute_metrics, format_metrics_table, jain_index, max_min_shares
from servegym.envs.sim.outcome import SimOutcome
from tests.conftest import examples

NAN = float("nan")
INF = float("inf")


def req(
    arrival: float = 0.0,
    *,
    prompt: int = 10,
    output: int = 5,
    tenant: int = 0,
    tier: int = 0,
    ttft_slo: float = 1.0,
    tpot_slo: float = 0.5,
    deadline: float | None = None,
    status: int = 2,
    first: float = NAN,
    finish: float = NAN,
    drop: float = NAN,
    generated: int | None = None,
    cached: int = 0,
    preempt: int = 0,
    recomputed: int = 0,
) -> dict:
    """One request row.  Deadline defaults to the interactive rule (batch: inf); a finished request
    defaults to generated == output, anything else to 0 generated tokens."""
    if tier == 1:
        ttft_slo = tpot_slo = INF
    if deadline is None:
        deadline = arrival + ttft_slo + tpot_slo * (output - 1) if tier == 0 else INF
    if generated is None:
        generated = output if status == 2 else 0
    return dict(
        arrival_s=arrival, prompt_tokens=prompt, output_tokens=output, tenant=tenant, tier=tier,
        ttft_slo_s=ttft_slo, tpot_slo_s=tpot_slo, deadline_s=deadline, status=status, first_token_s=first,
        finish_s=finish, drop_s=drop, generated_tokens=generated, cached_prompt_tokens=cached,
        preemptions=preempt, recomputed_tokens=recomputed,
    )  # fmt: skip


_REQ_DTYPES = {
    "arrival_s": np.float64, "prompt_tokens": np.int32, "output_tokens": np.int32, "tenant": np.int16,
    "tier": np.int8, "ttft_slo_s": np.float32, "tpot_slo_s": np.float32, "deadline_s": np.float64,
    "status": np.int8, "first_token_s": np.float64, "finish_s": np.float64, "drop_s": np.float64,
    "generated_tokens": np.int32, "cached_prompt_tokens": np.int32, "preemptions": np.int16,
    "recomputed_tokens": np.int32,
}  # fmt: skip


def build(
    requests: list[dict],
    *,
    now: float = 100.0,
    tenants: dict[str, float] | None = None,
    pools: list[tuple[str, float, float]] | None = None,  # (name, price $/GPU-h, billed GPU-s)
    replicas: list[tuple[int, float, float, float, int]] | None = None,  # (pool, busy, up, kv_block_s, cap)
    max_service_gap: float = 0.0,
) -> SimOutcome:
    tenants = tenants if tenants is not None else {"t0": 1.0}
    pools = pools if pools is not None else [("gpu", 2.0, 100.0)]
    replicas = replicas if replicas is not None else [(0, 50.0, 100.0, 0.0, 100)]
    cols = {k: np.array([r[k] for r in requests], dtype=dt) for k, dt in _REQ_DTYPES.items()}
    return SimOutcome(
        now_s=now,
        horizon_s=now,
        **cols,
        tenant_names=tuple(tenants),
        tenant_weights=np.array(list(tenants.values()), dtype=np.float64),
        pool_names=tuple(p[0] for p in pools),
        pool_gpus_per_replica=np.ones(len(pools), dtype=np.int32),
        pool_price_per_gpu_hour=np.array([p[1] for p in pools], dtype=np.float64),
        pool_billed_gpu_s=np.array([p[2] for p in pools], dtype=np.float64),
        replica_pool=np.array([r[0] for r in replicas], dtype=np.int32),
        replica_busy_s=np.array([r[1] for r in replicas], dtype=np.float64),
        replica_up_s=np.array([r[2] for r in replicas], dtype=np.float64),
        replica_kv_block_s=np.array([r[3] for r in replicas], dtype=np.float64),
        replica_kv_capacity=np.array([r[4] for r in replicas], dtype=np.int64),
        max_service_gap=max_service_gap,
    )


def finished(arrival: float, ttft: float, tpot: float, output: int = 5, **kw) -> dict:
    """A finished request with the given TTFT and TPOT."""
    first = arrival + ttft
    return req(arrival, output=output, first=first, finish=first + tpot * (output - 1), **kw)


# ---------------------------------------------------------------- latency


def test_latency_percentiles_two_requests():
    # r0: arrival 0, first 0.5, finish 2.5, 5 tokens -> TTFT 0.5, TPOT 2.0/4 = 0.5, E2E 2.5
    # r1: arrival 1, first 1.2, finish 1.2, 1 token  -> TTFT 0.2, TPOT 0,           E2E 0.2
    o = build(
        [
            req(0.0, output=5, first=0.5, finish=2.5, ttft_slo=1, tpot_slo=1),
            req(1.0, output=1, first=1.2, finish=1.2, ttft_slo=1, tpot_slo=1),
        ]
    )
    m = compute_metrics(o)
    # Linear percentile of two samples a<b at q: a + q/100 * (b - a).
    assert m["ttft_s/p50"] == pytest.approx(0.35)  # 0.2 + 0.5 * 0.3
    assert m["ttft_s/p90"] == pytest.approx(0.47)  # 0.2 + 0.9 * 0.3
    assert m["ttft_s/p99"] == pytest.approx(0.497)
    assert m["tpot_s/p50"] == pytest.approx(0.25)  # 0 + 0.5 * 0.5
    assert m["e2e_s/p50"] == pytest.approx(1.35)  # 0.2 + 0.5 * 2.3
    assert m["e2e_s/p99"] == pytest.approx(0.2 + 0.99 * 2.3)
    assert m["ttft_s/interactive/p50"] == pytest.approx(0.35)
    # No batch requests at all: documented NaN.
    assert math.isnan(m["ttft_s/batch/p50"]) and math.isnan(m["e2e_s/batch/p99"])


def test_single_token_output_has_zero_tpot():
    # finish == first + 0.7 would give TPOT 0.7/0 for output 1; the definition says 0.
    o = build([req(0.0, output=1, first=0.3, finish=1.0, tpot_slo=0.01)])
    m = compute_metrics(o)
    assert m["tpot_s/p50"] == 0.0 and m["tpot_s/p99"] == 0.0
    assert m["ttft_s/p50"] == pytest.approx(0.3) and m["e2e_s/p50"] == pytest.approx(1.0)
    assert m["slo_attainment"] == 1.0  # TPOT 0 <= 0.01, TTFT 0.3 <= 1


def test_ttft_includes_unfinished_with_first_token_per_tier():
    # TTFT counts in-flight requests with a first token; TPOT/E2E only finished ones.
    o = build(
        [
            finished(0.0, ttft=0.4, tpot=0.1),  # interactive, TTFT 0.4
            req(1.0, status=1, first=3.0, tier=1, generated=2),  # batch in flight, TTFT 2.0
            req(2.0, status=1),  # no first token: no TTFT sample
        ]
    )
    m = compute_metrics(o)
    assert m["ttft_s/batch/p50"] == pytest.approx(2.0)
    assert m["ttft_s/interactive/p50"] == pytest.approx(0.4)
    assert m["ttft_s/p50"] == pytest.approx(1.2)  # (0.4 + 2.0) / 2
    assert m["tpot_s/p50"] == pytest.approx(0.1) and math.isnan(m["tpot_s/batch/p50"])


# ---------------------------------------------------------------- SLO


def test_dropped_request_counts_as_missed():
    o = build([finished(0.0, ttft=0.2, tpot=0.1), req(1.0, status=3, drop=5.0)])
    m = compute_metrics(o)
    assert (m["judged"], m["slo_met"], m["slo_missed"]) == (2, 1, 1)
    assert m["slo_attainment"] == 0.5 and m["drop_rate"] == 0.5


def test_unfinished_past_deadline_missed_and_not_yet_due_unjudged():
    # now = 10.  Deadlines (interactive rule, ttft_slo 1, tpot_slo 0.5, 5 tokens): arrival + 3.
    o = build(
        [
            finished(0.0, ttft=0.5, tpot=0.25),  # met
            req(5.0, status=1, first=5.5, generated=2),  # deadline 8 < 10: cannot make it -> missed
            req(8.0, status=1),  # deadline 11 >= 10: not judged
            req(7.0, status=1),  # deadline 10 == now: still not judged (only deadline < now misses)
            req(50.0, status=0),  # not arrived: ignored everywhere
        ],
        now=10.0,
    )
    m = compute_metrics(o)
    assert (m["arrived"], m["in_flight"], m["judged"], m["unjudged"]) == (4, 3, 2, 2)
    assert (m["slo_met"], m["slo_missed"]) == (1, 1)
    assert m["slo_attainment"] == 0.5


def test_batch_uses_deadline_interactive_uses_ttft_tpot():
    o = build(
        [
            # Batch: TTFT of 90 s is irrelevant, only finish <= deadline counts.
            req(0.0, tier=1, deadline=120.0, first=90.0, finish=120.0),  # met, exactly on the deadline (<=)
            req(0.0, tier=1, deadline=120.0, first=10.0, finish=130.0),  # finished late: missed
            # Interactive finishing before its deadline (0+1+0.5*4 = 3) still misses on TTFT 1.5 > 1.
            req(0.0, first=1.5, finish=2.0),
            finished(0.0, ttft=0.9, tpot=0.6),  # TPOT 0.6 > 0.5: missed
            finished(0.0, ttft=1.0, tpot=0.5),  # exactly on both targets: met (<=)
        ],
        now=200.0,
    )
    m = compute_metrics(o)
    assert m["slo_attainment/batch"] == 0.5
    assert m["slo_attainment/interactive"] == pytest.approx(1 / 3)
    assert m["slo_attainment"] == pytest.approx(2 / 5)


def test_per_tenant_attainment():
    # a: 2 met -> 1.0; b: 1 met + 1 dropped -> 0.5; c: only an unjudged request -> NaN.
    o = build(
        [
            finished(0.0, 0.1, 0.1, tenant=0),
            finished(1.0, 0.1, 0.1, tenant=0),
            finished(0.0, 0.1, 0.1, tenant=1),
            req(0.0, tenant=1, status=3, drop=1.0),
            req(99.0, tenant=2, status=1),
        ],
        tenants={"a": 1.0, "b": 1.0, "c": 1.0},
    )
    m = compute_metrics(o)
    assert m["slo_attainment/tenant/a"] == 1.0
    assert m["slo_attainment/tenant/b"] == 0.5
    assert math.isnan(m["slo_attainment/tenant/c"])


# ---------------------------------------------------------------- goodput and cost


def test_goodput_throughput_cost():
    # now 100 s; pools: 2 GPU-h at $2 + 1 GPU-h at $1.5 = $5.5; billed 10800 GPU-s -> 108 GPUs on average.
    o = build(
        [
            finished(0.0, 0.1, 0.1, output=10),  # met, 10 tokens
            finished(0.0, 0.1, 0.1, output=30),  # met, 30 tokens
            finished(0.0, 5.0, 0.1, output=20),  # TTFT miss, 20 tokens
            req(0.0, status=1, output=50, first=1.0, generated=5, ttft_slo=100, tpot_slo=100),
        ],
        pools=[("h100", 2.0, 7200.0), ("a100", 1.5, 3600.0)],
    )
    m = compute_metrics(o)
    assert m["goodput/req_per_s"] == pytest.approx(2 / 100)
    assert m["goodput/tok_per_s"] == pytest.approx(40 / 100)
    assert m["gpus/mean_billed"] == pytest.approx(108.0)
    assert m["goodput/req_per_s_per_gpu"] == pytest.approx(0.02 / 108)
    assert m["goodput/tok_per_s_per_gpu"] == pytest.approx(0.4 / 108)
    assert m["throughput/req_per_s"] == pytest.approx(3 / 100)
    assert m["throughput/tok_per_s"] == pytest.approx(65 / 100)  # 10 + 30 + 20 + 5 generated
    assert m["cost/usd"] == pytest.approx(7200 / 3600 * 2.0 + 3600 / 3600 * 1.5)  # 5.5
    assert m["cost/gpu_hours"] == pytest.approx(3.0)
    assert m["cost/gpu_hours/h100"] == pytest.approx(2.0) and m["cost/gpu_hours/a100"] == pytest.approx(1.0)
    assert m["cost/usd_per_1m_output_tokens"] == pytest.approx(5.5 / 65 * 1e6)
    assert m["generated_tokens"] == 65


def test_utilization_and_counters():
    # busy/up: 50/100 = 0.5, 30/60 = 0.5; the never-up replica is excluded from the mean.
    # KV: (1000 + 600) / (100*100 + 50*60) = 1600 / 13000.
    o = build(
        [req(0.0, status=1, preempt=2, recomputed=40, cached=8), req(0.0, status=1, preempt=1, cached=4)],
        replicas=[(0, 50.0, 100.0, 1000.0, 100), (0, 30.0, 60.0, 600.0, 50), (0, 0.0, 0.0, 0.0, 80)],
        max_service_gap=123.0,
    )
    m = compute_metrics(o)
    assert m["util/busy"] == pytest.approx(0.5)
    assert m["util/kv"] == pytest.approx(1600 / 13000)
    assert (m["preemptions"], m["recomputed_tokens"], m["cached_prompt_tokens"]) == (3, 40, 12)
    assert m["fairness/max_service_gap"] == 123.0


# ---------------------------------------------------------------- fairness


def test_jain_equal_service_is_one_weighted_too():
    # Each finished request: service = prompt 10 + 2 * 5 output = 20.
    two = [finished(0.0, 0.1, 0.1, tenant=0), finished(0.0, 0.1, 0.1, tenant=1)]
    assert compute_metrics(build(two, tenants={"a": 1.0, "b": 1.0}))["fairness/jain"] == pytest.approx(1.0)
    # Weight 2 tenant getting twice the service (40 vs 20): service/weight equal -> 1.
    three = [*two, finished(0.0, 0.1, 0.1, tenant=1)]
    assert compute_metrics(build(three, tenants={"a": 1.0, "b": 2.0}))["fairness/jain"] == pytest.approx(1.0)


def test_jain_two_tenants_unequal():
    # a: 1 request -> service 20; b: 3 requests -> 60.  J = 80^2 / (2 * (20^2 + 60^2)) = 6400/8000 = 0.8.
    rs = [finished(0.0, 0.1, 0.1, tenant=0)] + [finished(0.0, 0.1, 0.1, tenant=1)] * 3
    m = compute_metrics(build(rs, tenants={"a": 1.0, "b": 1.0}))
    assert m["fairness/jain"] == pytest.approx(0.8)
    assert jain_index(np.array([20.0, 60.0])) == pytest.approx(0.8)


def test_jain_counts_only_tenants_with_arrivals_and_prefill_rule():
    # Tenant c never arrived (status 0) -> excluded, so J over {a, b} only.
    # b's in-flight request has no first token yet, so its prompt is not counted (and nothing was
    # generated): b's service is its finished request's 20, equal to a's.
    rs = [
        finished(0.0, 0.1, 0.1, tenant=0),
        finished(0.0, 0.1, 0.1, tenant=1),
        req(99.0, tenant=1, status=1),
        req(200.0, tenant=2, status=0),
    ]
    m = compute_metrics(build(rs, tenants={"a": 1.0, "b": 1.0, "c": 1.0}))
    assert m["fairness/jain"] == pytest.approx(1.0)
    # With a first token the prompt (10) and 3 generated tokens (6) join: b = 36 vs a = 20.
    rs[2] = req(99.0, tenant=1, status=1, first=99.5, generated=3)
    m = compute_metrics(build(rs, tenants={"a": 1.0, "b": 1.0, "c": 1.0}))
    assert m["fairness/jain"] == pytest.approx(56**2 / (2 * (20**2 + 36**2)))


def _waterfill_outcome(service_b: int, service_c: int) -> SimOutcome:
    """Three tenants, demand (prompt + 2*output) a = 10, b = c = 100; total delivered service 100.

    Each of b and c has one finished request delivering the given service (p + 2o with p = o = s/3)
    and one queued request (no first token, service 0) carrying the rest of its 100-token demand.
    """

    def tenant_rows(t: int, s: int) -> list[dict]:
        rest = 100 - s  # queued request: prompt = rest - 2*output
        return [
            finished(0.0, 0.1, 0.1, tenant=t, prompt=s // 3, output=s // 3),
            req(50.0, tenant=t, status=1, prompt=rest - 2 * (rest // 4), output=rest // 4),
        ]

    # a: prompt 4, output 3 -> demand 10, fully served -> service 10.
    rs = [finished(0.0, 0.1, 0.1, tenant=0, prompt=4, output=3)]
    rs += tenant_rows(1, service_b) + tenant_rows(2, service_c)
    return build(rs, tenants={"a": 1.0, "b": 1.0, "c": 1.0})


def test_maxmin_fairness_water_filling():
    # Total service 100.  Water-filling: level 100/3 = 33.3 > a's demand 10 -> a gets 10; remaining 90
    # over b, c -> level 45 < 100 -> f = (10, 45, 45).
    # Fair delivery (10, 45, 45): x = (1, 1, 1) -> jain_maxmin 1, while raw Jain punishes light tenant a:
    # J(10, 45, 45) = 100^2 / (3 * (100 + 2025 + 2025)) = 10000 / 12450.
    m = compute_metrics(_waterfill_outcome(45, 45))
    assert m["fairness/jain_maxmin"] == pytest.approx(1.0)
    assert m["fairness/jain"] == pytest.approx(10000 / 12450)
    # Unfair delivery (10, 60, 30): x = (1, 4/3, 2/3): sum 3, sum sq = 1 + 16/9 + 4/9 = 29/9 -> J = 81/87.
    m = compute_metrics(_waterfill_outcome(60, 30))
    assert m["fairness/jain_maxmin"] == pytest.approx(81 / 87)


def test_max_min_shares_weighted():
    # Weights (2, 1, 1), demands (10, 1000, 1000), capacity 90: level 90/4 = 22.5, a needs 10/2 = 5 per
    # unit weight -> satisfied with 10; remaining 80 over weight 2 -> level 40 -> (10, 40, 40).
    share = max_min_shares(np.array([10.0, 1000.0, 1000.0]), np.array([2.0, 1.0, 1.0]), 90.0)
    np.testing.assert_allclose(share, [10.0, 40.0, 40.0])
    # Capacity covering all demand: everyone gets exactly its demand.
    share = max_min_shares(np.array([3.0, 7.0]), np.array([1.0, 5.0]), 10.0)
    np.testing.assert_allclose(share, [3.0, 7.0])


# ---------------------------------------------------------------- robustness, validation, formatting


def test_empty_outcome_returns_nans():
    o = build([], now=0.0, replicas=[], pools=[])
    m = compute_metrics(o)
    for k in ("ttft_s/p50", "tpot_s/batch/p99", "slo_attainment", "slo_attainment/tenant/t0", "drop_rate",
              "goodput/req_per_s", "throughput/tok_per_s", "cost/usd_per_1m_output_tokens", "util/busy",
              "util/kv"):  # fmt: skip
        assert math.isnan(m[k]), k
    assert (m["arrived"], m["judged"], m["unjudged"], m["generated_tokens"]) == (0, 0, 0, 0)
    assert m["cost/usd"] == 0.0 and m["fairness/jain"] == 1.0 and m["fairness/jain_maxmin"] == 1.0


def test_arrived_but_nothing_served():
    # Two tenants, nothing prefilled yet: all service 0 -> Jain 1 by convention; no latency samples.
    o = build([req(0.0, status=1, tenant=0), req(0.0, status=1, tenant=1)], tenants={"a": 1, "b": 1}, now=0.5)
    m = compute_metrics(o)
    assert math.isnan(m["ttft_s/p50"]) and math.isnan(m["slo_attainment"])
    assert m["unjudged"] == 2 and m["fairness/jain"] == 1.0 and m["fairness/jain_maxmin"] == 1.0


def test_metrics_are_json_serializable_python_scalars():
    m = compute_metrics(build([finished(0.0, 0.1, 0.1)]))
    assert all(type(v) in (int, float) for v in m.values())
    assert json.loads(json.dumps(m))["arrived"] == 1


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("tenant", lambda o: o.tenant.astype(np.int32)),  # wrong dtype
        ("finish_s", lambda o: o.finish_s[:-1]),  # wrong length
        ("status", lambda o: np.full_like(o.status, 7)),  # out of range
        ("replica_kv_capacity", lambda o: o.replica_kv_capacity.astype(np.int32)),
    ],
)
def test_validate_names_bad_field(field, bad):
    import dataclasses

    o = build([finished(0.0, 0.1, 0.1), req(1.0, status=1)])
    o.validate()
    with pytest.raises(ValueError, match=rf"SimOutcome\.{field}:"):
        dataclasses.replace(o, **{field: bad(o)}).validate()


def test_summary_counts():
    o = build([req(status=s) for s in (0, 1, 1, 2, 3, 3, 3)])
    assert o.summary_counts() == {"arrived": 6, "finished": 1, "dropped": 3, "in_flight": 2}


def test_format_metrics_table():
    m = {"arrived": 12, "slo_attainment": 0.123456789, "ttft_s/p50": NAN}
    table = format_metrics_table(m, keys=["slo_attainment", "arrived", "ttft_s/p50", "nope"])
    lines = table.splitlines()
    assert len({len(line) for line in lines}) == 1  # aligned
    assert [line.split("|")[1].strip() for line in lines[2:]] == [
        "slo_attainment",
        "arrived",
        "ttft_s/p50",
        "nope",
    ]
    assert [line.split("|")[2].strip() for line in lines[2:]] == ["0.123457", "12", "nan", "-"]


# ---------------------------------------------------------------- property


@st.composite
def random_outcome(draw) -> SimOutcome:
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(0, 40))
    rng = np.random.default_rng(seed)
    now = float(rng.uniform(0.0, 20.0))
    rows = []
    for _ in range(n):
        status = int(rng.integers(0, 4))
        arrival = float(rng.uniform(0, now)) if status else now + 1.0
        output = int(rng.integers(1, 20))
        has_first = status == 2 or (status in (1, 3) and rng.random() < 0.5)
        first = min(arrival + float(rng.exponential(1.0)), now) if has_first else NAN
        fin = min(first + float(rng.exponential(2.0)), now) if status == 2 else NAN
        tier = int(rng.integers(0, 2))
        rows.append(
            req(arrival, output=output, tenant=int(rng.integers(0, 3)), tier=tier, status=status, first=first,
                finish=fin, drop=now if status == 3 else NAN, generated=output if status == 2 else 0,
                ttft_slo=float(rng.uniform(0.1, 2)), tpot_slo=float(rng.uniform(0.01, 0.5)),
                deadline=float(rng.uniform(0, 2 * now + 1)) if tier else None)
        )  # fmt: skip
    return build(rows, now=now, tenants={"a": 1.0, "b": 2.0, "c": 0.5})


@settings(max_examples=examples(60), deadline=None)
@given(random_outcome())
def test_property_attainment_bounds_and_accounting(o: SimOutcome):
    m = compute_metrics(o)
    assert m["slo_met"] + m["slo_missed"] == m["judged"]
    assert m["judged"] + m["unjudged"] == m["arrived"]
    for k, v in m.items():
        if k.startswith("slo_attainment"):
            assert math.isnan(v) or 0.0 <= v <= 1.0, k
    assert math.isnan(m["slo_attainment"]) == (m["judged"] == 0)
    assert 0.0 < m["fairness/jain"] <= 1.0 + 1e-12 and 0.0 < m["fairness/jain_maxmin"] <= 1.0 + 1e-12


def test_dot_products_are_cpu_independent_and_keep_float_semantics_off_the_finite_range():
    from servegym.envs.metrics import _dot, jain_index

    a = np.array([0.1, 0.2, 0.3, 1e-17])
    b = np.array([3.0, 7.0, 11.0, 1.0])
    expected = 0.0
    for x, y in zip(a.tolist(), b.tolist(), strict=True):  # fused multiply-add, one rounding per step
        expected = float(Fraction(x) * Fraction(y) + Fraction(expected))
    assert _dot(a, b) == expected
    assert _dot(np.array([np.inf]), np.array([2.0])) == np.inf
    assert _dot(np.array([1e300]), np.array([1e300])) == np.inf
    assert np.isnan(jain_index(np.array([np.nan, 1.0])))
