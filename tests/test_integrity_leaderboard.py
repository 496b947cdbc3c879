"""Leaderboard integrity under bad input, faults and races (issue 14, items 1-5).

Every test plays chat_bursty's twin (60 s, two test seeds) from test_leaderboard's cut of suite v0.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from servegym.baselines.leaderboard import cells as C
from servegym.baselines.leaderboard.suite import load_suite
from tests.test_leaderboard import SCRIPT, script, tiny_suite  # noqa: F401  (a fixture)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def suite_file(tiny_suite) -> Path:  # noqa: F811  (the fixture, by name)
    """test_leaderboard's cut of suite v0: chat_bursty's twin at 60 s (the scenario used here), two test seeds."""
    return tiny_suite


def cell(seed: int = 1000, **env_config) -> C.Cell:
    return C.Cell("jsq", "jsq", "heuristic", "chat_bursty", seed, "servegym/Route-v0", "twin", env_config)


@pytest.fixture(scope="module")
def honest(suite_file, tmp_path_factory) -> tuple[Path, dict, bytes]:
    """One honest cell written to a folder: (entry path, entry, action log)."""
    out = tmp_path_factory.mktemp("honest")
    entry, blob = C.run_cell(str(suite_file), cell())
    js = C.write_cell(out, cell(), entry, blob)
    return js, json.loads(js.read_text()), blob


def write_entry(folder: Path, name: str, entry: dict, blob: bytes | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    js = folder / f"{name}.json"
    if blob is not None:
        (folder / f"{name}.npz").write_bytes(blob)
        entry = {**entry, "actions_file": f"{name}.npz", "actions_sha256": hashlib.sha256(blob).hexdigest()}
    js.write_text(json.dumps(entry))
    return js


def test_honest_entry_validates(honest, suite_file):
    js, _, _ = honest
    v = C.validate_entry(js, load_suite(suite_file))
    assert v.ok, v.message


@pytest.mark.parametrize(
    "env_config, key",
    [
        ({"horizon_s": 30.0}, "horizon_s"),
        ({"scenario_overrides": {"max_wait_s": 5.0}}, "scenario_overrides"),
        ({"batch_order": "sjf"}, "batch_order"),
        ({"sim_seed": 3}, "sim_seed"),
    ],
)
def test_validate_rejects_an_env_config_that_changes_the_scenario(suite_file, tmp_path, env_config, key):
    # an entry that replays honestly, but on another scenario than the suite's
    entry, blob = C.run_cell(str(suite_file), cell(**env_config))
    js = C.write_cell(tmp_path, cell(**env_config), entry, blob)
    v = C.validate_entry(js, load_suite(suite_file))
    assert not v.ok
    assert key in v.message and "changes the scenario" in v.message


def test_validate_accepts_padding_and_reward_keys(honest, suite_file, tmp_path):
    """Keys no metric depends on (an agent's padding, reward weights) stay allowed, as in the v0 entries."""
    _, entry, blob = honest
    js = write_entry(tmp_path, "pad", {**entry, "env_config": {"max_replicas": 8, "max_pools": 1}}, blob)
    assert C.validate_entry(js, load_suite(suite_file)).ok


def test_the_shipped_v0_entries_use_the_suite_env_config():
    suite = load_suite("v0")
    entries = sorted((REPO / "leaderboard" / "cells").rglob("*.json"))
    assert len(entries) > 300
    for js in entries:
        e = json.loads(js.read_text())
        assert C.env_config_problem(suite.scenario(e["scenario"]), e["env_config"]) is None, js


def test_one_malformed_entry_gets_its_verdict_and_the_others_still_run(honest, suite_file, tmp_path):
    _, entry, blob = honest
    folder = tmp_path / "cells"
    good = write_entry(folder, "good", entry, blob)
    bad = {
        "garbage_npz": ({**entry}, b"not a zip file at all"),
        "truncated_npz": ({**entry}, blob[: len(blob) // 2]),
        "seed_str": ({**entry, "seed": "abc"}, blob),
        "seed_bool": ({**entry, "seed": True}, blob),
        "metrics_list": ({**entry, "metrics": [1, 2]}, blob),
        "env_config_list": ({**entry, "env_config": [1]}, blob),
        "not_object": ([1, 2, 3], None),
    }
    for name, (e, b) in bad.items():
        write_entry(folder, name, e, b)
        if b is None:
            (folder / f"{name}.npz").write_bytes(blob)
    write_entry(folder, "escape", {**entry, "actions_file": "../good.npz"}, None)
    (folder / "escape.npz").write_bytes(blob)
    suite = load_suite(suite_file)
    verdicts = {Path(v.path).stem: v for v in (C.validate_entry(f, suite) for f in C.entry_files([folder]))}
    assert verdicts.keys() == {*bad, "good", "escape"}
    assert verdicts["good"].ok
    for name in [*bad, "escape"]:
        assert not verdicts[name].ok, name
    assert "npz" in verdicts["garbage_npz"].message and "npz" in verdicts["truncated_npz"].message
    assert "'seed'" in verdicts["seed_str"].message and "'seed'" in verdicts["seed_bool"].message
    assert "'metrics'" in verdicts["metrics_list"].message
    assert "env_config" in verdicts["env_config_list"].message
    assert "actions_file" in verdicts["escape"].message
    # the command gives every entry a line and fails as a whole
    rc = script().cmd_validate([str(folder), "--suite", str(suite_file)])
    assert rc == 1 and good.is_file()


def test_a_float_action_log_is_rejected(honest, suite_file, tmp_path):
    _, entry, blob = honest
    floats = C.actions_to_npz(C.actions_from_npz(blob).astype(np.float64) + 0.4)
    js = write_entry(tmp_path, "floats", entry, floats)
    v = C.validate_entry(js, load_suite(suite_file))
    assert not v.ok and "integer" in v.message


def test_a_second_run_cannot_write_into_a_locked_output(tmp_path, suite_file):
    with C.output_lock(tmp_path):
        with pytest.raises(C.OutputBusy, match="another leaderboard run"):
            with C.output_lock(tmp_path):
                pass
        args = ["--suite", str(suite_file), "--out", str(tmp_path), "--markdown", str(tmp_path / "LB.md")]
        args += ["--no-agents", "--no-plots", "--no-progress", "--policy", "jsq", "--max-seeds", "1"]
        assert script().main(args) == 3
        assert not (tmp_path / "cells").exists()
    with C.output_lock(tmp_path):  # released
        pass


def test_a_mixed_entry_and_log_pair_is_run_again(suite_file, tmp_path):
    suite = load_suite(suite_file)
    a, b = cell(1000), cell(1001)
    for c in (a, b):
        C.write_cell(tmp_path, c, *C.run_cell(str(suite_file), c))
    assert C.cached_entry(tmp_path, suite, a) is not None
    # another writer's log lands under the entry (the race of two runs): the pair no longer matches
    stem = tmp_path / a.rel_stem()
    stem.with_suffix(".npz").write_bytes((tmp_path / b.rel_stem()).with_suffix(".npz").read_bytes())
    assert C.cached_entry(tmp_path, suite, a) is None
    entries = C.run_cells(suite, [a, b], tmp_path, workers=1)
    again = C.cached_entry(tmp_path, suite, a)
    assert again is not None and again["actions_sha256"] == entries[0]["actions_sha256"]
    assert C.validate_entry(stem.with_suffix(".json"), suite).ok


def test_a_failing_cell_is_reported_and_the_others_run(suite_file, tmp_path):
    suite = load_suite(suite_file)
    broken = C.Cell(
        str(tmp_path / "model.zip"), "ppo:broken", "agent", "chat_bursty", 1000, "servegym/Route-v0", "twin"
    )
    (tmp_path / "model.zip").write_bytes(b"PK\x03\x04 truncated")
    failures: list = []
    entries = C.run_cells(suite, [broken, cell(1000)], tmp_path / "out", workers=1, failures=failures)
    assert [e["policy"] for e in entries] == ["jsq"]
    assert len(failures) == 1 and failures[0][0] == broken


def test_a_truncated_agent_model_fails_that_agent_only(suite_file, tmp_path):
    agent = tmp_path / "agents" / "broken"
    agent.mkdir(parents=True)
    (agent / "model.zip").write_bytes(b"PK\x03\x04 truncated")
    (agent / "config.yaml").write_text(yaml.safe_dump({"env_id": "servegym/Route-v0", "env_config": {}}))
    cells, notes = script().plan(load_suite(suite_file), None, None, 1, "twin", tmp_path / "agents")
    assert cells and all(c.kind == "heuristic" for c in cells)
    assert any(n.startswith("FAILED ppo:broken") and "model.zip" in n for n in notes)


def _state(pid: int) -> str | None:
    """The process state letter, None once it is gone (a zombie nobody reaps counts as gone)."""
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state = st.rsplit(")", 1)[1].split()[0]
    return None if state in ("Z", "X") else state


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_pool_workers_exit_when_the_leaderboard_is_killed(tmp_path):
    prog = tmp_path / "parent.py"
    prog.write_text(
        textwrap.dedent(
            """
            import os, sys, time
            from concurrent.futures import ProcessPoolExecutor
            from servegym.baselines.tasks import SPAWN, exit_with_parent

            if __name__ == "__main__":
                pool = ProcessPoolExecutor(1, mp_context=SPAWN, initializer=exit_with_parent,
                                           initargs=(os.getpid(),))
                print(pool.submit(os.getpid).result(), flush=True)
                time.sleep(300)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(prog)], stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(parent.stdout.readline())
        assert _state(worker) is not None
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _state(worker) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(worker) is None, "the pool worker outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if worker is not None and _state(worker) is not None:
            os.kill(worker, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_kill_9_of_the_leaderboard_leaves_no_worker_behind(suite_file, tmp_path):
    """The real command with a two-worker pool, killed while its workers run cells."""
    out = tmp_path / "out"
    args = [sys.executable, str(SCRIPT), "--suite", str(suite_file), "--out", str(out)]
    args += [
        "--markdown",
        str(tmp_path / "LB.md"),
        "--no-agents",
        "--no-plots",
        "--no-progress",
        "--workers",
        "2",
    ]
    args += ["--policy", "jsq", "--policy", "random", "--policy", "round_robin", "--policy", "lor"]
    board = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and board.poll() is None and time.monotonic() < deadline:
            workers = [
                c for c in _children(board.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()
            ]
            time.sleep(0.05)
        assert len(workers) == 2, "the pool did not start"
        os.kill(board.pid, signal.SIGKILL)
        board.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_state(w) is not None for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_state(w) is None for w in workers), "pool workers outlived the killed leaderboard"
    finally:
        if board.poll() is None:
            board.kill()
        for w in workers:  # a failing run must not leave its orphans behind either
            if _state(w) is not None:
                os.kill(w, signal.SIGKILL)
    # the killed run left no lock behind: a new run resumes into the same folder
    with C.output_lock(out):
        pass


def test_two_runs_racing_into_one_out_never_mix_their_cells(suite_file, tmp_path):
    out = tmp_path / "out"
    base = [sys.executable, str(SCRIPT), "--suite", str(suite_file), "--out", str(out), "--no-agents"]
    base += ["--no-plots", "--no-progress", "--workers", "1", "--policy", "jsq", "--policy", "random"]
    runs = [
        subprocess.Popen(
            [*base, "--markdown", str(tmp_path / f"LB{i}.md"), "--fresh"], stderr=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    results = [(r.wait(timeout=300), r.stderr.read()) for r in runs]
    codes = sorted(rc for rc, _ in results)
    assert codes in ([0, 0], [0, 3]), results  # the loser is refused (3), or it ran after the winner
    if codes == [0, 3]:
        assert any("another leaderboard run" in err for _, err in results)
    suite = load_suite(suite_file)
    entries = C.entry_files([out / "cells"])
    assert len(entries) == 4
    for js in entries:
        e = json.loads(js.read_text())
        assert hashlib.sha256(js.with_name(e["actions_file"]).read_bytes()).hexdigest() == e["actions_sha256"]
        assert C.validate_entry(js, suite).ok
    listed = json.loads((out / "results.json").read_text())["entries"]
    assert sorted(e["actions_sha256"] for e in listed) == sorted(
        json.loads(js.read_text())["actions_sha256"] for js in entries
    )
