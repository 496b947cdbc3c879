"""Leaderboard cells: one (policy, suite scenario, test seed) episode, its entry file and its action log.

An *entry* is a JSON file holding everything needed to replay the episode -- suite version, scenario
name, file and sha256, workload (trace or twin) and trace window, seed, env id and version, env config,
policy, package and library versions -- its metrics, and the name and sha256 of its *action log*, an
``.npz`` (zlib-compressed) with one ``actions`` array (steps x action dims). ``validate_entry`` re-runs the
actions through the env and accepts the entry only if every metric reproduces exactly.

Cells are cached under ``<out>/cells/<scenario>/<policy>/seed<seed>.{json,npz}``; a cell whose entry
exists with the same ``key`` (a hash of everything that determines the episode) is not run again, so an
interrupted leaderboard resumes where it stopped. Files are written to a temporary name and moved into
place with ``os.replace``, the action log before the entry; a cached entry counts only when its log's
sha256 is the one it names, so a cell is either complete and matching or run again. A run holds a lock on
its output folder (``output_lock``) and its pool workers exit when it dies.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from servegym import envs
from servegym.baselines.env_runner import ReplayError, replay_actions, run_env_episode
from servegym.baselines.harness import versions as harness_versions
from servegym.baselines.leaderboard.headroom import planner_policy
from servegym.baselines.leaderboard.suite import (
    Suite,
    SuiteError,
    SuiteScenario,
    env_version,
    file_sha256,
    load_suite,
    workload_for,
)
from servegym.baselines.tasks import run_tasks
from servegym.envs.gym.config import base_config

ENTRY_FORMAT = 1


@dataclass(frozen=True)
class Cell:
    """One episode to run. ``policy`` is a registered name/combination or a checkpoint path."""

    policy: str
    label: str  # the name shown on the leaderboard
    kind: str  # "heuristic" or "agent"
    scenario: str  # suite scenario name
    seed: int
    env_id: str
    workload: str  # "trace" or "twin"
    env_config: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_sha256: str = ""

    def rel_stem(self) -> str:
        return f"cells/{self.scenario}/{slug(self.label)}/seed{self.seed}"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "policy"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def actions_to_npz(actions: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, actions=actions)
    return buf.getvalue()


def actions_from_npz(data: bytes) -> np.ndarray:
    """The ``actions`` array of an action log; ``ValueError`` naming the problem for anything else (a
    truncated or garbage file, no ``actions`` array, or non-integer actions, which would be truncated)."""
    if not data.startswith(b"PK"):
        raise ValueError("not a .npz action log (no zip header)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            files = list(z.files)
            actions = z["actions"] if "actions" in files else None
    except Exception as e:  # zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError: a damaged file
        raise ValueError(f"not a readable .npz action log ({type(e).__name__}: {e})") from None
    if actions is None:
        raise ValueError(f"no 'actions' array in the .npz action log (it has {files})")
    if actions.dtype.kind not in "iu":
        raise ValueError(
            f"actions must be integers, got dtype {actions.dtype} (a float log is not replayable)"
        )
    return actions


def versions() -> dict[str, str]:

    return dict(harness_versions())


# ---------------------------------------------------------------- the env configuration a cell may use

# Env config keys that decide the episode's dynamics or which requests a slot index means: an entry must
# run them as the suite sets them for the scenario (else the env's defaults). The other keys size the
# padding, the reward or the features, which an agent chooses and which no metric depends on.
PINNED_ENV_KEYS = ("scenario", "scenario_overrides", "horizon_s", "sim_seed", "batch_order")


def env_config_problem(sc: SuiteScenario, env_config: Any) -> str | None:
    """None if ``env_config`` plays the suite's scenario ``sc`` as the suite specifies, else why not."""

    if not isinstance(env_config, Mapping):
        return f"env_config must be a mapping, got {type(env_config).__name__}"
    defaults = base_config()
    unknown = sorted(set(env_config) - set(defaults))
    if unknown:
        return f"env_config has unknown keys {unknown}"
    for key in sorted(set(PINNED_ENV_KEYS) | set(sc.env_config)):
        want = sc.env_config.get(key, defaults[key])
        got = env_config.get(key, defaults[key])
        if got != want or type(got) is not type(want):
            return (
                f"env_config[{key!r}] = {got!r} changes the scenario: suite {sc.name!r} runs it with {want!r}"
            )
    return None


# ---------------------------------------------------------------- running one cell


def cell_scenario(suite: Suite, cell: Cell) -> tuple[Path, float | None]:
    sc = suite.scenario(cell.scenario)
    return sc.path(cell.workload), sc.window_start_s(cell.workload, cell.seed)


@functools.cache
def code_sha256() -> str:
    """A hash of the code that decides an episode (simulator, envs, workload tables, the heuristics):
    a cached cell produced by other code is stale even when the package version did not change."""

    # the folder holding envs/ and baselines/: the checkout in development, site-packages/servegym installed
    root = Path(envs.__file__).resolve().parent.parent
    files = [*root.glob("envs/**/*.py"), *root.glob("envs/**/*.json")] + [
        root / "baselines" / f
        for f in ("batching.py", "routing.py", "scaling.py", "policy.py", "registry.py", "env_runner.py")
    ]
    return envs.source_sha256(files, root)


PLANNER_KINDS = ("reference", "planner")  # the oracle's and the MPC planner's cells


def planner_settings(suite: Suite, cell: Cell) -> dict[str, Any]:
    """The suite's pinned search settings for a planner cell ({} for any other cell)."""
    if cell.kind not in PLANNER_KINDS:
        return {}
    return dict(suite.scenario(cell.scenario).planner)


def cell_key(suite: Suite, cell: Cell) -> str:
    """A hash of everything that determines the episode: when it matches, the cached entry is current."""

    path, window = cell_scenario(suite, cell)
    planner = planner_settings(suite, cell)
    blob = json.dumps(
        {
            **({"planner": planner} if planner else {}),  # only planner cells: other keys stay as they were
            "suite": suite.version,
            "scenario_sha256": file_sha256(str(path)),
            "window": window,
            "cell": asdict(cell),
            "package": envs.__version__,
            "code": code_sha256(),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_cell(suite_file: str, cell: Cell) -> tuple[dict[str, Any], bytes]:
    """Play one cell; its entry (without file names) and its compressed action log. Picklable, top level:
    the local process pool and Ray tasks both call it."""

    suite = load_suite(suite_file)
    path, window = cell_scenario(suite, cell)
    t0 = time.perf_counter()
    planner = planner_settings(suite, cell)
    policy = planner_policy(cell.policy, **planner) if planner else cell.policy
    metrics, actions = run_env_episode(
        policy, cell.env_id, path, cell.seed, cell.env_config, record=True, window_start_s=window
    )
    wall = time.perf_counter() - t0
    assert actions is not None
    blob = actions_to_npz(actions)
    sc = suite.scenario(cell.scenario)
    entry: dict[str, Any] = {
        "format": ENTRY_FORMAT,
        "key": cell_key(suite, cell),
        "suite_version": suite.version,
        "scenario": cell.scenario,
        "scenario_file": path.relative_to(path.parents[1]).as_posix(),
        "scenario_sha256": file_sha256(str(path)),
        "workload": cell.workload,
        "trace": None if sc.trace is None or cell.workload != "trace" else sc.trace.name,
        "trace_sha256": None if sc.trace is None or cell.workload != "trace" else sc.trace.sha256,
        "window_start_s": window,
        "seed": cell.seed,
        "env_id": cell.env_id,
        "env_version": env_version(cell.env_id),
        "env_config": dict(cell.env_config),
        "policy": cell.label,
        "policy_source": cell.policy,
        "policy_kind": cell.kind,
        "checkpoint_sha256": cell.checkpoint_sha256,
        "package_version": envs.__version__,
        "code_sha256": code_sha256(),  # informational: the replay, not this hash, decides validity
        "versions": versions(),
        "n_steps": int(actions.shape[0]),
        "action_dims": int(actions.shape[1]),
        "actions_sha256": hashlib.sha256(blob).hexdigest(),
        "metrics": metrics,
        "wall_s": round(wall, 4),  # informational: never compared
    }
    return entry, blob


def write_cell(out: Path, cell: Cell, entry: dict[str, Any], blob: bytes) -> Path:
    """Action log first, then the entry: a present entry always has its log."""
    stem = out / cell.rel_stem()
    npz = stem.with_suffix(".npz")
    entry = {**entry, "actions_file": npz.name}
    atomic_write_bytes(npz, blob)
    js = stem.with_suffix(".json")
    atomic_write_text(js, json.dumps(entry, indent=1, sort_keys=False) + "\n")
    return js


def read_entry(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cached_entry(out: Path, suite: Suite, cell: Cell) -> dict[str, Any] | None:
    """The cell's entry if it is current and its action log is the one it names (same sha256); a pair
    mixed by an interrupted or concurrent writer is run again rather than trusted."""
    js = (out / cell.rel_stem()).with_suffix(".json")
    entry = read_entry(js)
    if not isinstance(entry, dict) or entry_problem(entry) or entry.get("key") != cell_key(suite, cell):
        return None
    try:
        blob = js.with_name(entry["actions_file"]).read_bytes()
    except OSError:
        return None
    return entry if hashlib.sha256(blob).hexdigest() == entry["actions_sha256"] else None


class OutputBusy(RuntimeError):
    """Another leaderboard run holds the output folder."""


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder for a whole run (cells, results, plots), so that two
    runs never interleave their cells and results. The lock is released when the process ends, even
    by ``kill -9``, so a killed run never blocks the next one."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".leaderboard.lock"
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputBusy(
                f"{out}: another leaderboard run is writing here (it holds {lock}); wait for it to "
                "finish or pass another --out"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------- backends


Progress = Callable[[Cell, dict[str, Any]], None]


def run_cells(
    suite: Suite,
    cells: Sequence[Cell],
    out: Path,
    backend: str = "local",
    workers: int = 2,
    address: str | None = None,
    on_done: Progress | None = None,
    failures: list[tuple[Cell, str]] | None = None,
) -> list[dict[str, Any]]:
    """Run ``cells`` (those not already cached), writing each as it finishes; every cell's entry, in order.

    With ``failures`` (a list), a cell that raises is appended there with the error and the other cells
    still run; without it the first error propagates."""
    entries: list[dict[str, Any] | None] = [cached_entry(out, suite, c) for c in cells]
    todo = [i for i, e in enumerate(entries) if e is None]
    for i, e in enumerate(entries):
        if e is not None and on_done is not None:
            on_done(cells[i], e)

    def finish(i: int, entry: dict[str, Any], blob: bytes) -> None:
        write_cell(out, cells[i], entry, blob)
        entries[i] = {**entry, "actions_file": Path(cells[i].rel_stem()).name + ".npz"}
        if on_done is not None:
            on_done(cells[i], entries[i])

    def failed(i: int, err: Exception) -> None:
        if failures is None:
            raise err
        failures.append((cells[i], f"{type(err).__name__}: {err}"))

    suite_file = str(suite.path)
    run_tasks(
        run_cell,
        [(suite_file, cells[i]) for i in todo],
        on_done=lambda k, result: finish(todo[k], *result),
        on_error=lambda k, err: failed(todo[k], err),
        backend=backend,
        workers=workers,
        address=address,
    )
    return [e for e in entries if e is not None]


# ---------------------------------------------------------------- validation (replay)


def same_value(a: Any, b: Any) -> bool:
    """Bit-identical, with NaN equal to NaN (a metric undefined in both runs)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def metric_diffs(claimed: Mapping[str, Any], replayed: Mapping[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(claimed) | set(replayed)):
        if k not in replayed:
            out.append(f"{k}: claimed {claimed[k]!r}, replay has no such metric")
        elif k not in claimed:
            out.append(f"{k}: missing from the entry (replay gives {replayed[k]!r})")
        elif not same_value(claimed[k], replayed[k]):
            out.append(f"{k}: claimed {claimed[k]!r}, replay gives {replayed[k]!r}")
    return out


@dataclass
class Verdict:
    path: str
    ok: bool
    message: str


_ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "suite_version": (str,),
    "scenario": (str,),
    "seed": (int,),
    "env_id": (str,),
    "actions_file": (str,),
    "actions_sha256": (str,),
    "metrics": (dict,),
}


def entry_problem(entry: Any) -> str | None:
    """None if ``entry`` has every field replay needs, with the right type, else what is wrong."""
    if not isinstance(entry, dict):
        return f"an entry must be a JSON object, got {type(entry).__name__}"
    missing = [k for k in _ENTRY_TYPES if k not in entry]
    if missing:
        return f"entry lacks {missing}"
    for key, types in _ENTRY_TYPES.items():
        v = entry[key]
        if isinstance(v, bool) or not isinstance(v, types):
            return f"entry field {key!r} must be {' or '.join(t.__name__ for t in types)}, got {v!r:.80}"
    name = entry["actions_file"]
    if name != Path(name).name or name in ("", ".", "..") or "\\" in name:
        return f"entry field 'actions_file' must be a file name beside the entry, got {name!r:.80}"
    if entry.get("workload", "twin") not in ("trace", "twin"):
        return f"entry field 'workload' must be 'trace' or 'twin', got {entry['workload']!r:.80}"
    return None


def validate_entry(path: str | Path, suite: Suite | None = None) -> Verdict:
    """Replay an entry's action log and check its metrics reproduce exactly; a clear reason if not.
    Never raises for a bad entry: whatever is wrong with one file becomes its verdict."""
    try:
        return _validate_entry(Path(path), suite)
    except Exception as e:  # a malformed entry the checks above did not foresee: still a verdict
        return Verdict(str(path), False, f"malformed entry ({type(e).__name__}: {e})")


def _validate_entry(path: Path, suite: Suite | None) -> Verdict:

    entry = read_entry(path)
    if entry is None:
        return Verdict(str(path), False, "not a readable JSON entry")
    problem = entry_problem(entry)
    if problem:
        return Verdict(str(path), False, problem)
    try:
        if suite is None or suite.version != entry["suite_version"]:
            suite = load_suite(entry["suite_version"])
        sc = suite.scenario(entry["scenario"])
    except SuiteError as e:
        return Verdict(str(path), False, f"unknown suite or scenario: {e}")
    workload = entry.get("workload", "twin")
    scen_path = sc.path(workload)
    if entry.get("scenario_sha256") and entry["scenario_sha256"] != file_sha256(str(scen_path)):
        return Verdict(
            str(path), False, f"scenario file {scen_path.name} differs from the one the entry ran (sha256)"
        )
    if entry["env_id"] != sc.env_id:
        return Verdict(
            str(path), False, f"env {entry['env_id']} is not the suite's {sc.env_id} for {sc.name}"
        )
    env_config = entry.get("env_config") or {}
    problem = env_config_problem(sc, env_config)
    if problem:
        return Verdict(str(path), False, problem)
    if entry["seed"] not in sc.test_seeds:
        return Verdict(
            str(path), False, f"seed {entry['seed']} is not a test seed of {sc.name} {sc.test_seeds}"
        )
    if workload == "trace" and workload_for(sc)[0] != "trace":
        return Verdict(str(path), False, f"entry ran trace {sc.trace.name if sc.trace else '?'}, absent here")
    log = path.with_name(entry["actions_file"])
    try:
        blob = log.read_bytes()
    except OSError:
        return Verdict(str(path), False, f"action log {log.name} missing")
    if hashlib.sha256(blob).hexdigest() != entry["actions_sha256"]:
        return Verdict(str(path), False, f"action log {log.name} does not match the entry's actions_sha256")
    try:
        actions = actions_from_npz(blob)
        replayed = replay_actions(
            actions,
            entry["env_id"],
            scen_path,
            entry["seed"],
            env_config,
            sc.window_start_s(workload, entry["seed"]),
        )
    except (ReplayError, ValueError, KeyError) as e:
        return Verdict(str(path), False, f"replay failed: {e}")
    diffs = metric_diffs(entry["metrics"], replayed)
    if diffs:
        more = f" (+{len(diffs) - 5} more)" if len(diffs) > 5 else ""
        return Verdict(str(path), False, "metrics do not reproduce: " + "; ".join(diffs[:5]) + more)
    return Verdict(str(path), True, f"reproduced {len(replayed)} metrics over {len(actions)} steps")


def entry_files(paths: Iterable[str | Path]) -> list[Path]:
    """Entry JSON files under the given files/folders (a results JSON-lines file lists entries too)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.json") if q.with_suffix(".npz").is_file())
        else:
            out.append(p)
    return out
