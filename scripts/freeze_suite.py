"""Freeze a candidate suite: admit only scenarios with measured headroom, pin every file, mark it FROZEN.

    python scripts/headroom.py --suite v1 --seeds 5 --out results/headroom_v1     # train seeds, minutes
    python scripts/freeze_suite.py --suite v1 --headroom results/headroom_v1/headroom.json

Checks, then writes: every scenario of the suite has a row in the headroom file (``scripts/headroom.py``,
measured on train seeds) with headroom >= ``--min-headroom`` (default 10%), every env id is registered, and
the suite covers every decision kind with at least ``--min-scenarios`` scenarios. On success it writes
``<suite>.lock.json`` beside the suite file (the sha256 of the suite file and of every scenario file, each
scenario's measured headroom, the git commit), pins each scenario's planner settings (the oracle's best
search setting, which the leaderboard's oracle and MPC rows then use) and replaces the ``CANDIDATE`` header line with ``FROZEN``.
``--drop`` leaves out the scenarios below the bar (listing them) instead of failing. Nothing is written when
a check fails. After freezing, any change to those files is a new suite version (docs/leaderboard.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from servegym.baselines.leaderboard.headroom import Headroom, Search
from servegym.baselines.leaderboard.suite import load_suite, suite_path

KINDS = ("Route", "Batch", "Scale", "Cluster")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def planner_pin(row: Headroom) -> dict:
    """The oracle's best search setting on train seeds, and the MPC planner's sample count."""
    pin = Search.from_label(row.best_oracle).kwargs()
    if row.mpc_search:
        pin["samples"] = int(row.mpc_search.rsplit("/s", 1)[1])
    return pin


def insert_planner_pins(text: str, pins: dict[str, dict]) -> str:
    """Add a ``planner:`` line beside the ``name: X`` key of each named scenario entry of the suite's list."""
    out = []
    for line in text.splitlines(keepends=True):
        out.append(line)
        m = re.match(r"^(\s*)(- )?name: (\S+)\s*$", line)
        if m and m.group(3) in pins:  # the entry's keys sit at the indent of `name` (after any `- `)
            indent = " " * (len(m.group(1)) + (2 if m.group(2) else 0))
            flow = yaml.safe_dump(pins[m.group(3)], default_flow_style=True, sort_keys=False).strip()
            out.append(f"{indent}planner: {flow}\n")
    return "".join(out)


def freeze(suite_name: str, headroom_file: Path, min_headroom: float, min_scenarios: int, drop: bool) -> int:
    import gymnasium as gym

    import servegym.envs  # noqa: F401  (registers the env ids)

    path = suite_path(suite_name)
    suite = load_suite(path)
    rows = {
        d["scenario"]: Headroom(**{**d, "seeds": tuple(d["seeds"])})
        for d in json.loads(headroom_file.read_text())
    }
    problems, below = [], []
    for sc in suite.scenarios:
        if sc.env_id not in gym.registry:
            problems.append(f"{sc.name}: env id {sc.env_id} is not registered")
        row = rows.get(sc.name)
        if row is None:
            problems.append(f"{sc.name}: no headroom measured in {headroom_file}")
            continue
        bad = set(row.seeds) - set(sc.train_seeds)
        if bad:
            problems.append(f"{sc.name}: headroom measured on seeds {sorted(bad)}, which are not train seeds")
        if not row.headroom >= min_headroom:
            below.append(f"{sc.name}: headroom {row.headroom:+.1%} < {min_headroom:.0%}")
    if below and not drop:
        problems += below
    keep = [sc for sc in suite.scenarios if sc.name in rows and rows[sc.name].headroom >= min_headroom]
    if len(keep) < min_scenarios:
        problems.append(f"{len(keep)} scenarios reach the bar; a frozen suite needs {min_scenarios}")
    kinds = {sc.env_id.split("/")[1].split("-")[0] for sc in keep}
    missing = [k for k in KINDS if k not in kinds]
    if missing:
        problems.append(f"no admitted scenario takes {', '.join(missing)} decisions")
    if problems:
        print(f"{path}: not frozen:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    raw_text = path.read_text()
    if drop and below:
        raw = yaml.safe_load(raw_text)
        raw["scenarios"] = [s for s in raw["scenarios"] if s["name"] in {k.name for k in keep}]
        header = "".join(line for line in raw_text.splitlines(keepends=True) if line.startswith("#"))
        raw_text = header + yaml.safe_dump(raw, sort_keys=False)
        print("left out:\n  " + "\n  ".join(below))
    # the leaderboard's oracle and MPC rows run at the setting that set the bound; inserted as text, so that
    # the suite file's comments (the reasons for its constraints) survive the freeze
    raw_text = insert_planner_pins(raw_text, {sc.name: planner_pin(rows[sc.name]) for sc in keep})
    raw_text = raw_text.replace("-- CANDIDATE, not frozen yet.", "-- FROZEN.", 1)
    path.write_text(raw_text)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=path.parent)
    lock = {
        "suite": suite.version,
        "suite_sha256": sha256(path),
        "git_commit": commit.stdout.strip() or None,
        "min_headroom": min_headroom,
        "scenarios": {
            sc.name: {
                "env_id": sc.env_id,
                "files": {
                    f: sha256(sc.base / f) for f in [sc.scenario] + ([sc.trace.scenario] if sc.trace else [])
                },
                "headroom_train": rows[sc.name].headroom,
                "best_heuristic": rows[sc.name].best_heuristic,
                "oracle_search": rows[sc.name].best_oracle,
                "train_seeds_measured": list(rows[sc.name].seeds),
            }
            for sc in keep
        },
    }
    out = path.with_suffix(".lock.json")
    out.write_text(json.dumps(lock, indent=1) + "\n")
    print(f"{path}: FROZEN with {len(keep)} scenarios; pinned in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="v1")
    ap.add_argument("--headroom", required=True, type=Path, help="headroom.json of scripts/headroom.py")
    ap.add_argument("--min-headroom", type=float, default=0.10)
    ap.add_argument("--min-scenarios", type=int, default=10)
    ap.add_argument(
        "--drop", action="store_true", help="leave out scenarios below the bar instead of failing"
    )
    args = ap.parse_args(argv)
    return freeze(args.suite, args.headroom, args.min_headroom, args.min_scenarios, args.drop)


if __name__ == "__main__":
    sys.exit(main())
