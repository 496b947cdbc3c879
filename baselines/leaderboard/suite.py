"""The frozen benchmark suite (``configs/suite/<version>.yaml``): scenarios, env ids, seeds, constraints.

A suite scenario names a scenario file (relative to ``configs/suite/``), the env id whose decision the
policy takes, its train and test seeds and the constraints its test-seed means must meet. A scenario that
replays a public trace names the trace (``servegym.envs.data.REGISTRY``) and its sha256; when the file is not in
the data directory, or its hash differs, the synthetic twin (``scenario``) runs instead, and every
leaderboard entry records which one ran (``workload``: ``trace`` or ``twin``).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from servegym.baselines.planning import SEARCH_SETTINGS, setting_problem
from servegym.baselines.registry import list_policies
from servegym.configs import SUITE_DIR
from servegym.envs.data import REGISTRY, data_dir, sha256_file

DEFAULT_SUITE = "v0"


class SuiteError(ValueError):
    """A suite file that does not validate, or a scenario / seed it does not have."""


@dataclass(frozen=True)
class Constraint:
    metric: str
    min: float | None = None
    max: float | None = None

    def holds(self, value: float) -> bool:
        if value != value:  # NaN: the metric is undefined, so the constraint is not shown to hold
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"{self.min:g} <= {self.metric} <= {self.max:g}"
        return f"{self.metric} >= {self.min:g}" if self.min is not None else f"{self.metric} <= {self.max:g}"


@dataclass(frozen=True)
class TraceSpec:
    name: str
    sha256: str
    scenario: str
    test_window_start_s: dict[int, float] = field(default_factory=dict)
    train_window_start_s: tuple[float, ...] = ()


@dataclass(frozen=True)
class SuiteScenario:
    name: str
    env_id: str
    scenario: str  # the (twin) scenario file, relative to SUITE_DIR
    train_seeds: tuple[int, ...]
    test_seeds: tuple[int, ...]
    constraints: tuple[Constraint, ...] = ()
    covers: str = ""
    trace: TraceSpec | None = None
    env_config: dict[str, Any] = field(default_factory=dict)  # for every policy on this scenario
    base: Path = SUITE_DIR  # scenario files are relative to the suite file's folder
    validation_seeds: tuple[int, ...] = ()  # for choices (hyperparameters, search settings); never reported
    # the planners' settings on this scenario (horizon_s, breadth, depth, cost_weight, base, samples), chosen
    # on train seeds by scripts/headroom.py and pinned by scripts/freeze_suite.py; {}: the planners' defaults
    planner: dict[str, Any] = field(default_factory=dict)

    def path(self, workload: str = "twin") -> Path:
        if workload == "trace":
            if self.trace is None:
                raise SuiteError(f"scenario {self.name!r} has no trace variant")
            return self.base / self.trace.scenario
        return self.base / self.scenario

    def window_start_s(self, workload: str, seed: int) -> float | None:
        """The trace window of a test seed (None for the twin, whose seed draws the workload)."""
        if workload != "trace" or self.trace is None:
            return None
        if seed not in self.trace.test_window_start_s:
            raise SuiteError(f"scenario {self.name!r}: seed {seed} has no trace window")
        return float(self.trace.test_window_start_s[seed])


@dataclass(frozen=True)
class Suite:
    version: str
    path: Path
    score_metric: str
    scenarios: tuple[SuiteScenario, ...]
    cluster_combinations: tuple[str, ...]
    # run the planning baselines too: the clairvoyant oracle (a reference row, unranked) and MPC (ranked)
    planners: bool = False

    def scenario(self, name: str) -> SuiteScenario:
        for s in self.scenarios:
            if s.name == name:
                return s
        raise SuiteError(
            f"suite {self.version}: no scenario {name!r}; known: {[s.name for s in self.scenarios]}"
        )


def suite_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return SUITE_DIR / f"{name_or_path}.yaml"


def _seeds(raw: Any, where: str) -> tuple[int, ...]:
    if isinstance(raw, dict):
        return tuple(range(int(raw["start"]), int(raw["start"]) + int(raw["count"])))
    if isinstance(raw, list) and raw:
        return tuple(int(s) for s in raw)
    raise SuiteError(f"{where}: seeds must be a non-empty list or {{start, count}}, got {raw!r}")


def load_suite(name_or_path: str | Path = DEFAULT_SUITE) -> Suite:
    """Load and check a suite file; errors name the file and the key."""
    path = suite_path(name_or_path)
    if not path.exists():
        raise SuiteError(f"{path}: no such suite file")
    raw = yaml.safe_load(path.read_text())
    where = str(path)
    try:
        defaults = raw.get("default_seeds", {})
        scenarios = []
        for i, s in enumerate(raw["scenarios"]):
            w = f"{where}: scenarios.{i}"
            seeds = {**defaults, **s.get("seeds", {})}
            trace = None
            if "trace" in s:
                t = s["trace"]
                trace = TraceSpec(
                    t["name"],
                    t["sha256"],
                    t["scenario"],
                    {int(k): float(v) for k, v in t.get("test_window_start_s", {}).items()},
                    tuple(float(x) for x in t.get("train_window_start_s", [])),
                )
            sc = SuiteScenario(
                name=s["name"],
                env_id=s["env_id"],
                scenario=s["scenario"],
                train_seeds=_seeds(seeds.get("train"), f"{w}.seeds.train"),
                test_seeds=_seeds(seeds.get("test"), f"{w}.seeds.test"),
                constraints=tuple(
                    Constraint(c["metric"], c.get("min"), c.get("max")) for c in s.get("constraints", [])
                ),
                covers=s.get("covers", ""),
                trace=trace,
                env_config=dict(s.get("env_config") or {}),
                base=path.resolve().parent,
                validation_seeds=_seeds(seeds["validation"], f"{w}.seeds.validation")
                if "validation" in seeds
                else (),
                planner=_planner_settings(s.get("planner"), f"{w}.planner"),
            )
            splits = {"train": sc.train_seeds, "validation": sc.validation_seeds, "test": sc.test_seeds}
            for (a, sa), (b, sb) in itertools.combinations(splits.items(), 2):
                if set(sa) & set(sb):
                    raise SuiteError(f"{w}: {a} and {b} seeds overlap ({sorted(set(sa) & set(sb))[:5]})")
            if not sc.path().exists():
                raise SuiteError(f"{w}.scenario: no such file {sc.path()}")
            if trace is not None and set(trace.test_window_start_s) != set(sc.test_seeds):
                raise SuiteError(
                    f"{w}.trace.test_window_start_s: needs exactly the test seeds {sc.test_seeds}"
                )
            scenarios.append(sc)
        return Suite(
            version=str(raw["version"]),
            path=path,
            score_metric=str(raw.get("score_metric", "goodput/req_per_s")),
            scenarios=tuple(scenarios),
            cluster_combinations=tuple(raw.get("cluster_combinations", [])),
            planners=bool(raw.get("planners", False)),
        )
    except (KeyError, TypeError) as e:
        raise SuiteError(f"{where}: missing or malformed key {e}") from None


def _planner_settings(raw: Any, where: str) -> dict[str, Any]:
    """The pinned planner settings, checked here (by the planner's own checks) so that a bad value fails the
    suite's load, naming its key, rather than every planner cell at run time."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or set(raw) - set(SEARCH_SETTINGS):
        raise SuiteError(f"{where}: must be a mapping of {SEARCH_SETTINGS}, got {raw!r}")
    for key, value in raw.items():
        why = setting_problem(key, value)
        if why:
            raise SuiteError(f"{where}.{key}: {why}")
    return dict(raw)


@functools.cache
def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.cache
def _trace_status(rel_path: str, sha256: str, data_dir: str) -> str:
    p = Path(data_dir) / rel_path
    if not p.is_file():
        return "missing"

    return "ok" if sha256_file(p) == sha256 else "mismatch"


def workload_for(sc: SuiteScenario, prefer: str = "auto") -> tuple[str, str]:
    """(``trace`` | ``twin``, why): the trace when it is present with the pinned sha256 (``prefer``:
    ``auto``), else the twin; ``prefer="twin"`` forces the twin, ``prefer="trace"`` fails without it."""
    if sc.trace is None:
        return "twin", "synthetic scenario"
    if prefer == "twin":
        return "twin", "twin requested"

    src = REGISTRY.get(sc.trace.name)
    if src is None:
        raise SuiteError(
            f"scenario {sc.name!r}: trace {sc.trace.name!r} is not in servegym.envs.data.REGISTRY"
        )
    status = _trace_status(src.rel_path, sc.trace.sha256, str(data_dir()))
    if status == "ok":
        return "trace", f"{sc.trace.name} present, sha256 verified"
    if prefer == "trace":
        raise SuiteError(
            f"scenario {sc.name!r}: trace {sc.trace.name!r} is {status} in {data_dir()} "
            f"(python -m servegym.envs.data fetch {sc.trace.name})"
        )
    return "twin", f"{sc.trace.name} {status} in the data directory: synthetic twin"


def heuristics_for(suite: Suite, env_id: str) -> list[str]:
    """The registered heuristics that answer an env's decision (Cluster-v0: the suite's combinations)."""

    name = env_id.rsplit("-", 1)[0]  # every version of an id takes the same decision (versions pin timing)
    kind = {
        "servegym/Route": "route",
        "servegym/Batch": "batch",
        "servegym/Scale": "scale",
    }.get(name)
    if name == "servegym/Cluster":
        return list(suite.cluster_combinations)
    if kind is None:
        raise SuiteError(f"no heuristics known for env id {env_id!r}")
    return list_policies(kind)


def env_version(env_id: str) -> str:
    """``servegym/Route-v0`` -> ``v0``."""
    return env_id.rsplit("-", 1)[-1]
