"""Scenario configs: every shipped scenario runs, and every kind of bad input names the file and key."""

from __future__ import annotations

import pytest
import yaml

from servegym.envs.cli import main as cli_main
from servegym.envs.cli import parse_overrides
from servegym.envs.metrics import compute_metrics
from servegym.envs.scenario import ScenarioError, list_scenarios, load_scenario, scenario_from_dict
from servegym.envs.sim.simulator import Simulator
from tests.conftest import tiny_dict

NEEDS_DATA = {"azure_conv_trace"}


@pytest.mark.parametrize("name", list_scenarios())
def test_every_shipped_scenario_runs(name, request):
    if name in NEEDS_DATA:
        request.getfixturevalue("data_dir")
    sim = Simulator(name, overrides={"horizon_s": 60})
    m = compute_metrics(sim.run())
    assert sim.audit() == ""
    assert m["arrived"] > 0
    assert m["finished"] > 0
    assert m["cost/usd"] > 0


def test_trace_scenario_replays_the_azure_trace(data_dir):
    sim = Simulator("azure_conv_trace", overrides={"horizon_s": 120})
    # the first two minutes of AzureLLMInferenceTrace_conv.csv (5.5 req/s on average)
    assert 300 < len(sim.requests) < 1000
    assert sim.requests.arrival_s[0] == 0.0


def _error(raw: dict) -> str:
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(raw, source="my.yaml")
    return str(e.value)


def test_unknown_key_names_its_path():
    raw = tiny_dict()
    raw["pools"][0]["gpus"] = 2
    msg = _error(raw)
    assert "my.yaml" in msg and "pools.0.gpus" in msg


def test_bad_value_names_its_path():
    raw = tiny_dict()
    raw["pools"][0]["tp"] = 0
    assert "pools.0.tp" in _error(raw)
    raw = tiny_dict()
    raw["sources"][0]["arrival"]["rate_per_s"] = -1
    assert "sources.0.synthetic.arrival.rate_per_s" in _error(raw)


def test_unknown_tenant_in_a_source():
    raw = tiny_dict()
    raw["sources"][0]["tenant"] = "nobody"
    msg = _error(raw)
    assert "sources.0.tenant" in msg and "nobody" in msg and "chat" in msg


def test_interactive_tenant_needs_its_slos():
    raw = tiny_dict()
    del raw["tenants"][0]["tpot_slo_s"]
    assert "tenants.0" in _error(raw) and "tpot_slo_s" in _error(raw)


def test_replica_bounds_and_token_budget():
    raw = tiny_dict()
    raw["pools"][0]["initial_replicas"] = 9
    assert "initial_replicas" in _error(raw)
    raw = tiny_dict()
    raw["pools"][0]["max_batched_tokens"] = 64
    raw["pools"][0]["max_num_seqs"] = 128
    assert "max_batched_tokens" in _error(raw)


def test_unknown_gpu_is_named_when_building():
    raw = tiny_dict()
    raw["pools"][0]["gpu"] = "b200"
    sc = scenario_from_dict(raw)
    with pytest.raises(ScenarioError) as e:
        Simulator(sc)
    assert "pools.0" in str(e.value) and "b200" in str(e.value)


def test_unsupported_tensor_parallelism_is_named():
    raw = tiny_dict()
    raw["pools"][0]["model"] = "llama-2-70b"
    raw["pools"][0]["tp"] = 1  # 70B weights do not fit one 80 GB GPU
    with pytest.raises(ScenarioError) as e:
        Simulator(scenario_from_dict(raw))
    assert "pools.0" in str(e.value)


def test_unknown_scenario_and_bad_yaml(tmp_path):
    with pytest.raises(ScenarioError) as e:
        load_scenario("no_such_scenario")
    assert "chat_azure" in str(e.value)  # lists the known ones
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError) as e:
        load_scenario(bad)
    assert str(bad) in str(e.value)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ScenarioError, match="mapping"):
        load_scenario(bad)


def test_trace_errors_name_file_line_and_field(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVEGYM_DATA_DIR", str(tmp_path))
    (tmp_path / "t.csv").write_text(
        "arrival_s,prompt_tokens,output_tokens,tenant\n0.5,100,10,chat\n1.0,-5,10,chat\n"
    )
    raw = tiny_dict(sources=[{"kind": "trace", "format": "generic", "file": "t.csv"}])
    with pytest.raises(ScenarioError) as e:
        Simulator(scenario_from_dict(raw))
    msg = str(e.value)
    assert "t.csv" in msg and "line 3" in msg and "prompt_tokens" in msg
    (tmp_path / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens,tenant\n0.5,100,10,mallory\n")
    with pytest.raises(ScenarioError) as e:
        Simulator(scenario_from_dict(raw))
    assert "mallory" in str(e.value) and "line 2" in str(e.value)


def test_missing_trace_file_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVEGYM_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        Simulator("azure_conv_trace")
    assert "SERVEGYM_DATA_DIR" in str(e.value) and "fetch" in str(e.value)


def test_overrides_parse_and_apply():
    assert parse_overrides(["horizon_s=30", "policies.batching=edf"]) == {
        "horizon_s": 30,
        "policies": {"batching": "edf"},
    }
    sc = load_scenario("chat_azure", parse_overrides(["policies.routing=jsq"]))
    assert sc.policies.routing == "jsq"
    with pytest.raises(ScenarioError, match="KEY=VALUE"):
        parse_overrides(["horizon_s"])


def test_indexed_overrides_merge_into_lists():
    sc = load_scenario(
        "chat_azure", parse_overrides(["sources.0.arrival.rate_per_s=2", "pools.0.max_replicas=5"])
    )
    base = load_scenario("chat_azure")
    assert sc.sources[0].arrival.rate_per_s == 2
    assert sc.sources[0].lengths == base.sources[0].lengths  # the rest of the entry is kept
    assert sc.pools[0].max_replicas == 5 and sc.pools[0].gpu == base.pools[0].gpu
    # the mapping form an API caller writes: int or str indices
    assert (
        load_scenario("chat_azure", {"sources": {0: {"arrival": {"rate_per_s": 3}}}})
        .sources[0]
        .arrival.rate_per_s
        == 3
    )
    # a list still replaces the list whole
    sc = load_scenario("chat_azure", {"pools": [base.pools[0].model_dump() | {"name": "only"}]})
    assert [p.name for p in sc.pools] == ["only"]


@pytest.mark.parametrize("item", ["sources.1.arrival.rate_per_s=2", "sources.x.arrival.rate_per_s=2"])
def test_indexed_override_out_of_range_names_the_override(item):
    with pytest.raises(ScenarioError) as e:
        load_scenario("chat_azure", parse_overrides([item]))
    msg = str(e.value)
    assert msg.startswith(f"override {item.split('.arrival')[0]}:"), msg
    assert "list of 1 entry" in msg and "0..0" in msg


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("policies.batching=foo", "override policies.batching=foo: Input should be 'fcfs'"),
        ("policies.reactive_down=0.9", "override policies.reactive_down=0.9:"),
        ("sources.0.arrival.rate_per_s=-1", "override sources.0.arrival.rate_per_s=-1:"),
        # a key the override breaks elsewhere: named with the overrides that broke it
        (
            "tenants.0.name=bob",
            "unknown tenant 'chat'; known: ['bob'] (after the overrides tenants.0.name=bob)",
        ),
    ],
)
def test_override_errors_are_reported_against_the_override(item, says):
    with pytest.raises(ScenarioError) as e:
        load_scenario("chat_azure", parse_overrides([item]))
    msg = str(e.value)
    assert "chat_azure.yaml with overrides: invalid scenario" in msg
    assert says in msg, msg


def test_a_bad_file_is_still_reported_against_the_file(tmp_path):
    bad = tiny_dict(horizon_s=-5)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ScenarioError) as e:
        load_scenario(path, {"policies": {"routing": "jsq"}})
    assert str(e.value).startswith(f"{path}: invalid scenario") and "horizon_s" in str(e.value)


def test_cli_reports_a_set_error_against_the_override(capsys):
    assert cli_main(["simulate", "--set", "policies.batching=foo", "--quiet"]) == 2
    assert "override policies.batching=foo:" in capsys.readouterr().err


def test_cli_prints_the_metrics_table(capsys, tmp_path):
    out_json = tmp_path / "m.json"
    assert cli_main(["simulate", "--set", "horizon_s=30", "--quiet", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "slo_attainment" in text and "cost/usd" in text
    assert out_json.exists()
    assert cli_main(["simulate", "--set", "pools=3", "--quiet"]) == 2
    assert "invalid scenario" in capsys.readouterr().err
