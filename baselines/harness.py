"""Evaluate any policy on any scenario over N seeds: one metrics record per episode, and an aggregate.

A record is the Foundation metrics of the episode (``servegym.envs.metrics.compute_metrics``) with the policy, the
scenario, the seed and the versions that produced it (servegym, numpy, numba, Python, git commit). The
aggregate gives, per metric, the mean over seeds and a 95% confidence half-width from Student's t
distribution. Episodes run in a local process pool (``workers``); results are deterministic: the same
policy, scenario, overrides and seed give the same record, in any process.

Episodes are run by an *episode runner* ``runner(spec: EpisodeSpec) -> metrics dict``. The default runs a
policy whose every part is a rule of the core (all the registered baselines) inside the simulator, selected
through scenario overrides -- exact and fast. Env-driven agents (learned policies, checkpoints) plug in
their own runner: ``evaluate(..., episode_runner=my_runner)``; it must be a picklable top-level function
when ``workers > 1``.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import multiprocessing
import os
import platform
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy

from servegym import envs
from servegym.baselines.env_runner import env_episode_runner
from servegym.baselines.episodes import (  # noqa: F401  (EpisodeSpec and friends are the harness's API too)
    EpisodeRunner,
    EpisodeSpec,
    builtin_episode,
    scenario_overrides,
)
from servegym.baselines.registry import builtin_policies

# Workers start fresh rather than forked: a fork after torch or numba's threading layer has started
# can deadlock the child (seen with pretrained agents on the leaderboard).
SPAWN = multiprocessing.get_context("spawn")

# Metadata columns that lead every record, in this order.
META_KEYS = ("policy", "scenario", "seed")
VERSION_KEYS = ("servegym_version", "numpy_version", "numba_version", "python_version", "git_commit")
# The summary an operator reads first (the CLI's default table).
SUMMARY_KEYS = (
    "slo_attainment",
    "goodput/req_per_s_per_gpu",
    "ttft_s/p99",
    "tpot_s/p99",
    "cost/usd",
    "gpus/mean_billed",
    "fairness/jain",
    "drop_rate",
)


@dataclass
class EvalResult:
    """The records of one (policy, scenario) over its seeds, and their aggregate."""

    policy: str
    scenario: str
    records: list[dict[str, Any]]
    aggregate: dict[str, dict[str, float]] = field(default_factory=dict)
    wall_s: float = 0.0  # summed episode wall time (kept out of the records, which must be reproducible)


# ---------------------------------------------------------------- episode runners


def default_episode_runner(spec: EpisodeSpec) -> dict[str, Any]:
    """Built-in rules inside the core; anything else (a checkpoint, an agent registered without a core
    rule) through the env, ``servegym.baselines.env_runner.env_episode_runner`` (``policy_kwargs`` may name the
    ``env_id`` and ``env_config``)."""
    if builtin_policies(spec.policy) is None:
        return env_episode_runner(spec)
    return builtin_episode(spec)


# ---------------------------------------------------------------- versions


@functools.cache
def versions() -> dict[str, str]:
    """Versions that produced a record; ``git_commit`` is '' outside a git checkout, '+dirty' if modified."""

    return {
        "servegym_version": envs.__version__,
        "numpy_version": numpy.__version__,
        "numba_version": numba.__version__,
        "python_version": platform.python_version(),
        "git_commit": git_commit(),
    }


def git_commit() -> str:
    """The checkout's commit, with '+dirty' if tracked files are modified; '' outside a git checkout."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")


# ---------------------------------------------------------------- running


def _run_one(spec: EpisodeSpec, runner: EpisodeRunner) -> tuple[EpisodeSpec, dict[str, Any], float]:
    t0 = time.perf_counter()
    metrics = runner(spec)
    return spec, metrics, time.perf_counter() - t0


def make_record(spec: EpisodeSpec, metrics: Mapping[str, Any], vers: Mapping[str, str]) -> dict[str, Any]:
    rec: dict[str, Any] = {"policy": spec.policy, "scenario": spec.scenario, "seed": int(spec.seed)}
    rec.update(metrics)
    rec.update(vers)
    return rec


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def seeds_list(seeds: int | Iterable[int], start: int = 0) -> list[int]:
    """``N`` means seeds ``start .. start+N-1``; an iterable is taken as is."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds: need at least one, got {seeds}")
        return list(range(start, start + seeds))
    out = [int(s) for s in seeds]
    if not out:
        raise ValueError("seeds: empty list")
    return out


def run_specs(
    specs: Sequence[EpisodeSpec],
    episode_runner: EpisodeRunner | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> list[tuple[EpisodeSpec, dict[str, Any], float]]:
    """Run episodes (in a process pool when ``workers > 1``); results in the order of ``specs``."""
    runner = episode_runner or default_episode_runner
    workers = default_workers() if workers is None else max(1, int(workers))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(specs), unit="episode", desc="evaluate")
    results: list[Any] = [None] * len(specs)
    try:
        if workers == 1 or len(specs) == 1:
            for i, spec in enumerate(specs):
                results[i] = _run_one(spec, runner)
                if bar is not None:
                    bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(specs)), mp_context=SPAWN) as pool:
                futures = {pool.submit(_run_one, spec, runner): i for i, spec in enumerate(specs)}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return results


def evaluate_many(
    policies: Sequence[str],
    scenarios: Sequence[str],
    seeds: int | Iterable[int],
    overrides: Mapping[str, Any] | None = None,
    workers: int | None = None,
    progress: bool = False,
    episode_runner: EpisodeRunner | None = None,
    policy_kwargs: Mapping[str, Any] | None = None,
    keys: Sequence[str] | None = None,
    timing: str | None = None,
) -> list[EvalResult]:
    """Every policy on every scenario over the same seeds, in one process pool.

    Returns one ``EvalResult`` per (policy, scenario), records sorted by seed; ``keys`` restricts the
    aggregate (default: every numeric metric); ``timing`` pins the timing version (EpisodeSpec.timing).
    """
    seed_list = seeds_list(seeds)
    for pol in policies:
        if episode_runner is None and builtin_policies(pol) is not None:  # fail early, naming the policy
            scenario_overrides(EpisodeSpec(pol, scenarios[0], 0, overrides))
    specs = [
        EpisodeSpec(pol, str(sc), s, overrides, policy_kwargs, timing)
        for pol in policies
        for sc in scenarios
        for s in seed_list
    ]
    vers = versions()
    done = run_specs(specs, episode_runner, workers, progress)
    out: list[EvalResult] = []
    for pol in policies:
        for sc in scenarios:
            mine = [(sp, m, w) for sp, m, w in done if sp.policy == pol and sp.scenario == str(sc)]
            mine.sort(key=lambda t: t[0].seed)
            records = [make_record(sp, m, vers) for sp, m, _ in mine]
            out.append(
                EvalResult(pol, str(sc), records, aggregate(records, keys), sum(w for _, _, w in mine))
            )
    return out


def evaluate(
    policy: str,
    scenario: str,
    seeds: int | Iterable[int],
    overrides: Mapping[str, Any] | None = None,
    workers: int | None = None,
    progress: bool = False,
    episode_runner: EpisodeRunner | None = None,
    policy_kwargs: Mapping[str, Any] | None = None,
    keys: Sequence[str] | None = None,
    timing: str | None = None,
) -> EvalResult:
    """``policy`` (name or checkpoint) on ``scenario`` (name or path) for ``seeds`` (a count or a list)."""
    return evaluate_many(
        [policy], [scenario], seeds, overrides, workers, progress, episode_runner, policy_kwargs, keys, timing
    )[0]


# ---------------------------------------------------------------- statistics


def aggregate(records: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None) -> dict[str, dict]:
    """Per numeric metric: mean, std (ddof 1), 95% CI half-width (Student t), n and ci95 bounds.

    NaN values (a metric undefined in an episode) are left out; a metric with no finite value gets NaN.
    With one value the half-width is NaN: one episode says nothing about the spread.
    """
    if not records:
        return {}
    skip = set(META_KEYS) | set(VERSION_KEYS)
    if keys is None:
        keys = [
            k
            for k, v in records[0].items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
    out: dict[str, dict] = {}
    for k in keys:
        vals = [float(r[k]) for r in records if k in r and not math.isnan(float(r[k]))]
        out[k] = mean_ci(vals)
    return out


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    n = len(values)
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "ci95": nan, "lo": nan, "hi": nan, "n": 0}
    mean = math.fsum(values) / n
    if n == 1:
        std = half = float("nan")
    else:
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95": half, "lo": mean - half, "hi": mean + half, "n": n}


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution (p in (0.5, 1)), by bisection on its CDF."""
    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f"t_quantile: need 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def t_cdf(t: float, df: int) -> float:
    """CDF of Student's t: 1 - I_x(df/2, 1/2) / 2 for t >= 0, with x = df / (df + t^2)."""
    x = df / (df + t * t)
    tail = 0.5 * _reg_inc_beta(0.5 * df, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


def _reg_inc_beta(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (modified Lentz; Numerical Recipes)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below this point: use symmetry
        return 1.0 - _reg_inc_beta(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(ln_front) * h / a


# ---------------------------------------------------------------- output


def write_results(results: Sequence[EvalResult], out: str | Path) -> dict[str, Path]:
    """Write ``<out>/records.csv``, ``records.json``, ``aggregate.csv`` and ``aggregate.json``.

    JSON holds NaN as null (strict JSON); CSV leaves it as ``nan``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = [r for res in results for r in res.records]
    paths = {
        "records_csv": out / "records.csv",
        "records_json": out / "records.json",
        "aggregate_csv": out / "aggregate.csv",
        "aggregate_json": out / "aggregate.json",
    }
    write_csv(paths["records_csv"], records)
    paths["records_json"].write_text(json.dumps(nan_to_none(records), indent=1) + "\n")
    agg_rows = [
        {"policy": res.policy, "scenario": res.scenario, "metric": k, **stats}
        for res in results
        for k, stats in res.aggregate.items()
    ]
    write_csv(paths["aggregate_csv"], agg_rows)
    agg_json = [
        {
            "policy": res.policy,
            "scenario": res.scenario,
            "n_episodes": len(res.records),
            "metrics": res.aggregate,
        }
        for res in results
    ]
    paths["aggregate_json"].write_text(json.dumps(nan_to_none(agg_json), indent=1) + "\n")
    return paths


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for k in row:
            if k not in seen:
                seen.add(k)
                columns.append(k)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        for row in rows:
            w.writerow(row)


def nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [nan_to_none(v) for v in x]
    return x


def markdown_table(results: Sequence[EvalResult], keys: Sequence[str] = SUMMARY_KEYS) -> str:
    """One row per (policy, scenario), one column per metric: ``mean ± 95% CI half-width``."""
    header = ["policy", "scenario", "n", *keys]
    rows = []
    for res in results:
        cells = [res.policy, res.scenario, str(len(res.records))]
        for k in keys:
            st = res.aggregate.get(k)
            cells.append("-" if st is None else _fmt_ci(st))
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 1) + (":" if i >= 2 else "-") for i, w in enumerate(widths)) + "|"
    body = [
        "| "
        + " | ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        + " |"
        for r in rows
    ]
    return "\n".join([line, rule, *body])


def _fmt_ci(st: Mapping[str, float]) -> str:
    mean, half = st["mean"], st["ci95"]
    if math.isnan(mean):
        return "nan"
    if math.isnan(half):
        return f"{mean:.4g}"
    if half <= 1e-9 * abs(mean):  # identical values up to rounding in the sum
        half = 0.0
    return f"{mean:.4g} ± {half:.2g}"
