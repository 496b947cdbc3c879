"""Evaluation harness: reproducible records, the aggregate's statistics, output files, CLI and plots."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from servegym.baselines.harness import (
    EpisodeSpec,
    aggregate,
    evaluate,
    evaluate_many,
    markdown_table,
    mean_ci,
    scenario_overrides,
    t_quantile,
    versions,
    write_results,
)
from servegym.baselines.policy import PolicyError
from servegym.envs.metrics import compute_metrics
from servegym.envs.sim.simulator import Simulator

SMALL = {"horizon_s": 120.0}


def test_records_identical_for_identical_seeds_in_and_across_processes():
    a = evaluate("edf+jsq", "chat_azure", [3, 4], overrides=SMALL, workers=1)
    b = evaluate("edf+jsq", "chat_azure", [3, 4], overrides=SMALL, workers=2)
    # compared as JSON: NaN metrics (no batch tier here) are equal there, not under ==
    assert dumps(a.records) == dumps(b.records)
    assert dumps(a.records) == dumps(
        evaluate("edf+jsq", "chat_azure", [3, 4], overrides=SMALL, workers=1).records
    )
    assert a.records[0]["seed"] == 3 and a.records[1]["seed"] == 4
    assert dumps(a.records[0]) != dumps({**a.records[1], "seed": 3})  # different seeds, different episodes
    assert dumps(a.aggregate) == dumps(b.aggregate)


def dumps(x: object) -> str:
    return json.dumps(x, sort_keys=True)


def test_record_is_the_foundation_metrics_plus_provenance():
    res = evaluate("vtc+lor", "multi_tenant_tiers", 1, overrides=SMALL, workers=1)
    rec = res.records[0]
    over = {"horizon_s": 120.0, "policies": {"batching": "vtc", "routing": "lor"}}
    direct = compute_metrics(Simulator("multi_tenant_tiers", seed=0, overrides=over).run())
    assert {k: rec[k] for k in direct} == direct
    assert (rec["policy"], rec["scenario"], rec["seed"]) == ("vtc+lor", "multi_tenant_tiers", 0)
    for key, val in versions().items():
        assert rec[key] == val
    assert rec["numba_version"] and rec["numpy_version"]


def test_builtin_policies_merge_into_scenario_overrides():
    spec = EpisodeSpec("edf+reactive", "chat_azure", 0, {"horizon_s": 60, "policies": {"routing": "jsq"}})
    assert scenario_overrides(spec) == {
        "horizon_s": 60,
        "policies": {"routing": "jsq", "batching": "edf", "scaling": "reactive"},
    }
    with pytest.raises(NotImplementedError, match="env-driven episode runner"):
        scenario_overrides(EpisodeSpec("runs/agent.zip", "chat_azure", 0))
    with pytest.raises(PolicyError, match="unknown policy"):
        evaluate("nosuch", "chat_azure", 1)


def test_custom_episode_runner_is_used():
    res = evaluate("anything", "chat_azure", [5, 6], episode_runner=_fake_runner, workers=1)
    assert [r["slo_attainment"] for r in res.records] == [0.5, 0.6]
    assert res.aggregate["slo_attainment"]["mean"] == pytest.approx(0.55)


def _fake_runner(spec: EpisodeSpec) -> dict:
    return {"slo_attainment": spec.seed / 10.0, "cost/usd": 1.0}


def test_t_quantiles_match_tables():
    # Student t 97.5% quantiles (any statistics table)
    for df, q in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452), (120, 1.9799)]:
        assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)


def test_aggregate_mean_and_ci():
    recs = [
        {"policy": "x", "seed": i, "m": v, "n": float("nan") if i else 1.0}
        for i, v in enumerate([1.0, 2.0, 6.0])
    ]
    agg = aggregate(recs)
    assert set(agg) == {"m", "n"}  # metadata is not aggregated
    m = agg["m"]
    assert m["mean"] == 3.0 and m["n"] == 3
    std = math.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 2)
    assert m["std"] == pytest.approx(std)
    assert m["ci95"] == pytest.approx(4.3027 * std / math.sqrt(3), rel=1e-4)
    assert (m["lo"], m["hi"]) == pytest.approx((3 - m["ci95"], 3 + m["ci95"]))
    assert agg["n"]["n"] == 1 and math.isnan(agg["n"]["ci95"])  # NaN episodes left out; one value: no CI
    assert math.isnan(mean_ci([])["mean"])


def test_write_results_and_markdown(tmp_path):
    results = evaluate_many(["fcfs+lor", "sjf+jsq"], ["chat_azure"], 2, overrides=SMALL, workers=1)
    paths = write_results(results, tmp_path)
    with paths["records_csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[0]["policy"] == "fcfs+lor" and "slo_attainment" in rows[0]
    recs = json.loads(paths["records_json"].read_text())
    assert recs[2]["policy"] == "sjf+jsq" and recs[2]["seed"] == 0
    agg = json.loads(paths["aggregate_json"].read_text())
    assert agg[1]["metrics"]["slo_attainment"]["n"] == 2
    table = markdown_table(results, ["slo_attainment", "cost/usd"])
    lines = table.splitlines()
    assert lines[0].startswith("| policy") and len(lines) == 4
    assert "sjf+jsq" in lines[3] and "±" in lines[3]


def test_evaluate_cli_and_plots(tmp_path, capsys):
    from scripts.evaluate import main

    assert main(["--list"]) == 0
    assert "cost_aware" in capsys.readouterr().out
    out = tmp_path / "res"
    plots = tmp_path / "plots"
    rc = main(
        [
            "--policy",
            "fcfs+lor",
            "--policy",
            "edf+jsq",
            "--scenario",
            "chat_azure",
            "--seeds",
            "2",
            "--set",
            "horizon_s=60",
            "--workers",
            "1",
            "--quiet",
            "--out",
            str(out),
            "--plots",
            str(plots),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "| edf+jsq" in text and (out / "aggregate.csv").exists()
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert len(pngs) == 3 and pngs[0].startswith("latency_cdf")
    assert all((plots / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert main(["--policy", "nosuch", "--scenario", "chat_azure", "--quiet"]) == 2


def test_timeline_samples_the_episode():
    from servegym.baselines.plots import timeline

    series, outcome = timeline("diurnal_chat", 0, "forecast", {"horizon_s": 600}, n_slices=20)
    assert len(series["t_s"]) == 20 and series["t_s"][-1] == 600
    # arrivals per slice add up to the episode's arrivals
    assert np.sum(series["arrivals_per_s"] * 30.0) == pytest.approx(outcome.summary_counts()["arrived"])
    assert np.all((series["active_replicas"] >= 1) & (series["active_replicas"] <= series["up_replicas"]))
    assert np.nanmax(series["kv_util"]) <= 1.0
    m = compute_metrics(outcome)
    assert series["slo_attainment_cum"][-1] == pytest.approx(m["slo_met"] / (m["finished"] + m["dropped"]))


def _trace_scenario(tmp_path, monkeypatch) -> str:
    """A tiny scenario replaying a generic CSV whose 4 windows of 20 s differ in load (window k: 5 + 5k
    requests), in a temporary data directory."""
    import yaml

    from tests.conftest import tiny_dict

    monkeypatch.setenv("SERVEGYM_DATA_DIR", str(tmp_path))
    rows = [(20.0 * k + 20.0 * j / (5 + 5 * k), 200, 20) for k in range(4) for j in range(5 + 5 * k)]
    (tmp_path / "t.csv").write_text(
        "arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{a:.6f},{p},{o}\n" for a, p, o in rows)
    )
    sc = tiny_dict(horizon_s=20.0, control_interval_s=10.0)
    sc["sources"] = [{"kind": "trace", "format": "generic", "file": "t.csv", "tenant": "chat"}]
    path = tmp_path / "trace_sc.yaml"
    path.write_text(yaml.safe_dump(sc))
    return str(path)


def test_seeds_replay_different_windows_of_a_trace(tmp_path, monkeypatch):
    from servegym.envs.scenario import load_scenario, with_window

    path = _trace_scenario(tmp_path, monkeypatch)
    res = evaluate("jsq", path, [0, 1, 2, 3, 6], workers=1)
    # the trace's last arrival is at ~79 s: 3 whole 20 s windows from 0 (a 4th would end past it)
    starts = [r["window_start_s"] for r in res.records]
    assert starts == [0.0, 20.0, 40.0, 0.0, 0.0]  # seed s -> window s mod 3
    assert [r["arrived"] for r in res.records] == [5, 10, 15, 5, 5]
    for rec in res.records:  # each record is the episode of its window, as the Simulator runs it
        sc = with_window(load_scenario(path, {"policies": {"routing": "jsq"}}), rec["window_start_s"])
        direct = compute_metrics(Simulator(sc, seed=rec["seed"]).run())
        assert dumps({k: rec[k] for k in direct}) == dumps(direct)
    assert "window_start_s" not in res.aggregate  # provenance, not a metric
    # opting out replays the scenario's own window for every seed
    same = evaluate_many(["jsq"], [path], [0, 1], workers=1, trace_windows=False)[0]
    assert [r["arrived"] for r in same.records] == [5, 5]
    assert "window_start_s" not in same.records[0]


def test_env_runner_replays_the_same_trace_windows(tmp_path, monkeypatch):
    from servegym.baselines.env_runner import env_episode_runner

    path = _trace_scenario(tmp_path, monkeypatch)
    core = evaluate("jsq", path, [1, 2], workers=1, timing="v1")
    env = evaluate(
        "jsq",
        path,
        [1, 2],
        workers=1,
        timing="v1",
        episode_runner=env_episode_runner,
        policy_kwargs={"env_id": "servegym/Route-v1"},
    )
    assert [r["window_start_s"] for r in env.records] == [20.0, 40.0]
    assert [r["arrived"] for r in env.records] == [r["arrived"] for r in core.records] == [10, 15]
