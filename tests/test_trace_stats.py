"""``servegym trace-stats``: statistics of small fixture traces in every format, and of the shared traces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from servegym.envs.cli import main as cli_main
from servegym.envs.cli import summary_line
from servegym.envs.perf.specs import MODELS
from servegym.envs.scenario import list_scenarios, load_scenario
from servegym.envs.workloads.requests import WorkloadError
from servegym.envs.workloads.trace_stats import detect_format, load_for_stats, trace_stats

# arrivals 0, 1, 3, 6 s: gaps 1, 2, 3 (mean 2, population std sqrt(2/3))
ARRIVALS = [0.0, 1.0, 3.0, 6.0]
PROMPTS = [100, 5000, 300, 9000]
OUTPUTS = [10, 20, 30, 40]
GAP_CV = float(np.sqrt(2 / 3) / 2)


def _azure(tmp_path):
    rows = "".join(
        f"2023-11-16 18:15:{46 + a:09.7f},{p},{o}\n"
        for a, p, o in zip(ARRIVALS, PROMPTS, OUTPUTS, strict=True)
    )
    path = tmp_path / "azure.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows)
    return path


def _burstgpt(tmp_path):
    rows = "".join(
        f"{a},ChatGPT,{p},{o},{p + o},Conversation log\n"
        for a, p, o in zip(ARRIVALS, PROMPTS, OUTPUTS, strict=True)
    )
    rows += "7.0,ChatGPT,0,0,0,Conversation log\n"  # a failed request: dropped, as a scenario drops it
    path = tmp_path / "burst.csv"
    path.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n" + rows)
    return path


def _generic(tmp_path):
    rows = "".join(
        f"{a},{p},{o},{t}\n" for a, p, o, t in zip(ARRIVALS, PROMPTS, OUTPUTS, "abab", strict=True)
    )
    path = tmp_path / "generic.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens,tenant\n" + rows)
    return path


def _mooncake(tmp_path):
    # prompts of 1, 2, 1 and 3 blocks of 512 tokens; blocks 7 and 8 are reused
    recs = [
        {"timestamp": 0, "input_length": 512, "output_length": 10, "hash_ids": [7]},
        {"timestamp": 1000, "input_length": 1000, "output_length": 20, "hash_ids": [7, 8]},
        {"timestamp": 3000, "input_length": 300, "output_length": 30, "hash_ids": [9]},
        {"timestamp": 6000, "input_length": 1500, "output_length": 40, "hash_ids": [7, 8, 10]},
    ]
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.mark.parametrize(("make", "fmt"), [(_azure, "azure"), (_burstgpt, "burstgpt"), (_generic, "generic")])
def test_csv_formats_are_detected_and_summarized(tmp_path, make, fmt):
    path = make(tmp_path)
    assert detect_format(path) == fmt
    table, got = load_for_stats(path)
    s = trace_stats(table, {"small": 4096, "large": 8192})
    assert got == fmt and s["rows"] == 4
    assert s["span_s"] == pytest.approx(6.0) and s["rate_per_s"] == pytest.approx(3 / 6)
    assert s["interarrival_cv"] == pytest.approx(GAP_CV)
    assert s["prompt_tokens"]["p50"] == pytest.approx(np.percentile(PROMPTS, 50))
    assert s["prompt_tokens"]["max"] == 9000 and s["output_tokens"]["mean"] == pytest.approx(25)
    assert s["prefix"] is None
    assert s["context"]["small"]["prompt_over_share"] == pytest.approx(0.5)  # 5000 and 9000 > 4096
    assert s["context"]["large"]["prompt_over_share"] == pytest.approx(0.25)
    assert s["context"]["large"]["request_over_share"] == pytest.approx(0.25)
    assert s["tenants"] == (2 if fmt == "generic" else 1)


def test_mooncake_prefix_block_reuse(tmp_path):
    path = _mooncake(tmp_path)
    assert detect_format(path) == "mooncake"
    table, _ = load_for_stats(path)
    s = trace_stats(table)
    assert s["rows"] == 4 and s["interarrival_cv"] == pytest.approx(GAP_CV)
    pre = s["prefix"]
    assert (pre["blocks"], pre["distinct_blocks"]) == (7, 4)  # 7 7 8 9 7 8 10
    assert pre["reused_block_share"] == pytest.approx(3 / 7)
    # requests 1 and 3 start with block 7, which request 0 already had
    assert (pre["requests_with_blocks"], pre["requests_sharing_first_block"]) == (4, 2)
    # a request whose prompt + output crosses the limit while its prompt does not
    s = trace_stats(table, {"m": 1530})
    assert s["context"]["m"]["prompt_over_share"] == 0
    assert s["context"]["m"]["request_over_share"] == pytest.approx(0.25)


def test_cli_prints_every_model_and_writes_json(tmp_path, capsys):
    path = _mooncake(tmp_path)
    out = tmp_path / "s.json"
    assert cli_main(["trace-stats", str(path), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "rows              4" in text and "3 repeat" not in text and "42.9% repeat an earlier block" in text
    )
    for name in MODELS:
        assert name in text
    saved = json.loads(out.read_text())
    assert saved["context"]["llama-2-7b"]["max_context"] == MODELS["llama-2-7b"].max_context


def test_cli_refuses_an_unknown_format_and_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n")
    assert cli_main(["trace-stats", str(bad)]) == 2
    assert "cannot tell the trace format" in capsys.readouterr().err
    assert cli_main(["trace-stats", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    broken = tmp_path / "g.csv"
    broken.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,5\n1,-3,5\n")
    assert cli_main(["trace-stats", str(broken), "--format", "generic"]) == 2
    assert "line 3" in capsys.readouterr().err
    with pytest.raises(WorkloadError):
        detect_format(bad)


def test_shared_traces(data_dir, capsys):
    azure = data_dir / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
    if not azure.is_file():
        pytest.skip("the Azure 2023 conversation trace is not in the data directory")
    s = trace_stats(load_for_stats(azure)[0], {"llama-2-7b": 4096})
    # the figures the chat_azure scenario quotes for this file
    assert s["rows"] == 19366
    assert s["rate_per_s"] == pytest.approx(5.53, abs=0.005)
    assert s["interarrival_cv"] == pytest.approx(1.09, abs=0.005)
    assert s["prompt_tokens"]["mean"] == pytest.approx(1155, abs=1)
    mooncake = next(iter(sorted((data_dir / "mooncake").glob("*.jsonl"))), None)
    if mooncake is not None:
        assert cli_main(["trace-stats", str(mooncake)]) == 0
        assert "repeat an earlier block" in capsys.readouterr().out


def test_scenarios_lists_each_with_its_one_line_description(capsys):
    assert cli_main(["scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(list_scenarios())
    for name, line in zip(list_scenarios(), lines, strict=True):
        desc = load_scenario(name).description
        assert desc, f"{name}: every shipped scenario has a description"
        first = summary_line(desc)
        # the first sentence is the one-liner: short enough that the listing never cuts it
        assert first.endswith(".") and len(first) <= 110, (name, first)
        assert line.split() == [name, *first.split()]
    assert summary_line("A b. C d.") == "A b."
    assert summary_line("x" * 200).endswith("...") and len(summary_line("x" * 200)) == 110
