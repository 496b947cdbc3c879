"""Training sweeps: many seeds and hyperparameter settings, each a task on a local process pool or on Ray.

    python scripts/sweep.py --config route_chat_azure_native --seeds 0,1,2 --timesteps 200000 --out runs/sweep
    python scripts/sweep.py --config route_chat_azure_native --seeds 0,1 --set ppo.learning_rate=3e-4,1e-3 \\
        --set n_envs=128,256 --backend ray --address HOST:PORT --out runs/sweep_lr

The grid is every combination of the ``--set`` values (dotted keys into the agent config, values read as
YAML) times the seeds. A task trains one run exactly as ``scripts/train.py --config ... --seed S`` does
(the same trainer, seeding and thread count), in a scratch folder on whichever machine runs it, and
returns the run folder's files; this process writes them under ``--out/<setting>/s<seed>/`` (a run folder as
agents/checkpoints.py describes it). So a task's result is the same on either backend and equals a direct
run of the same seed (tested bit for bit on the weights and the evaluation history), and a Ray cluster
needs no file system shared with this machine. A run folder that already holds ``meta.json`` and the
same ``sweep_key.txt`` (a hash of the resolved config, seed and warm start) is not trained again (a sweep
resumes); one that trained something else is trained again. ``--out/sweep.json`` lists every run with its best and final held-out
goodput; the table printed at the end gives each setting's mean over seeds.

The backends are baselines/tasks.py's, which the leaderboard uses too (Ray is the ``ray`` extra, imported
only with ``--backend ray``).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from servegym.agents.config import (
    AgentConfig,
    AgentConfigError,
    agent_config_path,
    load_agent_config,
    validated_config,
)
from servegym.agents.evaluation import EVAL_METRIC
from servegym.baselines.tasks import BACKENDS, run_tasks

SWEEP_FILE = "sweep.json"


def with_settings(cfg: AgentConfig, settings: dict[str, Any], where: str) -> AgentConfig:
    """``cfg`` with dotted keys set (``ppo.learning_rate``, ``env_config.horizon_s``); errors name the key."""
    raw = cfg.model_dump()
    for key, value in settings.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise AgentConfigError(f"{where}: --set {key}: {p!r} is not a section of the agent config")
            node = node[p]
        node[leaf] = value
    return validated_config(raw, f"{where}: invalid setting {settings}")


def setting_label(settings: dict[str, Any]) -> str:
    """The folder of a setting: ``ppo.learning_rate=0.001,n_envs=128`` -> ``ppo.learning_rate=0.001-n_envs=128``
    (the whole key: two sections' keys of the same name must not share a folder)."""
    if not settings:
        return "base"
    return "-".join(f"{k}={v}" for k, v in settings.items()).replace("/", "_")


def parse_sets(sets: list[str]) -> list[dict[str, Any]]:
    """``["a.b=1,2", "c=x"]`` -> every combination, ``[{"a.b": 1, "c": "x"}, {"a.b": 2, "c": "x"}]``."""
    axes: list[list[tuple[str, Any]]] = []
    for s in sets:
        key, sep, values = s.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"--set {s!r}: expected key=value[,value...]")
        axes.append([(key, yaml.safe_load(v)) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)]


# ---------------------------------------------------------------- the task (runs on a worker)


def train_task(
    cfg_dict: dict[str, Any], seed: int, init: bytes | None, threads: int, device: str, command: str
) -> dict[str, Any]:
    """Train one run in a scratch folder; its files (relative path -> bytes). Top level, picklable: the
    process pool and Ray call it. Takes the resolved config and the ``--init`` weights as values, so the
    worker needs nothing of the driver's files."""
    cfg = AgentConfig.model_validate(cfg_dict)
    with tempfile.TemporaryDirectory(prefix="servegym-sweep-") as tmp:
        out = Path(tmp) / "run"
        init_path = None
        if init is not None:
            init_path = Path(tmp) / "init.pt"
            init_path.write_bytes(init)
        if cfg.algo == "native_ppo":
            from servegym.agents.ppo import train

            train(cfg, out, seed, device, False, threads, init_path, command)
        else:  # the SB3 trainer reads its config from a file
            from servegym.agents.train import main

            conf = Path(tmp) / "config.yaml"
            conf.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
            argv = ["--config", str(conf), "--seed", str(seed), "--out", str(out), "--no-progress"]
            main([*argv, "--threads", str(threads), "--device", device])
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the driver


def summary_row(run: Path, label: str, settings: dict[str, Any], seed: int) -> dict[str, Any]:
    meta = json.loads((run / "meta.json").read_text())
    hist_file = run / "eval" / "history.json"
    hist = json.loads(hist_file.read_text()) if hist_file.exists() else []
    return {
        "setting": label,
        "settings": settings,
        "seed": seed,
        "run": run.as_posix(),
        "timesteps": meta.get("timesteps"),
        "wall_s": meta.get("wall_s"),
        "best": max((r[EVAL_METRIC] for r in hist), default=None),
        "final": hist[-1][EVAL_METRIC] if hist else None,
    }


RUN_KEY_FILE = "sweep_key.txt"


def run_key(cfg: AgentConfig, seed: int, init: bytes | None) -> str:
    """What a run trained: a hash of its resolved config, its seed and its warm-start checkpoint."""
    blob = json.dumps({"config": cfg.model_dump(mode="json"), "seed": seed}, sort_keys=True).encode()
    return hashlib.sha256(blob + (init or b"")).hexdigest()


def run_sweep(
    cfg: AgentConfig,
    settings: list[dict[str, Any]],
    seeds: list[int],
    out: Path,
    backend: str = "local",
    workers: int = 2,
    address: str | None = None,
    init: Path | None = None,
    threads: int = 1,
    device: str = "cpu",
    where: str = "sweep",
) -> list[dict[str, Any]]:
    """Every (setting, seed) trained and written under ``out``; the rows of sweep.json, in grid order."""
    grid = [(s, with_settings(cfg, s, where), seed) for s in settings for seed in seeds]
    init_bytes = init.read_bytes() if init is not None else None
    runs = [out / setting_label(s) / f"s{seed}" for s, _, seed in grid]
    # a finished run is reused only if it trained exactly this: its resolved config, seed and warm start
    keys = [run_key(c, seed, init_bytes) for _, c, seed in grid]
    todo = [
        i
        for i, r in enumerate(runs)
        if not (r / "meta.json").exists()
        or not (r / RUN_KEY_FILE).exists()
        or (r / RUN_KEY_FILE).read_text() != keys[i]
    ]
    args = []
    for i in todo:
        s, c, seed = grid[i]
        command = f"sweep.py {where} --seed {seed} {' '.join(f'--set {k}={v}' for k, v in s.items())}".strip()
        args.append((c.model_dump(), seed, init_bytes, threads, device, command))
    errors: list[str] = []

    def done(k: int, files: dict[str, bytes]) -> None:
        run = runs[todo[k]]
        for rel, blob in files.items():  # meta.json last: it marks the run complete
            if rel != "meta.json":
                (run / rel).parent.mkdir(parents=True, exist_ok=True)
                (run / rel).write_bytes(blob)
        (run / RUN_KEY_FILE).write_text(keys[todo[k]])
        (run / "meta.json").write_bytes(files["meta.json"])
        print(f"done {run}", flush=True)

    def failed(k: int, err: Exception) -> None:
        errors.append(f"{runs[todo[k]]}: {type(err).__name__}: {err}")

    print(f"{len(grid)} runs ({len(grid) - len(todo)} already done), backend {backend}", flush=True)
    run_tasks(train_task, args, done, failed, backend, workers, address)
    if errors:
        raise RuntimeError("sweep runs failed:\n" + "\n".join(errors))
    rows = [summary_row(r, setting_label(s), s, seed) for r, (s, _, seed) in zip(runs, grid, strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_FILE).write_text(json.dumps(rows, indent=1))
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'setting':<40} {'seeds':>5} {'best goodput':>14} {'final goodput':>14}")
    for label in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == label]
        cells = []
        for key in ("best", "final"):
            v = [r[key] for r in rs if r[key] is not None]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.3f} ± {sd:.3f}" if v else "-")
        print(f"{label:<40} {len(rs):>5} {cells[0]:>14} {cells[1]:>14}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="configs/agents/<name>.yaml or a path")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument("--set", action="append", default=[], help="key=v1,v2,... (dotted key; repeatable)")
    ap.add_argument("--timesteps", type=int, default=None, help="override total_timesteps")
    ap.add_argument("--init", default=None, help="native_ppo: every run starts from this .pt (agents/bc.py)")
    ap.add_argument("--backend", choices=BACKENDS, default="local")
    ap.add_argument("--address", default=None, help="an existing Ray cluster (ray backend)")
    ap.add_argument(
        "--workers", type=int, default=2, help="processes (local) or CPUs of a local Ray instance"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    over = {"total_timesteps": args.timesteps} if args.timesteps is not None else {}
    cfg = load_agent_config(args.config, over)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    rows = run_sweep(
        cfg,
        parse_sets(args.set),
        seeds,
        Path(args.out),
        args.backend,
        args.workers,
        args.address,
        Path(args.init) if args.init else None,
        args.threads,
        args.device,
        where=str(agent_config_path(args.config)),
    )
    print_table(rows)
    print(f"{len(rows)} runs in {time.perf_counter() - t0:.0f} s -> {Path(args.out) / SWEEP_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
