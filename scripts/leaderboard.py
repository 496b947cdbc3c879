"""Run the benchmark suite for every heuristic and every pretrained agent; write the leaderboard.

    python scripts/leaderboard.py                       # suite v0, local process pool, resumes
    python scripts/leaderboard.py --backend ray [--address HOST:PORT]
    python scripts/leaderboard.py validate leaderboard/cells [more entries or folders]

Cells (policy x scenario x test seed) are cached under ``--out``/cells and not rerun. Outputs: ``--out``/
results.csv, results.json, ranking.csv, score_per_scenario.png, cost_vs_attainment.png and the generated
``LEADERBOARD.md``. Agents: every ``agents/pretrained/<name>/`` holding ``model.zip`` (or
``best/best_model.zip``) and the run's ``config.yaml`` (scripts/train.py writes both) runs on the suite
scenarios of its env id. See docs/leaderboard.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from servegym.agents import PRETRAINED_DIR
from servegym.baselines.harness import nan_to_none
from servegym.baselines.leaderboard.board import board_from_entries, csv_rows, markdown, ranking_rows
from servegym.baselines.leaderboard.cells import (
    Cell,
    OutputBusy,
    atomic_write_text,
    entry_files,
    env_config_problem,
    output_lock,
    run_cells,
    slug,
    validate_entry,
)
from servegym.baselines.leaderboard.suite import Suite, heuristics_for, load_suite, workload_for

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- agents


def find_agents(root: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """(label, model path, run config) of every pretrained agent folder; folders without a model are
    reported and skipped."""
    import yaml

    out = []
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        candidates = ("model.zip", "best/best_model.zip", "model.pt", "best/best_model.pt")
        model = next((d / m for m in candidates if (d / m).is_file()), None)
        cfg_file = d / "config.yaml"
        if model is None or not cfg_file.is_file():
            print(
                f"agents: skipping {d} (needs model.zip/.pt or best/best_model.zip/.pt and config.yaml)",
                file=sys.stderr,
            )
            continue
        out.append((f"ppo:{d.name}", model, yaml.safe_load(cfg_file.read_text()) or {}))
    return out


def agent_env_config(run_cfg: dict[str, Any]) -> dict[str, Any]:
    """The agent's env config without its scenario, with the padding of its training env made explicit
    (its observation space is sized by the training scenario's replicas and pools)."""
    from servegym.baselines.env_runner import SCENARIO_KEYS
    from servegym.envs.scenario import load_scenario

    cfg = {k: v for k, v in (run_cfg.get("env_config") or {}).items() if k not in SCENARIO_KEYS}
    if run_cfg.get("scenario") and (cfg.get("max_replicas") is None or cfg.get("max_pools") is None):
        sc = load_scenario(run_cfg["scenario"])
        cfg.setdefault("max_replicas", sum(p.max_replicas for p in sc.pools))
        cfg.setdefault("max_pools", len(sc.pools))
        cfg["max_replicas"] = cfg["max_replicas"] or sum(p.max_replicas for p in sc.pools)
        cfg["max_pools"] = cfg["max_pools"] or len(sc.pools)
    return cfg


def agent_fits(model_path: Path, env_id: str, scenario: Path, env_config: dict[str, Any]) -> str | None:
    """None if the agent can play the scenario, else why not (padding too small, other spaces)."""
    from servegym.baselines.env_runner import make_env
    from servegym.baselines.registry import make_policy

    try:
        env = make_env(env_id, scenario, env_config)
    except ValueError as e:
        return str(e).splitlines()[0]
    pol = make_policy(model_path)  # raises for a damaged model.zip: plan() marks the agent failed
    model = getattr(pol, "model", None)
    if model is not None and (
        model.observation_space != env.observation_space or model.action_space != env.action_space
    ):
        return "observation/action spaces differ from the agent's training env"
    layout = getattr(getattr(pol, "net", None), "layout", None)  # a native PPO agent (agents/ppo.py)
    if layout is not None and layout != env.layout:
        return "observation/action layout differs from the agent's training env"
    return None


# ---------------------------------------------------------------- planning


def plan(
    suite: Suite,
    policies: list[str] | None,
    scenarios: list[str] | None,
    max_seeds: int | None,
    prefer: str,
    agents_dir: Path | None,
) -> tuple[list[Cell], list[str]]:
    import hashlib

    cells: list[Cell] = []
    notes: list[str] = []
    agents = find_agents(agents_dir) if agents_dir is not None else []
    if agents_dir is not None and not agents:
        notes.append(
            f"no pretrained agents under `{agents_dir.relative_to(REPO) if agents_dir.is_relative_to(REPO) else agents_dir}` yet"
        )
    for sc in suite.scenarios:
        if scenarios and sc.name not in scenarios:
            continue
        workload, why = workload_for(sc, prefer)
        if sc.trace is not None:
            notes.append(f"{sc.name}: ran the {workload} ({why})")
        seeds = list(sc.test_seeds[:max_seeds] if max_seeds else sc.test_seeds)
        for pol in heuristics_for(suite, sc.env_id):
            if policies and pol not in policies:
                continue
            cells += [
                Cell(pol, pol, "heuristic", sc.name, s, sc.env_id, workload, dict(sc.env_config))
                for s in seeds
            ]
        if suite.planners:
            cells += planner_cells(sc, seeds, workload, policies, notes)
        for label, model, run_cfg in agents:
            if policies and label not in policies:
                continue
            if run_cfg.get("env_id") != sc.env_id:
                continue
            cfg = {**sc.env_config, **agent_env_config(run_cfg)}
            try:
                why_not = env_config_problem(sc, cfg) or agent_fits(model, sc.env_id, sc.path(workload), cfg)
            except Exception as e:  # a truncated or foreign model.zip: this agent fails, the rest run
                notes.append(f"FAILED {label} on {sc.name}: cannot load {model}: {type(e).__name__}: {e}")
                continue
            if why_not:
                notes.append(f"{label} skipped on {sc.name}: {why_not}")
                continue
            digest = hashlib.sha256(model.read_bytes()).hexdigest()
            rel = str(model.relative_to(REPO)) if model.is_relative_to(REPO) else str(model)
            cells += [Cell(rel, label, "agent", sc.name, s, sc.env_id, workload, cfg, digest) for s in seeds]
    return cells, notes


def headroom_section(path: Path) -> str:
    """The headroom table (train seeds) of a ``scripts/headroom.py --out`` run, as a Markdown section."""
    from servegym.baselines.leaderboard.headroom import Headroom, search_table, table

    rows = [Headroom(**{**d, "seeds": tuple(d["seeds"])}) for d in json.loads(path.read_text())]
    return (
        "## Headroom (train seeds)\n\n"
        "(oracle - best heuristic) / best heuristic in the score metric on train seeds, from "
        f"`scripts/headroom.py` (`{path.name}`); the MPC planner beside it.\n\n"
        f"{table(rows)}\n\nThe oracle's score as search grows:\n\n{search_table(rows)}\n"
    )


def planner_cells(sc: Any, seeds: list[int], workload: str, policies: list[str] | None, notes: list[str]):
    """The oracle (kind ``reference``: shown, never ranked) and the MPC planner (kind ``planner``)."""
    from servegym.baselines.leaderboard.headroom import planner_name

    out = []
    for prefix, kind in (("oracle", "reference"), ("mpc", "planner")):
        name = planner_name(sc.env_id, prefix)
        if policies and name not in policies:
            continue
        if prefix == "mpc" and workload == "trace":
            notes.append(f"{name} skipped on {sc.name}: a replayed trace has no workload model to sample")
            continue
        out += [Cell(name, name, kind, sc.name, s, sc.env_id, workload, dict(sc.env_config)) for s in seeds]
    return out


# ---------------------------------------------------------------- main


def write_outputs(
    suite: Suite,
    entries: list[dict[str, Any]],
    out: Path,
    md: Path,
    command: str,
    wall: float,
    notes: list[str],
    plots: bool,
    sections: list[str] | None = None,
) -> None:
    from servegym.baselines.harness import write_csv

    seeds: dict[str, list[int]] = {}
    for e in entries:
        seeds.setdefault(e["scenario"], [])
        if e["seed"] not in seeds[e["scenario"]]:
            seeds[e["scenario"]].append(e["seed"])
    board = board_from_entries(suite, entries, seeds)
    rows = csv_rows(board)
    ranks = ranking_rows(board)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (("results.csv", rows), ("ranking.csv", ranks)):
        tmp = out / f".{name}.tmp"
        write_csv(tmp, data)
        tmp.replace(out / name)
    payload = {
        "suite_version": suite.version,
        "score_metric": suite.score_metric,
        "command": command,
        "wall_s": round(wall, 1),
        "notes": notes,
        "reference": {
            k: {"policy": p, "goodput": g, "feasible": f} for k, (p, g, f) in board.reference.items()
        },
        "ranking": ranks,
        "results": rows,
        "entries": [
            {
                k: e[k]
                for k in ("policy", "scenario", "seed", "workload", "env_id", "actions_sha256", "metrics")
            }
            | {"file": f"cells/{e['scenario']}/{slug(e['policy'])}/seed{e['seed']}.json"}
            for e in entries
        ],
    }
    atomic_write_text(out / "results.json", json.dumps(nan_to_none(payload), indent=1) + "\n")
    atomic_write_text(md, markdown(board, command, wall, notes, sections or ()))
    if plots:
        from servegym.baselines.leaderboard.plots import plot_frontier, plot_scores

        plot_scores(board, out / "score_per_scenario.png")
        plot_frontier(board, out / "cost_vs_attainment.png")


def cmd_validate(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="leaderboard.py validate", description="replay entries and check their metrics"
    )
    ap.add_argument("paths", nargs="+", help="entry JSON files or folders of them")
    ap.add_argument(
        "--suite", default=None, help="suite file (default: configs/suite/<entry's suite_version>)"
    )
    args = ap.parse_args(argv)
    suite = load_suite(args.suite) if args.suite else None
    files = entry_files(args.paths)
    if not files:
        print("validate: no entries found", file=sys.stderr)
        return 2
    bad = 0
    for f in files:
        v = validate_entry(f, suite)
        bad += not v.ok
        if not v.ok or len(files) <= 20:
            print(f"{'OK  ' if v.ok else 'REJECTED'} {v.path}: {v.message}")
    print(f"{len(files) - bad}/{len(files)} entries reproduce exactly")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["validate"]:
        return cmd_validate(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="v0", help="suite name under configs/suite/ or a path")
    ap.add_argument("--out", default=str(REPO / "leaderboard"), help="cells, results and plots")
    ap.add_argument("--markdown", default=str(REPO / "LEADERBOARD.md"))
    ap.add_argument("--backend", choices=("local", "ray"), default="local")
    ap.add_argument("--address", default=None, help="an existing Ray cluster (ray backend)")
    ap.add_argument(
        "--workers", type=int, default=2, help="processes (local) or CPUs of a local Ray instance"
    )
    ap.add_argument("--policy", action="append", help="only these policies (repeatable)")
    ap.add_argument("--scenario", action="append", help="only these scenarios (repeatable)")
    ap.add_argument("--max-seeds", type=int, default=None, help="only the first N test seeds (smoke runs)")
    ap.add_argument("--workload", choices=("auto", "trace", "twin"), default="auto")
    ap.add_argument("--agents", default=str(PRETRAINED_DIR), help="pretrained agent folders")
    ap.add_argument("--no-agents", action="store_true")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="rerun every cell (ignore the cache)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--headroom", default=None, help="headroom.json of scripts/headroom.py (train seeds) to print"
    )
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    suite = load_suite(args.suite)
    out, md = Path(args.out), Path(args.markdown)
    agents_dir = None if args.no_agents else Path(args.agents)
    cells, notes = plan(suite, args.policy, args.scenario, args.max_seeds, args.workload, agents_dir)
    if not cells:
        print("nothing to run (check --policy / --scenario)", file=sys.stderr)
        return 2
    try:
        with output_lock(out):
            return run_locked(args, argv, suite, cells, notes, out, md, t0)
    except OutputBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 3


def run_locked(
    args: argparse.Namespace,
    argv: list[str],
    suite: Suite,
    cells: list[Cell],
    notes: list[str],
    out: Path,
    md: Path,
    t0: float,
) -> int:
    """Run the cells and write the outputs; ``out`` is locked by the caller. Exit status 1 when an agent
    or a cell failed (the others are on the board, and the failures in its notes)."""
    if args.fresh:
        for c in cells:
            for suffix in (".json", ".npz"):
                (out / c.rel_stem()).with_suffix(suffix).unlink(missing_ok=True)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cells), unit="cell", desc=f"leaderboard {suite.version}")
    failures: list[tuple[Cell, str]] = []
    try:
        entries = run_cells(
            suite,
            cells,
            out,
            args.backend,
            args.workers,
            args.address,
            on_done=(lambda c, e: bar.update(1)) if bar is not None else None,
            failures=failures,
        )
    finally:
        if bar is not None:
            bar.close()
    notes = notes + [f"FAILED {c.label} on {c.scenario} seed {c.seed}: {err}" for c, err in failures]
    wall = time.perf_counter() - t0
    command = "python scripts/leaderboard.py" + ("" if not argv else " " + shlex.join(argv))
    sections = [headroom_section(Path(args.headroom))] if args.headroom else []
    write_outputs(suite, entries, out, md, command, wall, notes, not args.no_plots, sections)
    print(f"{len(entries)} cells in {wall:.1f} s -> {md}, {out}/results.csv")
    failed = [n for n in notes if n.startswith("FAILED")]
    for n in failed:
        print(n, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
