"""Scenario keys and trace files under bad input (issue 14, items 9-12): bounded work and memory, strict types,
finite values, trace paths kept in the data directory, and trace loaders that name the file and line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from servegym.envs.data import DataPathError, resolve_data_path
from servegym.envs.scenario import ScenarioError, scenario_from_dict
from servegym.envs.workloads.requests import WorkloadError
from servegym.envs.workloads.scenario_requests import requests_for_scenario
from servegym.envs.workloads.traces import load_azure_trace, load_generic_csv, load_mooncake_trace
from tests.conftest import deep_update, tiny_dict

POOL = tiny_dict()["pools"][0]
TENANT = tiny_dict()["tenants"][0]
SOURCE = tiny_dict()["sources"][0]
SESSIONS = {
    "kind": "sessions",
    "tenant": "chat",
    "arrival": {"rate_per_s": 0.5},
    "steps": {"mean": 4, "max": 16},
    "first_prompt": {"mean": 500},
    "step_input": {"mean": 100},
    "output": {"mean": 100},
    "pause": {"mean_s": 2.0},
}


def bad(overrides: dict, *needles: str) -> str:
    with pytest.raises(ScenarioError) as ei:
        scenario_from_dict(deep_update(tiny_dict(), overrides), source="tests/bad.yaml")
    msg = str(ei.value)
    assert "tests/bad.yaml" in msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# ---------------------------------------------------------------- item 9: unbounded work or memory


def test_gamma_cv_is_bounded():
    bad(
        {"sources": [{**SOURCE, "arrival": {"process": "gamma", "rate_per_s": 4.0, "cv": 1e6}}]},
        "arrival.cv",
        "30",
    )
    scenario_from_dict(
        deep_update(
            tiny_dict(),
            {"sources": [{**SOURCE, "arrival": {"process": "gamma", "rate_per_s": 4.0, "cv": 30}}]},
        )
    )


def test_prefix_cache_tables_are_bounded_with_an_estimate():
    msg = bad(
        {"pools": [{**POOL, "prefix_cache": True, "prefix_cache_blocks": 10**9}]},
        "pools.0.prefix_cache_blocks",
        "GiB",
    )
    assert "44.7 GiB" in msg  # 1e9 blocks x 3 replicas x 16 bytes


def test_control_ticks_are_bounded_with_an_estimate():
    bad({"control_interval_s": 1e-6}, "control_interval_s", "6e+07 control ticks")


@pytest.mark.parametrize(
    "sources, key",
    [
        ([{**SOURCE, "arrival": {"process": "poisson", "rate_per_s": 1e12}}], "sources.0.arrival.rate_per_s"),
        (
            [{**SESSIONS, "arrival": {"rate_per_s": 1e6}, "steps": {"mean": 1000}}],
            "sources.0.arrival.rate_per_s",
        ),
    ],
)
def test_expected_requests_are_bounded_with_an_estimate(sources, key):
    bad({"sources": sources}, key, "expected requests", "GiB")


# ---------------------------------------------------------------- item 10: strict types, finite values


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"horizon_s": True}, "horizon_s"),
        ({"pools": [{**POOL, "max_replicas": True}]}, "max_replicas"),
        ({"queue_capacity": False}, "queue_capacity"),
        ({"region_latency_ms": {"default": {"far": True}}}, "region_latency_ms"),
        ({"sources": [{**SOURCE, "arrival": {"rate_per_s": True}}]}, "rate_per_s"),
    ],
)
def test_a_bool_is_not_a_number(overrides, key):
    bad(overrides, key, "not a number")


def test_bools_where_a_bool_is_meant_still_pass():
    scenario_from_dict(
        deep_update(tiny_dict(), {"pools": [{**POOL, "prefix_cache": True, "chunked_prefill": False}]})
    )


INF = float("inf")


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"pools": [{**POOL, "price_per_gpu_hour": INF}]}, "pools.0.price_per_gpu_hour"),
        ({"region_latency_ms": {"default": {"far": INF}}}, "region_latency_ms.default.far"),
        ({"tenants": [{**TENANT, "weight": INF}]}, "tenants.0.weight"),
        ({"sources": [{**SESSIONS, "pause": {"mean_s": INF}}]}, "pause.mean_s"),
        ({"sources": [{**SESSIONS, "steps": {"mean": INF}}]}, "steps.mean"),
        ({"max_wait_s": float("nan")}, "max_wait_s"),
    ],
)
def test_infinite_values_are_rejected_by_key(overrides, key):
    bad(overrides, key, "finite")


def test_an_asymmetric_latency_pair_is_rejected():
    bad({"region_latency_ms": {"a": {"b": 10.0}, "b": {"a": 20.0}}}, "a->b is 10.0 ms", "b->a is 20.0 ms")
    sc = scenario_from_dict(
        deep_update(tiny_dict(), {"region_latency_ms": {"a": {"b": 10.0}, "b": {"a": 10.0}}})
    )
    assert sc.region_latency_ms["b"]["a"] == 10.0


def test_a_negative_seed_names_the_key():
    bad({"seed": -1}, "seed", "greater than or equal to 0")


# ---------------------------------------------------------------- item 11: trace paths


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("SERVEGYM_DATA_DIR", str(root))
    monkeypatch.delenv("SERVEGYM_TRACE_ROOTS", raising=False)
    (root / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0.5,10,5\n")
    (tmp_path / "secret.txt").write_text("root:x:0:0:the-secret-first-line\n")
    return root


def trace_scenario(file: str):
    src = {"kind": "trace", "format": "generic", "file": file, "tenant": "chat"}
    return scenario_from_dict(deep_update(tiny_dict(), {"sources": [src]}))


@pytest.mark.parametrize("escape", ["../secret.txt", "{tmp}/secret.txt", "sub/../../secret.txt"])
def test_trace_paths_stay_in_the_data_directory(data_root, escape):
    file = escape.format(tmp=data_root.parent)
    with pytest.raises(ScenarioError, match="outside the data directory") as ei:
        requests_for_scenario(trace_scenario(file), np.random.default_rng(0))
    assert "the-secret-first-line" not in str(ei.value) and "SERVEGYM_TRACE_ROOTS" in str(ei.value)
    assert len(requests_for_scenario(trace_scenario("t.csv"), np.random.default_rng(0))) == 1


def test_a_symlink_out_of_the_data_directory_is_refused(data_root):
    (data_root / "link.csv").symlink_to(data_root.parent / "secret.txt")
    with pytest.raises(DataPathError):
        resolve_data_path("link.csv")


def test_another_root_may_be_allowed_explicitly(data_root, monkeypatch):
    other = data_root.parent / "other"
    other.mkdir()
    (other / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0.5,10,5\n1.0,10,5\n")
    monkeypatch.setenv("SERVEGYM_TRACE_ROOTS", f"/nonexistent{os.pathsep}{other}")
    assert len(requests_for_scenario(trace_scenario(str(other / "t.csv")), np.random.default_rng(0))) == 2
    with pytest.raises(ScenarioError, match="outside"):
        requests_for_scenario(trace_scenario("../secret.txt"), np.random.default_rng(0))


def test_a_non_trace_file_is_never_quoted(data_root):
    (data_root / "notes.csv").write_text("root:x:0:0:the-secret-first-line\nmore secret\n")
    with pytest.raises(ScenarioError, match="missing column 'arrival_s'") as ei:
        requests_for_scenario(trace_scenario("notes.csv"), np.random.default_rng(0))
    assert "secret" not in str(ei.value).replace(str(data_root), "")


# ---------------------------------------------------------------- item 12: trace loaders


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


AZURE_HEAD = b"TIMESTAMP,ContextTokens,GeneratedTokens\n"
AZURE_ROW = b"2023-11-16 18:15:46.6805900,5,1\n"


@pytest.mark.parametrize(
    "loader, name, data, line",
    [
        (load_azure_trace, "body.csv", AZURE_HEAD + AZURE_ROW + b"2023-11-16 18:15:47.1,\xff\xfe,1\n", 3),
        (load_azure_trace, "head.csv", b"TIME\xffSTAMP,ContextTokens,GeneratedTokens\n" + AZURE_ROW, 1),
        (load_generic_csv, "g.csv", b"arrival_s,prompt_tokens,output_tokens\n0.5,10,5\n1.0,1\xc3,5\n", 3),
        (
            load_mooncake_trace,
            "m.jsonl",
            b'{"timestamp": 1, "input_length": 1, "output_length": 1, "hash_ids": [1]}\n\xff\n',
            2,
        ),
    ],
)
def test_non_utf8_bytes_name_the_file_and_line(tmp_path, loader, name, data, line):
    path = write(tmp_path, name, data)
    with pytest.raises(WorkloadError, match="not UTF-8") as ei:
        loader(path)
    assert ei.value.file == str(path) and ei.value.row == line


@pytest.mark.parametrize("ts", ["1" + "0" * 400, "1e400", "Infinity", "-1e19"])
def test_a_huge_mooncake_timestamp_names_the_field(tmp_path, ts):
    rec = '{"timestamp": ' + ts + ', "input_length": 1, "output_length": 1, "hash_ids": [1]}\n'
    with pytest.raises(WorkloadError, match="out of range") as ei:
        load_mooncake_trace(write(tmp_path, "m.jsonl", rec.encode()))
    assert ei.value.field == "timestamp" and ei.value.row == 1


def test_a_huge_mooncake_length_names_the_field(tmp_path):
    rec = {"timestamp": 1, "input_length": 1, "output_length": 10**30, "hash_ids": [1]}
    with pytest.raises(WorkloadError, match="int64") as ei:
        load_mooncake_trace(write(tmp_path, "m.jsonl", json.dumps(rec).encode()))
    assert ei.value.field == "output_length"


@pytest.mark.parametrize(
    "loader, head, row",
    [
        (load_azure_trace, AZURE_HEAD, b"2023-11-16 18:15:47.1000000,5,1,7,8\n"),
        (load_generic_csv, b"arrival_s,prompt_tokens,output_tokens\n", b"1.0,5,1,7,8\n"),
        (load_generic_csv, b"arrival_s,prompt_tokens,output_tokens,tenant\n", b"1.0,5,1\n"),
    ],
)
def test_a_row_with_another_field_count_than_the_header_is_rejected(tmp_path, loader, head, row):
    first = (
        AZURE_ROW
        if loader is load_azure_trace
        else b"0.5,5,1" + (b",0" if b"tenant" in head else b"") + b"\n"
    )
    with pytest.raises(WorkloadError, match=r"row has \d fields") as ei:
        loader(write(tmp_path, "r.csv", head + first + row))
    assert ei.value.row == 3


def test_quoted_commas_still_count_as_one_field(tmp_path):
    data = b'arrival_s,prompt_tokens,output_tokens,note\n0.5,5,1,"a, b"\n'
    assert len(load_generic_csv(write(tmp_path, "q.csv", data))) == 1


def test_a_duplicated_column_is_rejected(tmp_path):
    data = b"arrival_s,prompt_tokens,output_tokens,prompt_tokens\n0.5,5,1,9\n"
    with pytest.raises(WorkloadError, match="'prompt_tokens' appears 2 times") as ei:
        load_generic_csv(write(tmp_path, "d.csv", data))
    assert ei.value.row == 1 and ei.value.field == "prompt_tokens"
