"""Streamed runs (envs/sim/stream.py): the same requests, the same run, the same metrics, in bounded memory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from servegym.envs.cli import main as cli_main
from servegym.envs.metrics import compute_metrics
from servegym.envs.metrics_stream import StreamingMetrics
from servegym.envs.scenario import ScenarioError, load_scenario
from servegym.envs.sim.memory import LIMIT_ENV, check_memory, estimate_memory
from servegym.envs.sim.simulator import Simulator
from servegym.envs.sim.stream import CollectingSink, StreamingSimulator
from servegym.envs.workloads import stream as workload_stream
from servegym.envs.workloads import synthetic, trace_parsing, traces
from servegym.envs.workloads.requests import RequestTable, WorkloadError
from servegym.envs.workloads.scenario_requests import requests_for_scenario
from servegym.envs.workloads.traces import load_azure_trace

LATENCY = ("ttft_s", "tpot_s", "e2e_s")


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and math.isnan(a) and isinstance(b, float) and math.isnan(b))


def _whole_and_streamed_tables(scenario, window_s):
    rng = np.random.default_rng(scenario.seed)
    whole = requests_for_scenario(scenario, rng)
    stream = workload_stream.RequestStream(scenario, np.random.default_rng(scenario.seed), window_s)
    windows = list(stream.windows())
    return whole, stream, windows


@pytest.mark.parametrize("name", ["multi_tenant_tiers", "diurnal_chat"])
def test_request_stream_draws_the_whole_tables_requests(name, monkeypatch):
    # small draw blocks, so that windows cut across blocks and sources run out at different times
    monkeypatch.setattr(synthetic, "_CHUNK", 499)
    monkeypatch.setattr(workload_stream, "_CHUNK", 499)
    sc = load_scenario(name, {"horizon_s": 900})
    whole, stream, windows = _whole_and_streamed_tables(sc, 41.0)
    assert stream.total == len(whole) > 5 * 499
    edges = [w.arrival_s for w in windows if len(w)]
    assert all(a[-1] < b[0] or a[-1] == b[0] for a, b in zip(edges, edges[1:], strict=False))
    joined = RequestTable.concat_sorted(windows)
    for field in ("arrival_s", "prompt_tokens", "output_tokens", "tenant"):
        np.testing.assert_array_equal(getattr(joined, field), getattr(whole, field), err_msg=field)


@pytest.mark.parametrize("name", ["multi_tenant_tiers", "spot_failures"])
def test_streamed_run_is_bit_identical_to_the_whole_run(name):
    sc = load_scenario(name, {"horizon_s": 600})
    whole = Simulator(sc).run()
    # a tiny capacity makes the arrays grow and the retirement run many times
    sim = StreamingSimulator(sc, window_s=37.0, capacity=64)
    streamed = sim.run(CollectingSink())
    assert sim.retired > 0 and sim.grown > 0
    assert sim.audit() == ""
    ref = Simulator(sc)
    ref.run()
    assert sim.counts() == ref.counts()
    assert streamed.n_requests == whole.n_requests
    for field in (
        "status",
        "first_token_s",
        "finish_s",
        "drop_s",
        "generated_tokens",
        "preemptions",
        "evictions",
    ):
        np.testing.assert_array_equal(getattr(streamed, field), getattr(whole, field), err_msg=field)
    np.testing.assert_array_equal(streamed.replica_busy_s, whole.replica_busy_s)
    a, b = compute_metrics(whole), compute_metrics(streamed)
    assert a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


def test_streaming_metrics_fold_to_compute_metrics():
    sc = load_scenario("multi_tenant_tiers", {"horizon_s": 600})
    ref = compute_metrics(Simulator(sc).run())
    exact = StreamingSimulator(sc, window_s=50.0).run(StreamingMetrics(len(sc.tenants)))
    assert exact.keys() == ref.keys()
    assert [k for k in ref if not _same(ref[k], exact[k])] == []
    # past exact_limit samples the percentiles come from the log histogram: within half a bucket
    sketch = StreamingSimulator(sc, window_s=50.0).run(StreamingMetrics(len(sc.tenants), exact_limit=100))
    differ = [k for k in ref if not _same(ref[k], sketch[k])]
    assert differ and all(k.split("/")[0] in LATENCY for k in differ)
    for k in differ:
        assert sketch[k] == pytest.approx(ref[k], rel=6e-4), k


def test_streaming_refuses_what_it_cannot_stream():
    with pytest.raises(ScenarioError, match="agentic_sessions.*cannot run streamed.*sessions"):
        StreamingSimulator("agentic_sessions")
    with pytest.raises(ScenarioError, match="cannot run streamed.*mixed"):
        StreamingSimulator("disagg_splitwise_ha")
    # FairServe applications and admission rules: refused, never run with lost requests or verdicts
    with pytest.raises(ScenarioError, match="cannot run streamed.*applications"):
        StreamingSimulator(load_scenario("fairserve_offpeak", {"streaming": True}))
    with pytest.raises(ScenarioError, match="cannot run streamed.*admission is 'rpm'"):
        StreamingSimulator(load_scenario("chat_azure", {"streaming": True, "policies": {"admission": "rpm"}}))


def test_memory_estimate_refuses_runs_that_do_not_fit(monkeypatch):
    sc = load_scenario("week_global")
    whole, streamed = estimate_memory(sc, False), estimate_memory(sc, True)
    assert whole.requests == pytest.approx(99.8e6, rel=0.01)
    assert whole.total_bytes > 20 * 2**30 and streamed.total_bytes < 2 * 2**30
    monkeypatch.setenv(LIMIT_ENV, "8")
    # refused before a single request is drawn: the message names the scenario, the numbers and the fix
    with pytest.raises(
        ScenarioError, match=r"'week_global'.*26\.\d GiB.*9\.98e\+07 requests.*8 GiB.*StreamingSimulator"
    ):
        Simulator("week_global")
    check_memory(sc, True)  # the streamed run fits in 8 GiB
    with pytest.raises(ScenarioError, match=r"'week_global'.*request rows resident.*streaming window"):
        check_memory(sc, True, available=0.5 * 2**30)


def test_request_budget_points_to_streaming():
    raw_override = {"streaming": False}
    with pytest.raises(ScenarioError, match="set streaming: true"):
        load_scenario("week_global", raw_override)


# ---------------------------------------------------------------- trace windows: rows before them are dropped


def _azure_rows(n: int, bad: dict[int, str] | None = None) -> str:
    rows = []
    for i in range(n):
        rows.append(
            bad.get(i)
            if bad and i in bad
            else f"2023-11-16 18:{i // 60:02d}:{i % 60:02d}.0000000,{100 + i},{1 + i % 7}"
        )
    return "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(r + "\n" for r in rows)


def _mooncake_rows(n: int) -> str:
    recs = [
        {"timestamp": 1000 * i, "input_length": 600, "output_length": 1 + i % 5, "hash_ids": [i, -i]}
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in recs)


@pytest.mark.parametrize("fmt", ["azure", "mooncake"])
def test_trace_window_drops_rows_before_it_and_loads_the_same_table(fmt, tmp_path, monkeypatch):
    monkeypatch.setattr(trace_parsing, "_CHUNK_LINES", 16)
    monkeypatch.setattr(traces, "_MOONCAKE_CHUNK", 16)
    path = tmp_path / f"t.{fmt}"
    path.write_text(_azure_rows(200) if fmt == "azure" else _mooncake_rows(200))
    full = traces.load_trace(fmt, path)
    kept = []
    real_check = trace_parsing._finish

    def spy(*args, **kw):
        kept.append(args[3].shape[0])  # the rows _finish was handed: the window's, not the file's
        return real_check(*args, **kw)

    monkeypatch.setattr(traces, "_finish", spy)
    win = traces.load_trace(fmt, path, window_start_s=100.0, window_s=30.0)
    assert kept[-1] < 200 - 5 * 16  # the chunks before second 100 were dropped while reading
    ref = full.window(100.0, 30.0)
    for field in ("arrival_s", "prompt_tokens", "output_tokens", "prefix_offsets", "prefix_hashes"):
        np.testing.assert_array_equal(getattr(win, field), getattr(ref, field), err_msg=field)
    with pytest.raises(WorkloadError, match="past the end of the trace: its 200 requests"):
        traces.load_trace(fmt, path, window_start_s=500.0)


def test_trace_rows_before_the_window_are_still_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(trace_parsing, "_CHUNK_LINES", 16)
    path = tmp_path / "az.csv"
    path.write_text(_azure_rows(200, {20: "2023-11-16 18:00:20.0000000,0,3"}))
    with pytest.raises(WorkloadError, match=">= 1") as ei:
        load_azure_trace(path, window_start_s=100.0)
    assert (ei.value.row, ei.value.field) == (22, "ContextTokens")  # header is line 1, row 20 is line 22
    # a duplicated 100 ns timestamp among the dropped rows is still a duplicated row
    path.write_text(_azure_rows(200, {21: "2023-11-16 18:00:20.0000000,5,3"}))
    with pytest.raises(WorkloadError, match="duplicated") as ei:
        load_azure_trace(path, window_start_s=100.0)
    assert ei.value.row == 23


def test_cli_streams_a_streaming_scenario(tmp_path, capsys):
    out_json = tmp_path / "m.json"
    assert (
        cli_main(
            [
                "simulate",
                "--scenario",
                "week_global",
                "--set",
                "horizon_s=20",
                "--quiet",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    m = json.loads(out_json.read_text())
    printed = capsys.readouterr().out
    assert f"{m['arrived']:,} requests simulated" in printed and m["arrived"] > 1000


@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_streamed_context_limits_count_as_in_the_whole_run(policy):
    # Llama-2-7B's 4k context cuts the summarization tenant's long prompts: counted per window, summed
    pool = {"name": "a", "gpu": "h100-80gb", "model": "llama-2-7b", "max_replicas": 4, "initial_replicas": 3}
    sc = load_scenario("multi_tenant_tiers", {"horizon_s": 300, "context_policy": policy, "pools": [pool]})
    a = compute_metrics(Simulator(sc).run())
    b = compute_metrics(StreamingSimulator(sc, window_s=20.0).run())
    assert a["context/truncated"] + a["context/dropped"] > 100
    assert [k for k in a if not _same(a[k], b[k])] == []


def test_memory_estimate_counts_the_applications_calls():
    """A FairServe scenario's requests come from its applications, not its sources: the estimate counts
    their expected calls, within a factor of the calls a run actually draws."""
    from servegym.envs.sim.memory import expected_requests

    sc = load_scenario("fairserve_abuse", {"horizon_s": 120})
    drawn = len(requests_for_scenario(sc, np.random.default_rng(0)).arrival_s)
    assert 0.5 * drawn < expected_requests(sc) < 2.0 * drawn
