"""Validation of the timing on independent public measurements (envs/perf/validation/*.csv).

Each CSV holds published figures of one source (provenance and licence in its ``#`` header lines), one row per
measured cell: ``source, model, gpu, tp, batch, prompt_tokens, output_tokens, metric, measured_ms``. None of
them is used to fit anything. A cell is predicted by replaying the measured request shape through the
iteration model, the way a static batch runs on an engine with continuous batching:

- ``ttft``: one prefill iteration of ``batch`` prompts of ``prompt_tokens`` (an unloaded server);
- ``decode``: the mean of the ``output_tokens - 1`` decode iterations of ``batch`` sequences whose contexts
  grow from ``prompt_tokens`` (inter-token latency);
- ``e2e``: the prefill iteration plus those decode iterations (the first token comes out of the prefill).

Goals (issue 13): decode <= 10% MAPE, prefill (TTFT) <= 15%, every cell within 25%. An end-to-end cell mixes
both phases; it is held to the decode goal, the stricter one, because most of its iterations are decodes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from servegym.envs.perf import validate
from servegym.envs.perf.model import iteration_time_py, load_perf_coefficients, load_table

VALIDATION_DIR = Path(__file__).with_name("validation")
COLUMNS = ("source", "model", "gpu", "tp", "batch", "prompt_tokens", "output_tokens", "metric", "measured_ms")
METRICS = ("ttft", "decode", "e2e")
GOAL_MAPE = {"ttft": 15.0, "prefill": 15.0, "decode": 10.0, "e2e": 10.0}
GOAL_WORST = 25.0


@dataclass(frozen=True)
class Cell:
    source: str
    model: str
    gpu: str
    tp: int
    batch: int
    prompt_tokens: int
    output_tokens: int
    metric: str
    measured_ms: float


def load_cells(folder: Path = VALIDATION_DIR) -> list[Cell]:
    """Every cell of every CSV in ``folder``; a malformed row raises ValueError naming file, line and column."""
    cells = []
    for path in sorted(Path(folder).glob("*.csv")):
        lines = [(i, ln) for i, ln in enumerate(path.read_text().splitlines(), 1) if not ln.startswith("#")]
        reader = csv.DictReader([ln for _, ln in lines])
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: columns {reader.fieldnames}, expected {list(COLUMNS)}")
        for (lineno, _), row in zip(lines[1:], reader, strict=True):
            try:
                cell = Cell(
                    row["source"],
                    row["model"],
                    row["gpu"],
                    int(row["tp"]),
                    int(row["batch"]),
                    int(row["prompt_tokens"]),
                    int(row["output_tokens"]),
                    row["metric"],
                    float(row["measured_ms"]),
                )
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
            if cell.metric not in METRICS:
                raise ValueError(f"{path}:{lineno}: metric {cell.metric!r} not one of {METRICS}")
            if (
                min(cell.tp, cell.batch, cell.prompt_tokens, cell.output_tokens) < 1
                or not cell.measured_ms > 0
            ):
                raise ValueError(f"{path}:{lineno}: counts must be >= 1 and measured_ms > 0")
            cells.append(cell)
    return cells


def predict_ms(cell: Cell, engine: str = "vllm") -> float:
    coef = load_perf_coefficients(cell.model, cell.gpu, cell.tp, engine)
    b, p = cell.batch, cell.prompt_tokens
    prefill = iteration_time_py(coef, b * p, b * p * (p + 1) / 2.0, 0, 0)
    steps = [iteration_time_py(coef, 0, 0, b, b * (p + k)) for k in range(1, cell.output_tokens)]
    if cell.metric == "ttft":
        return 1e3 * prefill
    if cell.metric == "decode":
        return 1e3 * float(np.mean(steps)) if steps else float("nan")
    return 1e3 * (prefill + sum(steps))


def summary_row(source: str, model: str, gpu: str, metric: str, engine: str, err_pct, labels) -> dict:
    """MAPE, signed mean error and worst cell of one group of relative errors (in %)."""
    err = np.asarray(err_pct, dtype=float)
    k = int(np.argmax(np.abs(err)))
    mape = float(np.mean(np.abs(err)))
    return {
        "source": source,
        "model": model,
        "gpu": gpu,
        "metric": metric,
        "engine": engine,
        "n": int(err.size),
        "mape": round(mape, 1),
        "bias": round(float(np.mean(err)), 1),
        "worst": round(float(err[k]), 1),
        "worst_cell": labels[k],
        "goal": GOAL_MAPE[metric],
        "met": bool(mape <= GOAL_MAPE[metric] and abs(err[k]) <= GOAL_WORST),
    }


def summarize(cells: list[Cell], engine: str = "vllm") -> list[dict]:
    """One row per (source, model, gpu, metric): cells, MAPE, signed mean error, worst cell, goals met."""
    groups: dict[tuple[str, str, str, str], list[tuple[Cell, float]]] = {}
    for c in cells:
        groups.setdefault((c.source, c.model, c.gpu, c.metric), []).append((c, predict_ms(c, engine)))
    return [
        summary_row(
            *key,
            engine,
            [(p / c.measured_ms - 1.0) * 100 for c, p in items],
            [f"tp{c.tp} b{c.batch}" for c, _ in items],
        )
        for key, items in groups.items()
    ]


def splitwise_summary(data_dir: Path, engine: str = "splitwise") -> list[dict]:
    """Splitwise's Llama2-70B measurements (the fit source of the "splitwise" profile), held-out rows only."""
    rows = validate.load_rows(data_dir)
    pp, pt = validate.predict_ms(rows, validate.coefficient_map(load_table(), engine))
    out = []
    for hw in validate.HARDWARE:
        for kind, split, pred, meas in (
            ("prefill", "prompt", pp, "prompt_ms"),
            ("decode", "token", pt, "token_ms"),
        ):
            sel = [i for i, r in enumerate(rows) if r.hardware == hw and not validate.is_training(r, split)]
            err = [(pred[i] / getattr(rows[i], meas) - 1.0) * 100 for i in sel]
            labels = [f"tp{rows[i].tp} b{rows[i].batch} p{rows[i].prompt}" for i in sel]
            out.append(
                summary_row("splitwise (fit source, held-out)", "llama-2-70b", hw, kind, engine, err, labels)
            )
    return out


def format_table(rows: list[dict]) -> str:
    head = (
        "| source | model | GPU | engine | metric | cells | MAPE % | bias % | worst % (cell) | goal | met |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['model']} | {r['gpu']} | {r['engine']} | {r['metric']} | {r['n']} | "
            f"{r['mape']:.1f} | {r['bias']:+.1f} | {r['worst']:+.1f} ({r['worst_cell']}) | <= {r['goal']:.0f}% "
            f"MAPE, cells <= {GOAL_WORST:.0f}% | {'yes' if r['met'] else 'no'} |"
        )
    return "\n".join(lines)
