"""scripts/freeze_suite.py: a suite is frozen only with measured headroom on train seeds for every scenario."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from servegym.baselines.leaderboard.suite import SUITE_DIR, load_suite

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "freeze_suite.py"
PICK = [
    "chat_bursty",
    "multi_region",
    "code_long_prompt",
    "diurnal_autoscale",
    "hetero_prices",
]  # all env ids


def freeze_main():
    spec = importlib.util.spec_from_file_location("freeze_suite", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["freeze_suite"] = mod
    spec.loader.exec_module(mod)
    return mod.main


def candidate(tmp_path: Path) -> Path:
    """A copy of the v1 candidate cut to one scenario per env id (the gate's input, not its results)."""
    for d in ("v0", "v1"):
        shutil.copytree(SUITE_DIR / d, tmp_path / d)
    raw = yaml.safe_load((SUITE_DIR / "v1.yaml").read_text())
    raw["scenarios"] = [s for s in raw["scenarios"] if s["name"] in PICK]
    path = tmp_path / "cand.yaml"
    path.write_text("# servegym benchmark suite v1 -- CANDIDATE, not frozen yet.\n" + yaml.safe_dump(raw))
    return path


def headroom_file(tmp_path: Path, gains: dict[str, float], seeds=(0, 1)) -> Path:
    """Headroom rows in scripts/headroom.py's format: best heuristic at 1.0 on each seed, oracle at 1 + gain."""
    rows = [
        {
            "scenario": name,
            "env_id": "servegym/Route-v0",
            "metric": "goodput/req_per_s",
            "seeds": list(seeds),
            "heuristics": {"jsq": [1.0] * len(seeds)},
            "feasible": {"jsq": True},
            "oracle": {
                "h30/b4/d1/base=jsq": [1.0 + g] * len(seeds),
                "h10/b4/d1/base=jsq": [1.0] * len(seeds),
            },
            "mpc": [1.0] * len(seeds),
            "mpc_search": "h30/b4/d1/base=jsq/s4",
        }
        for name, g in gains.items()
    ]
    path = tmp_path / "headroom.json"
    path.write_text(json.dumps(rows))
    return path


def test_freeze_refuses_a_scenario_below_the_bar_and_writes_nothing(tmp_path, capsys):
    suite = candidate(tmp_path)
    before = suite.read_text()
    hr = headroom_file(tmp_path, {"chat_bursty": 0.02, "code_long_prompt": 0.2, "diurnal_autoscale": 0.3})
    assert freeze_main()(["--suite", str(suite), "--headroom", str(hr), "--min-scenarios", "3"]) == 1
    err = capsys.readouterr().err
    assert "chat_bursty: headroom +2.0% < 10%" in err and "hetero_prices: no headroom measured" in err
    assert suite.read_text() == before and not suite.with_suffix(".lock.json").exists()


def test_freeze_refuses_headroom_measured_off_the_train_seeds(tmp_path, capsys):
    suite = candidate(tmp_path)
    hr = headroom_file(tmp_path, dict.fromkeys(PICK, 0.5), seeds=(1000, 1001))
    assert freeze_main()(["--suite", str(suite), "--headroom", str(hr), "--min-scenarios", "5"]) == 1
    assert "which are not train seeds" in capsys.readouterr().err


def test_freeze_with_drop_pins_the_admitted_scenarios(tmp_path):
    suite = candidate(tmp_path)
    gains = dict.fromkeys(PICK, 0.15)
    gains.update(chat_bursty=0.02, multi_region=0.03)
    hr = headroom_file(tmp_path, gains)
    # without a Route scenario above the bar the suite would not cover every decision kind
    assert (
        freeze_main()(["--suite", str(suite), "--headroom", str(hr), "--min-scenarios", "3", "--drop"]) == 1
    )
    gains["chat_bursty"] = 0.11
    hr = headroom_file(tmp_path, gains)
    assert (
        freeze_main()(["--suite", str(suite), "--headroom", str(hr), "--min-scenarios", "4", "--drop"]) == 0
    )
    assert suite.read_text().startswith("# servegym benchmark suite v1 -- FROZEN.")
    lock = json.loads(suite.with_suffix(".lock.json").read_text())
    assert set(lock["scenarios"]) == set(PICK) - {"multi_region"}
    assert lock["scenarios"]["chat_bursty"]["headroom_train"] == pytest.approx(0.11)
    assert len(lock["scenarios"]["chat_bursty"]["files"]) == 2  # the twin and the trace scenario
    frozen = load_suite(suite)
    assert [s.name for s in frozen.scenarios] == [n for n in PICK if n != "multi_region"]
    # the leaderboard's oracle and MPC rows run at the search setting that set the bound
    pin = {"horizon_s": 30.0, "breadth": 4, "depth": 1, "base": "jsq", "samples": 4}
    assert all(s.planner == pin for s in frozen.scenarios)
    assert lock["suite_sha256"] == hashlib.sha256(suite.read_bytes()).hexdigest()


def test_freeze_keeps_the_suite_files_comments_and_pins_the_planners(tmp_path):
    suite = candidate(tmp_path)
    lines = suite.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if "constraints:" in line)
    lines.insert(at, "  # why this constraint: a reason that must outlive the freeze\n")
    suite.write_text("".join(lines))
    hr = headroom_file(tmp_path, dict.fromkeys(PICK, 0.2))
    assert freeze_main()(["--suite", str(suite), "--headroom", str(hr), "--min-scenarios", "5"]) == 0
    text = suite.read_text()
    assert "  # why this constraint: a reason that must outlive the freeze\n" in text
    pin = {"horizon_s": 30.0, "breadth": 4, "depth": 1, "base": "jsq", "samples": 4}
    assert [s.planner for s in load_suite(suite).scenarios] == [pin] * len(PICK)
