"""The benchmark leaderboard: env runner, replay validation, resume, backends and the generated tables.

Everything runs on a tiny copy of suite v0 (three scenarios with short horizons, two test seeds, a few
policies), so the module takes well under a minute.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from servegym.baselines.env_runner import env_episode_runner, replay_actions, run_env_episode
from servegym.baselines.harness import EpisodeSpec, builtin_episode, evaluate
from servegym.baselines.leaderboard import cells as cells_mod
from servegym.baselines.leaderboard.cells import actions_from_npz, actions_to_npz, validate_entry
from servegym.baselines.leaderboard.suite import SUITE_DIR, load_suite

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "leaderboard.py"
POLICIES = ["jsq", "random", "fcfs", "sjf", "fcfs+lor+static", "fcfs+cost_aware+forecast"]
TINY = {  # suite scenario -> horizon (s)
    "chat_bursty": 60.0,
    "code_long_prompt": 40.0,
    "hetero_prices": 180.0,
}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)


def script():
    spec = importlib.util.spec_from_file_location("leaderboard_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["leaderboard_script"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory) -> Path:
    """Suite v0 cut down: three scenarios (Route, Batch, Cluster), short horizons, two test seeds."""
    root = tmp_path_factory.mktemp("suite")
    raw = yaml.safe_load((SUITE_DIR / "v0.yaml").read_text())
    raw["version"] = "tiny"
    raw["default_seeds"]["test"] = [1000, 1001]
    keep = []
    for sc in raw["scenarios"]:
        if sc["name"] not in TINY:
            continue
        for key in ("scenario",):
            doc = yaml.safe_load((SUITE_DIR / sc[key]).read_text())
            doc["horizon_s"] = TINY[sc["name"]]
            if sc["name"] == "hetero_prices":
                doc["control_interval_s"] = 30.0
            (root / Path(sc[key]).name).write_text(yaml.safe_dump(doc))
            sc[key] = Path(sc[key]).name
        sc.pop("trace", None)  # the twin only: the test must not depend on the data directory
        keep.append(sc)
    raw["scenarios"] = keep
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_board(suite: Path, out: Path, *extra: str) -> int:
    args = ["--suite", str(suite), "--out", str(out), "--markdown", str(out / "LEADERBOARD.md")]
    args += ["--no-agents", "--no-plots", "--no-progress", "--workers", "1"]
    for p in POLICIES:
        args += ["--policy", p]
    return script().main([*args, *extra])


@pytest.fixture(scope="module")
def board(tiny_suite, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("board")
    assert run_board(tiny_suite, out) == 0
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def run_v1_board(
    tmp_path: Path,
    horizons: dict[str, float],
    test_seeds: list[int],
    policies: tuple[str, ...],
    **update: Any,
) -> tuple[Path, Path]:
    """A board over some v1 candidate scenarios cut to short horizons; (suite file, output folder)."""
    raw = yaml.safe_load((SUITE_DIR / "v1.yaml").read_text())
    raw.update(version="tiny_v1", **update)
    raw["default_seeds"]["test"] = test_seeds
    raw["scenarios"] = [sc for sc in raw["scenarios"] if sc["name"] in horizons]
    for sc in raw["scenarios"]:
        doc = yaml.safe_load((SUITE_DIR / sc["scenario"]).read_text())
        doc["horizon_s"] = horizons[sc["name"]]
        (tmp_path / Path(sc["scenario"]).name).write_text(yaml.safe_dump(doc))
        sc["scenario"] = Path(sc["scenario"]).name
    path = tmp_path / "tiny_v1.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "board"
    args = ["--suite", str(path), "--out", str(out), "--markdown", str(out / "LEADERBOARD.md")]
    args += ["--no-agents", "--no-plots", "--no-progress", "--workers", "1"]
    for p in policies:
        args += ["--policy", p]
    assert script().main(args) == 0
    return path, out


# ---------------------------------------------------------------- env runner


def test_env_runner_with_a_heuristic_reproduces_the_builtin_rule():
    over = {"horizon_s": 120.0}
    ref = builtin_episode(EpisodeSpec("jsq", "chat_azure", 3, over))  # the Simulator's default timing, v1
    got, actions = run_env_episode(
        "jsq", "servegym/Route-v1", "chat_azure", 3, {"horizon_s": 120.0}, record=True
    )
    assert ref["finished"] > 200
    assert same(got, ref)
    assert actions.dtype == np.uint8 and actions.shape == (ref["arrived"], 1)
    # the log replays to the same metrics, and the harness runs the agent through the env the same way
    assert same(replay_actions(actions, "servegym/Route-v1", "chat_azure", 3, {"horizon_s": 120.0}), ref)
    res = evaluate(
        "jsq",
        "chat_azure",
        [3],
        overrides=over,
        workers=1,
        episode_runner=env_episode_runner,
        policy_kwargs={"env_id": "servegym/Route-v0"},
        timing="v1",  # runs the agent on Route-v1
    )
    assert same({k: res.records[0][k] for k in ref}, ref)


# ---------------------------------------------------------------- validation


def test_validate_accepts_honest_and_rejects_tampered_entries(board, tiny_suite, tmp_path):
    suite = load_suite(tiny_suite)
    entry = board / "cells" / "chat_bursty" / "jsq" / "seed1000.json"
    v = validate_entry(entry, suite)
    assert v.ok, v.message
    for name in ("hetero_prices/fcfs_lor_static", "code_long_prompt/sjf"):
        v = validate_entry(board / "cells" / name / "seed1001.json", suite)
        assert v.ok, v.message

    def validate(path: Path):
        return validate_entry(path, suite)

    def copy(tag: str) -> tuple[Path, dict[str, Any]]:
        d = tmp_path / tag
        d.mkdir()
        data = json.loads(entry.read_text())
        (d / entry.name).write_text(entry.read_text())
        (d / data["actions_file"]).write_bytes(entry.with_name(data["actions_file"]).read_bytes())
        return d / entry.name, data

    # a changed metric
    path, data = copy("metric")
    data["metrics"]["goodput/req_per_s"] *= 1.0 + 1e-12
    path.write_text(json.dumps(data))
    v = validate(path)
    assert not v.ok and "goodput/req_per_s" in v.message and "do not reproduce" in v.message

    # changed actions, with the hash updated so that only the replay can tell
    path, data = copy("actions")
    log = path.with_name(data["actions_file"])
    acts = actions_from_npz(log.read_bytes()).copy()
    acts[:50, 0] = (acts[:50, 0] + 1) % 3  # three replicas: still valid actions, other replicas
    blob = actions_to_npz(acts)
    log.write_bytes(blob)
    data["actions_sha256"] = hashlib.sha256(blob).hexdigest()
    path.write_text(json.dumps(data))
    v = validate(path)
    assert not v.ok and "do not reproduce" in v.message

    # a log that does not match the entry's hash
    path, data = copy("hash")
    path.with_name(data["actions_file"]).write_bytes(blob)
    v = validate(path)
    assert not v.ok and "actions_sha256" in v.message

    # a truncated log
    path, data = copy("short")
    short = actions_to_npz(actions_from_npz(entry.with_name(data["actions_file"]).read_bytes())[:-5])
    path.with_name(data["actions_file"]).write_bytes(short)
    data["actions_sha256"] = hashlib.sha256(short).hexdigest()
    path.write_text(json.dumps(data))
    v = validate(path)
    assert not v.ok and "end before the episode" in v.message

    # the validate command: exit status 0 for the honest cells, 1 with a rejected entry
    assert script().main(["validate", str(board / "cells" / "chat_bursty"), "--suite", str(tiny_suite)]) == 0
    assert script().main(["validate", str(tmp_path / "metric" / entry.name), "--suite", str(tiny_suite)]) == 1


# ---------------------------------------------------------------- resume, backends


def test_resume_after_an_interruption_gives_the_same_tables(board, tiny_suite, tmp_path, monkeypatch):
    real = cells_mod.run_cell
    calls = {"n": 0}

    def flaky(suite_file, cell):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # the user pressed ^C in the middle of the run
        return real(suite_file, cell)

    monkeypatch.setattr(cells_mod, "run_cell", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_board(tiny_suite, tmp_path)
    done = sorted(tmp_path.glob("cells/*/*/*.json"))
    assert len(done) == 6 and not (tmp_path / "results.csv").exists()
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes: no partial files left behind
    calls["n"] = -1000
    assert run_board(tiny_suite, tmp_path) == 0
    n_cells = len(list(board.glob("cells/*/*/*.json")))
    assert calls["n"] == -1000 + n_cells - 6  # only the cells that were missing ran
    for name in ("results.csv", "ranking.csv"):
        assert (tmp_path / name).read_text() == (board / name).read_text()


def test_ray_and_local_backends_give_identical_results(board, tiny_suite, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    args = ["--scenario", "chat_bursty", "--scenario", "code_long_prompt"]
    assert run_board(tiny_suite, tmp_path, "--backend", "ray", *args) == 0
    ray_rows = read_csv(tmp_path / "results.csv")
    local_rows = [
        r for r in read_csv(board / "results.csv") if r["scenario"] in ("chat_bursty", "code_long_prompt")
    ]
    key = ("policy", "scenario")
    assert sorted(ray_rows, key=lambda r: [r[k] for k in key]) == sorted(
        local_rows, key=lambda r: [r[k] for k in key]
    )
    for js in tmp_path.glob("cells/*/*/*.json"):
        a, b = json.loads(js.read_text()), json.loads((board / js.relative_to(tmp_path)).read_text())
        assert a["actions_sha256"] == b["actions_sha256"] and same(a["metrics"], b["metrics"])


# ---------------------------------------------------------------- tables


def test_markdown_has_one_row_per_policy_with_the_csv_numbers(board):
    md = (board / "LEADERBOARD.md").read_text()
    ranking = read_csv(board / "ranking.csv")
    results = read_csv(board / "results.csv")
    assert {r["policy"] for r in ranking} == set(POLICIES)
    section = md.split("## Ranking")[1].split("## Scenarios")[0]
    rows = [line for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == len(POLICIES)
    for line, r in zip(rows, ranking, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == r["rank"] and cells[1] == f"`{r['policy']}`"
        assert cells[3] == f"{float(r['geomean_score']):.3f}"
    # per-scenario tables: the score and the goodput mean of every (policy, scenario) row
    for r in results:
        block = md.split(f"### {r['scenario']} ")[1].split("###")[0]
        line = next(x for x in block.splitlines() if x.startswith(f"| `{r['policy']}` |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == f"{float(r['score']):.3f}"
        assert cells[3].split(" ±")[0] == f"{float(r['goodput/req_per_s/mean']):.4g}"
    # the best feasible heuristic of a scenario scores exactly 1
    suite = load_suite(SUITE_DIR / "v0.yaml")
    assert suite.version == "v0"
    for sc in TINY:
        scores = [float(r["score"]) for r in results if r["scenario"] == sc and r["feasible"] == "True"]
        if scores:
            assert max(scores) == 1.0


def test_candidate_suite_v1_offers_the_agentic_and_spot_scenarios(tmp_path):
    """v1 keeps v0's scenarios (same files) and adds agentic_route and spot_failures; a tiny board over the
    two new ones runs, its entries replay, and the constraints name metrics the runs report."""
    v0, v1 = load_suite("v0"), load_suite("v1")
    assert [s.name for s in v1.scenarios[: len(v0.scenarios)]] == [s.name for s in v0.scenarios]
    assert all(a.path() == b.path() for a, b in zip(v0.scenarios, v1.scenarios, strict=False))
    new = {"agentic_route": 120.0, "spot_failures": 600.0}
    path, out = run_v1_board(tmp_path, new, [1000], ("session_affinity", "round_robin", "spot_mix", "static"))
    suite = load_suite(path)
    entries = sorted((out / "cells").rglob("seed1000.json"))
    assert len(entries) == 4
    for e in entries:
        v = validate_entry(e, suite)
        assert v.ok, v
        metrics = json.loads(e.read_text())["metrics"]
        for c in suite.scenario(e.parent.parent.name).constraints:
            assert metrics[c.metric] == metrics[c.metric]  # reported and defined (not NaN)


def test_planner_rows_oracle_unranked_mpc_ranked_both_replay(tmp_path):
    """A suite with ``planners: true`` adds the oracle (a reference row, never ranked) and MPC (ranked); their
    entries replay like any policy's, and every row carries its paired difference to the reference."""
    policies = ("jsq", "round_robin", "oracle_route", "mpc_route")
    path, out = run_v1_board(tmp_path, {"hetero_route": 40.0}, [1000, 1001], policies, planners=True)
    ranking = {r["policy"]: r for r in read_csv(out / "ranking.csv")}
    assert set(ranking) == {"jsq", "round_robin", "mpc_route"}  # the oracle is never ranked
    results = {r["policy"]: r for r in read_csv(out / "results.csv")}
    assert results["oracle_route"]["kind"] == "reference" and results["mpc_route"]["kind"] == "planner"
    md = (out / "LEADERBOARD.md").read_text()
    assert "`oracle_route` (clairvoyant reference, unranked)" in md
    ref = json.loads((out / "results.json").read_text())["reference"]["hetero_route"]["policy"]
    block = md.split("### hetero_route ")[1]
    assert "goodput/req_per_s − reference, paired" in block
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
        for line in block.splitlines()
        if line.startswith("| `")
    }
    assert cells[f"`{ref}`"][-1] == "+0 ± 0"  # the reference against itself
    assert all(re.match(r"[+-][\d.e+-]+ ± [\d.e+-]+$", c[-1]) for c in cells.values())
    suite = load_suite(path)
    for name in ("oracle_route", "mpc_route"):
        for e in sorted((out / "cells" / "hetero_route" / name).glob("seed*.json")):
            v = validate_entry(e, suite)
            assert v.ok, v


def test_suite_planner_settings_are_checked_and_reach_only_planner_cells(tmp_path):
    from servegym.baselines.leaderboard.cells import Cell, cell_key, planner_settings
    from servegym.baselines.leaderboard.suite import SuiteError

    raw = yaml.safe_load((SUITE_DIR / "v1.yaml").read_text())
    for d in ("v0", "v1"):
        shutil.copytree(SUITE_DIR / d, tmp_path / d)
    raw["scenarios"] = [s for s in raw["scenarios"] if s["name"] == "multi_region"]
    path = tmp_path / "s.yaml"
    raw["scenarios"][0]["planner"] = {"horizon": 10}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError, match=r"scenarios\.0\.planner: must be a mapping of"):
        load_suite(path)
    for bad, key in (
        ({"breadth": 0}, "breadth"),
        ({"horizon_s": -1}, "horizon_s"),
        ({"base": "fastest"}, "base"),
    ):
        raw["scenarios"][0]["planner"] = bad
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(SuiteError, match=rf"scenarios\.0\.planner\.{key}: "):
            load_suite(path)
    raw["scenarios"][0]["planner"] = {"horizon_s": 10.0, "base": "jsq"}
    path.write_text(yaml.safe_dump(raw))
    suite = load_suite(path)
    oracle = Cell(
        "oracle_route", "oracle_route", "reference", "multi_region", 1000, "servegym/Route-v1", "twin"
    )
    rr = Cell("round_robin", "round_robin", "heuristic", "multi_region", 1000, "servegym/Route-v1", "twin")
    assert planner_settings(suite, oracle) == {"horizon_s": 10.0, "base": "jsq"}
    assert planner_settings(suite, rr) == {}
    # a heuristic's cache key does not depend on the planners' settings; the oracle's does
    raw["scenarios"][0]["planner"] = {"horizon_s": 30.0}
    path.write_text(yaml.safe_dump(raw))
    other = load_suite(path)
    assert cell_key(suite, rr) == cell_key(other, rr)
    assert cell_key(suite, oracle) != cell_key(other, oracle)
