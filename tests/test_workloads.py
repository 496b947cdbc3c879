"""Request table, synthetic generators and trace loaders: invariants, statistics, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from servegym.envs.scenario import ScenarioError, scenario_from_dict
from servegym.envs.sim.simulator import Simulator
from servegym.envs.workloads.requests import RequestTable, WorkloadError
from servegym.envs.workloads.synthetic import (
    ArrivalSpec,
    DiurnalSpec,
    LengthSpec,
    available_length_tables,
    generate_arrivals,
    generate_tenant_requests,
    generate_workload,
    load_length_table,
    sample_lengths,
)
from servegym.envs.workloads.traces import (
    load_azure_trace,
    load_burstgpt_trace,
    load_generic_csv,
    load_mooncake_trace,
    load_trace,
)
from tests.conftest import tiny_dict

REPO = Path(__file__).resolve().parents[1]
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx = np.argsort(np.argsort(x, kind="stable"), kind="stable")
    ry = np.argsort(np.argsort(y, kind="stable"), kind="stable")
    return float(np.corrcoef(rx, ry)[0, 1])


def _real(rel: str) -> Path:
    d = os.environ.get("SERVEGYM_DATA_DIR")
    if not d:
        pytest.skip("SERVEGYM_DATA_DIR is not set (CI sets ../shared/data)")
    p = Path(d) / rel
    if not p.is_file():
        pytest.skip(f"{p} is missing (python -m servegym.envs.data fetch ...)")
    return p


def _table(arrival, prompt=None, output=None, tenant=0, offsets=None, hashes=None) -> RequestTable:
    n = len(arrival)
    return RequestTable.from_arrays(
        np.asarray(arrival, dtype=float),
        np.full(n, 10) if prompt is None else prompt,
        np.full(n, 5) if output is None else output,
        tenant,
        offsets,
        hashes,
    )


# ---------------------------------------------------------------- RequestTable


def test_table_dtypes_and_validate():
    t = _table([0.0, 1.0, 1.0, 2.5])
    t.validate("unit")
    assert len(t) == 4
    assert (t.arrival_s.dtype, t.prompt_tokens.dtype, t.tenant.dtype) == (np.float64, np.int32, np.int16)
    assert t.prefix_offsets.tolist() == [0] * 5 and t.prefix_hashes.shape == (0,)


@pytest.mark.parametrize(
    "kwargs, field, row",
    [
        ({"arrival": [0.0, 2.0, 1.0]}, "arrival_s", 3),
        ({"arrival": [0.0, 1.0, 2.0], "prompt": np.array([1, 0, 1])}, "prompt_tokens", 2),
        ({"arrival": [0.0, 1.0, 2.0], "output": np.array([1, 1, -3])}, "output_tokens", 3),
        ({"arrival": [-1.0, 1.0, 2.0]}, "arrival_s", 1),
    ],
)
def test_validate_names_source_row_field(kwargs, field, row):
    t = _table(**kwargs)
    with pytest.raises(WorkloadError) as ei:
        t.validate("my-source")
    assert (ei.value.file, ei.value.row, ei.value.field) == ("my-source", row, field)
    assert "my-source" in str(ei.value) and f"row {row}" in str(ei.value)


def test_validate_rejects_bad_dtype_and_offsets():
    t = _table([0.0, 1.0])
    bad = RequestTable(
        t.arrival_s.astype(np.float32), *[getattr(t, f) for f in list(t.__dataclass_fields__)[1:]]
    )
    with pytest.raises(WorkloadError, match="dtype"):
        bad.validate("x")
    t2 = _table([0.0, 1.0], offsets=np.array([0, 1, 3]), hashes=np.array([7, 8]))
    with pytest.raises(WorkloadError, match="last offset"):
        t2.validate("x")


def test_concat_sorted_is_stable_and_carries_prefixes():
    a = _table([0.0, 2.0], tenant=0, offsets=np.array([0, 2, 3]), hashes=np.array([1, 2, 3]))
    b = _table([1.0, 2.0, 5.0], tenant=1, offsets=np.array([0, 1, 1, 3]), hashes=np.array([10, 11, 12]))
    m = RequestTable.concat_sorted([a, b])
    m.validate("merged")
    assert m.arrival_s.tolist() == [0.0, 1.0, 2.0, 2.0, 5.0]
    assert m.tenant.tolist() == [0, 1, 0, 1, 1]  # tie at 2.0: first table first
    blocks = [m.prefix_hashes[m.prefix_offsets[i] : m.prefix_offsets[i + 1]].tolist() for i in range(len(m))]
    assert blocks == [[1, 2], [10], [3], [], [11, 12]]


def test_concat_without_prefix_info_and_empty():
    m = RequestTable.concat_sorted([_table([1.0]), _table([0.5])])
    assert m.arrival_s.tolist() == [0.5, 1.0] and m.prefix_offsets.tolist() == [0, 0, 0]
    assert len(RequestTable.concat_sorted([])) == 0


def test_window_rebases_and_slices_prefixes():
    t = _table([0.0, 1.0, 2.0, 3.0], offsets=np.array([0, 1, 2, 4, 5]), hashes=np.array([5, 6, 7, 8, 9]))
    w = t.window(1.0, 2.0)
    w.validate("w")
    assert w.arrival_s.tolist() == [0.0, 1.0]
    assert w.prefix_offsets.tolist() == [0, 1, 3] and w.prefix_hashes.tolist() == [6, 7, 8]
    assert t.window(2.5, None).arrival_s.tolist() == [0.5]
    assert len(t.window(10.0, 1.0)) == 0
    w.arrival_s[0] = 99.0  # a copy: the parent is untouched
    assert t.arrival_s[1] == 1.0


def test_time_scaled():
    t = _table([0.0, 2.0, 4.0])
    assert t.time_scaled(2.0).arrival_s.tolist() == [0.0, 1.0, 2.0]
    assert t.time_scaled(0.5).arrival_s.tolist() == [0.0, 4.0, 8.0]
    with pytest.raises(ValueError):
        t.time_scaled(0.0)


# ---------------------------------------------------------------- synthetic: determinism and specs

LOGN = LengthSpec("lognormal", prompt_mean=1000, prompt_cv=1.0, output_mean=200, output_cv=1.5)
EMP = LengthSpec("empirical", table="azure_conv_2023")


@pytest.mark.parametrize(
    "arrival",
    [
        ArrivalSpec("poisson", 20.0),
        ArrivalSpec("gamma", 20.0, cv=2.5),
        ArrivalSpec("gamma", 20.0, cv=0.5, diurnal=DiurnalSpec(100.0, 3.0, None)),
    ],
)
@pytest.mark.parametrize("lengths", [LOGN, EMP])
def test_generation_is_deterministic(arrival, lengths):
    a = generate_tenant_requests(np.random.default_rng(7), 2, 500.0, arrival, lengths)
    b = generate_tenant_requests(np.random.default_rng(7), 2, 500.0, arrival, lengths)
    c = generate_tenant_requests(np.random.default_rng(8), 2, 500.0, arrival, lengths)
    a.validate("gen")
    for f in a.__dataclass_fields__:
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert not np.array_equal(a.arrival_s[:50], c.arrival_s[:50])
    assert (a.tenant == 2).all() and a.arrival_s.max() < 500.0


def test_gamma_cv1_is_the_poisson_path():
    a = generate_arrivals(np.random.default_rng(3), ArrivalSpec("poisson", 5.0), 100.0)
    b = generate_arrivals(np.random.default_rng(3), ArrivalSpec("gamma", 5.0, cv=1.0), 100.0)
    assert np.array_equal(a, b)


def test_length_spec_does_not_move_arrivals():
    a = generate_tenant_requests(np.random.default_rng(1), 0, 100.0, ArrivalSpec("poisson", 3.0), LOGN)
    b = generate_tenant_requests(np.random.default_rng(1), 0, 100.0, ArrivalSpec("poisson", 3.0), EMP)
    assert np.array_equal(a.arrival_s, b.arrival_s)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ArrivalSpec("uniform", 1.0),
        lambda: ArrivalSpec("poisson", -1.0),
        lambda: ArrivalSpec("gamma", 1.0, cv=0.0),
        lambda: DiurnalSpec(0.0, 2.0),
        lambda: DiurnalSpec(10.0, 0.5),
        lambda: LengthSpec("lognormal", prompt_mean=10, output_mean=5, output_cv=1),
        lambda: LengthSpec(
            "lognormal", prompt_mean=10, prompt_cv=1, prompt_sigma=1, output_mean=5, output_cv=1
        ),
        lambda: LengthSpec("empirical", table="no_such_table"),
        lambda: LengthSpec("empirical", table="sharegpt", prompt_min=10, prompt_max=5),
        lambda: LengthSpec("zipf"),
    ],
)
def test_bad_specs_raise(make):
    with pytest.raises(ValueError):
        make()


def test_workload_tenants_are_independent_streams():
    t0 = (ArrivalSpec("poisson", 4.0), LOGN)
    a = generate_workload(np.random.default_rng(5), [t0, (ArrivalSpec("poisson", 1.0), EMP)], 200.0)
    b = generate_workload(np.random.default_rng(5), [t0, (ArrivalSpec("gamma", 9.0, cv=3.0), LOGN)], 200.0)
    a.validate("a")
    assert set(a.tenant.tolist()) == {0, 1}
    assert np.array_equal(a.arrival_s[a.tenant == 0], b.arrival_s[b.tenant == 0])
    assert np.array_equal(a.prompt_tokens[a.tenant == 0], b.prompt_tokens[b.tenant == 0])


# ---------------------------------------------------------------- synthetic: statistics (fixed seeds)


def test_poisson_rate_and_gap_cv():
    rate, horizon = 50.0, 2000.0
    t = generate_arrivals(np.random.default_rng(11), ArrivalSpec("poisson", rate), horizon)
    sd = np.sqrt(rate * horizon)
    assert abs(len(t) - rate * horizon) < 4 * sd
    gaps = np.diff(t)
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.02


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_gamma_cv_close_to_requested(cv):
    t = generate_arrivals(np.random.default_rng(12), ArrivalSpec("gamma", 100.0, cv=cv), 2000.0)
    gaps = np.diff(t)
    assert abs(gaps.std() / gaps.mean() - cv) < 0.05 * cv
    assert abs(len(t) / 2000.0 - 100.0) < 100.0 * 0.03


@pytest.mark.parametrize("process, cv", [("poisson", 1.0), ("gamma", 2.0)])
def test_diurnal_peak_to_trough_visible(process, cv):
    period, ratio, peak, rate = 1000.0, 4.0, 250.0, 50.0
    spec = ArrivalSpec(process, rate, cv=cv, diurnal=DiurnalSpec(period, ratio, peak))
    t = generate_arrivals(np.random.default_rng(13), spec, 10 * period)
    assert np.all(np.diff(t) >= 0) and t.max() < 10 * period
    assert abs(len(t) / (10 * period) - rate) < 0.03 * rate  # rate_per_s is the mean over whole periods
    phase = np.mod(t - peak, period) / period  # 0 at the peak, 0.5 at the trough
    near_peak = np.count_nonzero((phase < 0.05) | (phase > 0.95))
    near_trough = np.count_nonzero(np.abs(phase - 0.5) < 0.05)
    a = (ratio - 1) / (ratio + 1)
    avg = np.sin(0.1 * np.pi) / (0.1 * np.pi)  # mean of cos over +-0.1 pi
    expected = (1 + a * avg) / (1 - a * avg)
    assert abs(near_peak / near_trough - expected) < 0.08 * expected


def test_diurnal_is_an_exact_time_change_of_the_base_process():
    # Same seed, fixed peak (no extra draw): L(t_i) must reproduce the base arrivals u_i on [0, L(T)).
    period, ratio, peak, horizon = 300.0, 5.0, 40.0, 1000.0
    a, w = (ratio - 1) / (ratio + 1), 2 * np.pi / period
    L = lambda t: t + (a / w) * (np.sin(w * (t - peak)) + np.sin(w * peak))  # noqa: E731
    t = generate_arrivals(
        np.random.default_rng(15),
        ArrivalSpec("gamma", 20.0, cv=2.0, diurnal=DiurnalSpec(period, ratio, peak)),
        horizon,
    )
    u = generate_arrivals(np.random.default_rng(15), ArrivalSpec("gamma", 20.0, cv=2.0), float(L(horizon)))
    assert len(t) == len(u)
    assert np.max(np.abs(L(t) - u)) < 1e-9


def test_diurnal_gamma_keeps_burstiness_in_operational_time():
    # Time-rescaling preserves the base CV; thinning would pull it towards 1.
    spec = ArrivalSpec("gamma", 100.0, cv=3.0, diurnal=DiurnalSpec(500.0, 2.0, 0.0))
    t = generate_arrivals(np.random.default_rng(14), spec, 5000.0)
    a, w = 1.0 / 3.0, 2 * np.pi / 500.0
    u = t + (a / w) * (np.sin(w * t) + 0.0)  # L(t) with peak at 0
    g = np.diff(u)
    assert abs(g.std() / g.mean() - 3.0) < 0.15


def test_lognormal_mean_and_cv():
    p, o = sample_lengths(np.random.default_rng(21), LOGN, 200_000)
    assert p.dtype == np.int32 and p.min() >= 1
    assert abs(p.mean() - 1000) < 0.02 * 1000
    assert abs(o.mean() - 200) < 0.03 * 200
    assert abs(p.std() / p.mean() - 1.0) < 0.05


def test_lognormal_clipping():
    spec = LengthSpec(
        "lognormal",
        prompt_mean=1000,
        prompt_sigma=2.0,
        output_mean=50,
        output_cv=0.1,
        prompt_max=4096,
        output_min=40,
    )
    p, o = sample_lengths(np.random.default_rng(22), spec, 50_000)
    assert p.max() == 4096 and p.min() >= 1 and o.min() >= 40


@pytest.mark.parametrize("name", ["azure_conv_2023", "sharegpt", "arxiv_summarization"])
def test_empirical_means_match_source(name):
    tab = load_length_table(name)
    p, o = sample_lengths(np.random.default_rng(23), LengthSpec("empirical", table=name), 200_000)
    assert abs(p.mean() - tab.meta["prompt_mean"]) < 0.02 * tab.meta["prompt_mean"]
    assert abs(o.mean() - tab.meta["output_mean"]) < 0.03 * tab.meta["output_mean"]


def test_empirical_joint_keeps_rank_dependence():
    tab = load_length_table("arxiv_summarization")
    p, o = sample_lengths(
        np.random.default_rng(24), LengthSpec("empirical", table="arxiv_summarization"), 200_000
    )
    assert abs(_spearman(p, o) - tab.meta["spearman_binned"]) < 0.03
    pi, oi = sample_lengths(
        np.random.default_rng(24), LengthSpec("empirical", table="arxiv_summarization", joint=False), 200_000
    )
    assert abs(_spearman(pi, oi)) < 0.01


def test_shipped_tables_cite_their_sources():
    doc = json.loads((REPO / "envs" / "workloads" / "length_tables.json").read_text())
    levels = np.asarray(doc["levels"])
    assert levels[0] == 0.0 and levels[-1] == 1.0 and np.all(np.diff(levels) > 0)
    assert {"azure_conv_2023", "sharegpt", "arxiv_summarization"} <= set(available_length_tables())
    for name, t in doc["tables"].items():
        for key in ("source_file", "upstream", "licence", "rows", "source_sha256"):
            assert t[key], (name, key)
        for side in ("prompt", "output"):
            q = np.asarray(t[side]["quantiles"])
            assert q.shape == levels.shape and np.all(np.diff(q) >= 0) and q[0] >= 1
            assert abs(t[side]["table_mean"] - t[side]["mean"]) < 0.01 * t[side]["mean"]
        assert sum(map(sum, t["copula"]["counts"])) == t["rows"]
    assert doc["tables"]["azure_conv_2023"]["rows"] == 19366


def test_length_tables_regenerate_from_raw_files():
    if not os.environ.get("SERVEGYM_DATA_DIR"):
        pytest.skip("SERVEGYM_DATA_DIR is not set (CI sets ../shared/data)")
    _real("azure_llm_2023/AzureLLMInferenceTrace_conv.csv")
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "derive_length_tables.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if r.returncode and "data file not found" in r.stderr:
        pytest.skip(r.stderr.strip().splitlines()[-1])
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- Azure loader


def _azure(tmp_path, rows: list[str]) -> Path:
    return _write(tmp_path, "az.csv", AZURE_HEADER + "".join(r + "\n" for r in rows))


def test_azure_2023_format(tmp_path):
    p = _azure(tmp_path, ["2023-11-16 18:15:46.6805900,374,44", "2023-11-16 18:15:50.9951690,396,109"])
    t = load_azure_trace(p, tenant_index=3)
    assert t.arrival_s.tolist() == pytest.approx([0.0, 4.314579])
    assert t.prompt_tokens.tolist() == [374, 396] and t.output_tokens.tolist() == [44, 109]
    assert t.tenant.tolist() == [3, 3]


def test_azure_2024_format_with_offsets_and_missing_fraction(tmp_path):
    rows = [
        "2024-05-10 00:00:00.009930+00:00,10,2",
        "2024-05-10 00:00:01+00:00,11,3",
        "2024-05-10 01:00:01.5+01:00,12,4",  # = 00:00:01.5 UTC
        "2024-05-10 00:00:01.500000+00:00,13,5",  # tie at 1 us resolution: legal
    ]
    t = load_azure_trace(_azure(tmp_path, rows))
    assert t.arrival_s.tolist() == pytest.approx([0.0, 0.99007, 1.49007, 1.49007])
    with pytest.raises(WorkloadError, match="equal to the previous"):
        load_azure_trace(_azure(tmp_path, rows), allow_ties=False)


@pytest.mark.parametrize(
    "rows, line, field, match",
    [
        (
            ["2023-11-16 18:15:46.6805900,374,44", "2023-11-16 18:15:47.0000000,3x6,1"],
            3,
            "ContextTokens",
            "3x6",
        ),
        (
            ["2023-11-16 18:15:46.6805900,374,44", "2023-11-16 18:15:47.0000000,0,1"],
            3,
            "ContextTokens",
            ">= 1",
        ),
        (["2023-11-16 18:15:46.6805900,-5,44"], 2, "ContextTokens", ">= 1"),
        (["2023-11-16 18:15:46.6805900,5,0"], 2, "GeneratedTokens", ">= 1"),
        (["2023-11-16 18:15:46.6805900,5,"], 2, "GeneratedTokens", "valid int"),
        (["2023-11-16 18:15:46.6805900,5"], 2, "GeneratedTokens", "missing"),
        (["2023-11-16 18:15:46.6805900,5,1", "yesterday,5,1"], 3, "TIMESTAMP", "yesterday"),
        (["2023-11-16 18:15:46.6805900,5,1", "2023-11-16 25:00:00.0000000,5,1"], 3, "TIMESTAMP", "valid"),
        (["2023-11-16 18:15:46.6805900,5,1", "2023-11-16 18:15:45.0000000,5,1"], 3, "TIMESTAMP", "unsorted"),
        (
            ["2023-11-16 18:15:46.6805900,5,1", "2023-11-16 18:15:46.6805900,6,2"],
            3,
            "TIMESTAMP",
            "duplicated",
        ),
        (["2023-11-16 18:15:46.6805900,5,1", "", "2023-11-16 18:15:46.6805900,6,2"], 4, "TIMESTAMP", "equal"),
    ],
)
def test_azure_bad_input(tmp_path, rows, line, field, match):
    with pytest.raises(WorkloadError, match=match) as ei:
        load_azure_trace(_azure(tmp_path, rows))
    e = ei.value
    assert (e.row, e.field) == (line, field)
    assert e.file == str(tmp_path / "az.csv")
    assert str(tmp_path / "az.csv") in str(e) and f"line {line}" in str(e) and field in str(e)


def test_azure_missing_column_and_empty(tmp_path):
    p = _write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.6805900,5\n")
    with pytest.raises(WorkloadError, match="missing column 'GeneratedTokens'") as ei:
        load_azure_trace(p)
    assert (ei.value.row, ei.value.field) == (1, "GeneratedTokens")
    with pytest.raises(WorkloadError, match="empty file"):
        load_azure_trace(_write(tmp_path, "e.csv", ""))
    with pytest.raises(WorkloadError, match="no data rows"):
        load_azure_trace(_write(tmp_path, "h.csv", AZURE_HEADER + "\n"))


def test_loader_kwargs_window_limit_scale(tmp_path):
    rows = "".join(f"{i * 0.5},{10 + i},{1 + i}\n" for i in range(40))  # arrivals 0, 0.5, ..., 19.5
    p = _write(tmp_path, "g.csv", "arrival_s,prompt_tokens,output_tokens\n" + rows)
    t = load_generic_csv(p, window_start_s=5.0, window_s=5.0, time_scale=2.0)
    assert t.arrival_s.tolist() == pytest.approx([i * 0.25 for i in range(10)])
    assert t.prompt_tokens.tolist() == list(range(20, 30))
    assert len(load_generic_csv(p, window_start_s=5.0, max_requests=3)) == 3
    with pytest.raises(ValueError):
        load_generic_csv(p, time_scale=-1.0)


def test_window_past_the_end_of_the_trace_is_refused(tmp_path, monkeypatch):
    rows = "".join(f"{i * 0.5},{10 + i},{1 + i}\n" for i in range(40))  # arrivals 0 .. 19.5 s
    p = _write(tmp_path, "g.csv", "arrival_s,prompt_tokens,output_tokens\n" + rows)
    assert len(load_generic_csv(p, window_start_s=19.5)) == 1  # the last arrival starts a window
    with pytest.raises(WorkloadError) as e:
        load_generic_csv(p, window_start_s=20.0, window_s=5.0)
    msg = str(e.value)
    assert msg.startswith(str(p)) and "window_start_s 20 s is past the end of the trace" in msg
    assert "40 requests arrive from 0 s to 19.5 s" in msg
    # the same through a scenario: a ScenarioError naming the source, not an empty episode with nan attainment
    monkeypatch.setenv("SERVEGYM_DATA_DIR", str(tmp_path))
    sc = tiny_dict(sources=[{"kind": "trace", "format": "generic", "file": "g.csv", "tenant": "chat"}])
    sc["sources"][0]["window_start_s"] = 100.0
    with pytest.raises(ScenarioError, match=r"sources.0: .*g.csv.*window_start_s 100 s is past the end"):
        Simulator(scenario_from_dict(sc), seed=0)


# ---------------------------------------------------------------- generic CSV


def test_generic_csv_full_format(tmp_path):
    text = (
        "prompt_tokens,arrival_s,extra,output_tokens,tenant,prefix_hashes\n"
        '1024,0.0,x,5,chat,"1 2"\n'
        "600,0.0,y,7,batch,\n"
        "1500,1.25,z,9,chat,1 2 3\n"
    )
    t = load_generic_csv(_write(tmp_path, "g.csv", text), tenant_names={"chat": 0, "batch": 4})
    t.validate("g")
    assert t.arrival_s.tolist() == [0.0, 0.0, 1.25]
    assert t.tenant.tolist() == [0, 4, 0]
    assert t.prefix_offsets.tolist() == [0, 2, 2, 5] and t.prefix_hashes.tolist() == [1, 2, 1, 2, 3]


def test_generic_csv_int_tenant_and_no_optional_columns(tmp_path):
    t = load_generic_csv(
        _write(tmp_path, "g.csv", "arrival_s,prompt_tokens,output_tokens,tenant\n0.5,3,4,2\n")
    )
    assert t.tenant.tolist() == [2] and t.arrival_s.tolist() == [0.5]
    u = load_generic_csv(
        _write(tmp_path, "h.csv", "arrival_s,prompt_tokens,output_tokens\n0,3,4\n"), tenant_index=7
    )
    assert u.tenant.tolist() == [7]


@pytest.mark.parametrize(
    "body, kwargs, line, field, match",
    [
        ("0,1,1\n1,1,1\n1,2,2\n", {"allow_ties": False}, 4, "arrival_s", "allow_ties=False"),
        ("0,1,1\nnan,1,1\n", {}, 3, "arrival_s", "not finite"),
        ("0,1,1\n-1,1,1\n", {}, 3, "arrival_s", "unsorted"),
        ("-1,1,1\n", {}, 2, "arrival_s", "negative"),
        ("0,1,1\n1,abc,1\n", {}, 3, "prompt_tokens", "abc"),
        ("0,1,1\n1,2.5,1\n", {}, 3, "prompt_tokens", "2.5"),
        ("0,1,1\n1,3000000000,1\n", {}, 3, "prompt_tokens", "int32"),
        ("0,1,1,1 x\n", {"_hash": True}, 2, "prefix_hashes", "valid hashes"),
    ],
)
def test_generic_csv_bad_input(tmp_path, body, kwargs, line, field, match):
    header = "arrival_s,prompt_tokens,output_tokens" + (
        ",prefix_hashes" if kwargs.pop("_hash", False) else ""
    )
    with pytest.raises(WorkloadError, match=match) as ei:
        load_generic_csv(_write(tmp_path, "g.csv", header + "\n" + body), **kwargs)
    assert (ei.value.row, ei.value.field) == (line, field)


def test_generic_ties_legal_by_default(tmp_path):
    t = load_generic_csv(_write(tmp_path, "g.csv", "arrival_s,prompt_tokens,output_tokens\n1,1,1\n1,1,1\n"))
    assert len(t) == 2


def test_unknown_tenant_name(tmp_path):
    p = _write(tmp_path, "g.csv", "arrival_s,prompt_tokens,output_tokens,tenant\n0,1,1,chat\n1,1,1,ghost\n")
    with pytest.raises(WorkloadError, match="unknown tenant name 'ghost'") as ei:
        load_generic_csv(p, tenant_names={"chat": 0})
    assert (ei.value.row, ei.value.field) == (3, "tenant")


# ---------------------------------------------------------------- Mooncake


def _mc(tmp_path, recs: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in recs]
    return _write(tmp_path, "m.jsonl", "\n".join(lines) + "\n")


def _rec(ts, n_in, n_out, hashes=None):
    return {
        "timestamp": ts,
        "input_length": n_in,
        "output_length": n_out,
        "hash_ids": hashes if hashes is not None else list(range(-(-n_in // 512))),
    }


def test_mooncake_parses_prefixes(tmp_path):
    t = load_mooncake_trace(
        _mc(tmp_path, [_rec(0, 1000, 5, [1, 2]), _rec(0, 512, 3, [1]), _rec(40, 1, 1, [9])])
    )
    assert t.arrival_s.tolist() == [0.0, 0.0, 0.04]  # ms ties are legal
    assert t.prefix_offsets.tolist() == [0, 2, 3, 4] and t.prefix_hashes.tolist() == [1, 2, 1, 9]


@pytest.mark.parametrize(
    "recs, line, field, match",
    [
        (
            [_rec(0, 10, 1), {"timestamp": 5, "input_length": 10, "hash_ids": [0]}],
            2,
            "output_length",
            "missing",
        ),
        ([_rec(0, 10, 1), "{not json"], 2, None, "invalid JSON"),
        ([_rec(0, 10, 1), _rec(5, 10, 0)], 2, "output_length", ">= 1"),
        ([_rec(0, 10, 1), _rec(5, "10", 1, [0])], 2, "input_length", "integer"),
        ([_rec(10, 10, 1), _rec(5, 10, 1)], 2, "timestamp", "unsorted"),
        ([_rec(0, 1025, 1, [1, 2])], 1, "hash_ids", "ceil"),
    ],
)
def test_mooncake_bad_input(tmp_path, recs, line, field, match):
    with pytest.raises(WorkloadError, match=match) as ei:
        load_mooncake_trace(_mc(tmp_path, recs))
    assert (ei.value.row, ei.value.field) == (line, field)


def test_mooncake_empty(tmp_path):
    with pytest.raises(WorkloadError, match="empty"):
        load_mooncake_trace(_write(tmp_path, "m.jsonl", "\n"))


# ---------------------------------------------------------------- BurstGPT


def test_burstgpt_drops_failed_and_maps_models(tmp_path):
    text = BURST_HEADER + (
        "5,ChatGPT,472,18,490,Conversation log\n"
        "5,GPT-4,0,0,0,Conversation log\n"  # failed: dropped
        "7,GPT-4,1000,250,1250,API log\n"
    )
    p = _write(tmp_path, "b.csv", text)
    t = load_burstgpt_trace(p, tenant_names={"ChatGPT": 0, "GPT-4": 1})
    assert t.arrival_s.tolist() == [5.0, 7.0] and t.tenant.tolist() == [0, 1]
    assert t.prompt_tokens.tolist() == [472, 1000] and t.output_tokens.tolist() == [18, 250]
    by_log = load_burstgpt_trace(
        p, tenant_column="Log Type", tenant_names={"Conversation log": 0, "API log": 1}
    )
    assert by_log.tenant.tolist() == [0, 1]
    with pytest.raises(WorkloadError, match="failed request") as ei:
        load_burstgpt_trace(p, failed="error")
    assert (ei.value.row, ei.value.field) == (3, "Response tokens")


def test_burstgpt_bad_input(tmp_path):
    p = _write(tmp_path, "b.csv", BURST_HEADER + "5,ChatGPT,0,18,18,API log\n")
    with pytest.raises(WorkloadError, match=">= 1") as ei:
        load_burstgpt_trace(p)
    assert (ei.value.row, ei.value.field) == (2, "Request tokens")
    q = _write(tmp_path, "c.csv", BURST_HEADER + "5,ChatGPT,3,18,21,API log\n6,Llama,3,1,4,API log\n")
    with pytest.raises(WorkloadError, match="unknown tenant name 'Llama'") as ei:
        load_burstgpt_trace(q, tenant_names={"ChatGPT": 0})
    assert (ei.value.row, ei.value.field) == (3, "Model")


def test_load_trace_dispatch(tmp_path):
    p = _write(tmp_path, "g.csv", "arrival_s,prompt_tokens,output_tokens\n0,3,4\n")
    assert len(load_trace("generic", p)) == 1
    with pytest.raises(ValueError, match="unknown trace format"):
        load_trace("parquet", p)
    with pytest.raises(ValueError, match="no tenant column"):
        load_trace("azure", p, tenant_names={"a": 0})


# ---------------------------------------------------------------- real traces (CI: SERVEGYM_DATA_DIR=../shared/data)


def test_real_azure_conv_2023():
    t = load_azure_trace(_real("azure_llm_2023/AzureLLMInferenceTrace_conv.csv"))
    assert len(t) == 19366
    assert abs(t.prompt_tokens.mean() - 1155) < 1 and abs(t.output_tokens.mean() - 211) < 1
    assert 3400 < t.arrival_s[-1] < 3600  # one hour, 18:15-19:14
    assert 5.0 < len(t) / t.arrival_s[-1] < 6.0  # ~5.5 req/s (data README)


def test_real_azure_window_and_time_scale():
    path = _real("azure_llm_2023/AzureLLMInferenceTrace_conv.csv")
    full = load_azure_trace(path)
    w = load_azure_trace(path, window_start_s=600.0, window_s=60.0, time_scale=2.0)
    inside = (full.arrival_s >= 600.0) & (full.arrival_s < 660.0)
    assert len(w) == int(inside.sum()) > 0
    assert np.allclose(w.arrival_s, (full.arrival_s[inside] - 600.0) / 2.0)
    assert w.arrival_s.max() < 30.0
    assert np.array_equal(w.prompt_tokens, full.prompt_tokens[inside])


def test_real_mooncake_synthetic():
    t = load_mooncake_trace(_real("mooncake/synthetic_trace.jsonl"))
    assert len(t) == 3993
    assert np.array_equal(np.diff(t.prefix_offsets), -(-t.prompt_tokens.astype(np.int64) // 512))
    assert abs(t.prompt_tokens.mean() - 15325) < 1 and abs(t.output_tokens.mean() - 149) < 1
    # The README reports 64% of blocks reused: most hashes occur more than once.
    _, counts = np.unique(t.prefix_hashes, return_counts=True)
    assert counts.sum() - len(counts) > 0.5 * counts.sum()
