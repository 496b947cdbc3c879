"""Fit ``perf_coefficients.json`` from the raw public profiles (Vidur, Splitwise). See docs/perf_model.md.

Sources (under the data dir, default $SERVEGYM_DATA_DIR or ~/.cache/servegym/data):
  vidur_profiling/profiling/compute/<gpu>/<org>/<model>/mlp.csv   per-layer linear-op times (ms) vs tokens, TP
  vidur_profiling/profiling/network/<gpu>_dgx/all_reduce.csv       NCCL all-reduce times (ms) vs bytes
  vidur_profiling/legacy_a100_codellama34b_tp2/attention.csv        attention kernel times (A100, TP2)
  vidur_profiling/legacy_a100_codellama34b_tp2/cpu_overheads.csv    Vidur per-iteration CPU overheads
  splitwise_sim/perf_model.csv                                      end-to-end Llama2-70B timings (training split)
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from servegym.envs.perf import validate
from servegym.envs.perf.model import kv_cache_blocks
from servegym.envs.perf.profiles import read_csv
from servegym.envs.perf.specs import GPUS, MODELS, GpuSpec, ModelSpec

FIT_VERSION = "1.0"
MS = 1e-3

# The linear-op table keeps the profiled token counts needed to stay within KNOT_TOL relative error of the full
# (smoothed) profile under linear interpolation: the GEMM wave-quantisation steps after multiples of 128 tokens
# survive, flat stretches collapse. This keeps the JSON small (~50-80 knots per entry instead of 259-456).
KNOT_TOL = 0.02

# Per-layer operators in Vidur's mlp.csv (vidur/profiling/mlp/mlp_impl.py). Vidur times only the second of the
# two residual adds of a Llama block, so "add" counts twice. The attention kernel and all-reduces are separate.
LAYER_OPS = {"input_layernorm": 1, "attn_pre_proj": 1, "attn_rope": 1, "attn_post_proj": 1,
             "post_attention_layernorm": 1, "mlp_up_proj": 1, "mlp_act": 1, "mlp_down_proj": 1, "add": 2}  # fmt: skip

# (model, gpu) pairs whose linear ops are derived, not measured: Vidur profiled Llama-3-8B on A100 only.
# The derivation multiplies each A100 Llama-3-8B operator time by that operator's <gpu>/A100 time ratio
# measured on Llama-2-7B (same hidden size 4096, same layer structure) at the same token count.
DERIVED = {("llama-3-8b", "h100-80gb"): "llama-2-7b", ("llama-3-8b", "a40"): "llama-2-7b"}
# Held-out checks of that derivation: models measured on both GPUs, predicted from the Llama-2-7B ratios.
DERIVATION_CHECKS = (("llama-2-70b", "h100-80gb"), ("codellama-34b", "h100-80gb"), ("llama-2-70b", "a40"))
TPS = (1, 2, 4, 8)


def default_data_dir() -> Path:
    env = os.environ.get("SERVEGYM_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "servegym" / "data"


def sig(x: float, digits: int = 5) -> float:
    """Round to significant digits: the shipped JSON carries 1e-5 relative precision, far below the 2% knot
    tolerance and the profiles' run-to-run noise."""
    return float(f"{float(x):.{digits - 1}e}")


def column(rows: list[dict[str, str]], name: str, path: Path) -> np.ndarray:
    if name not in rows[0]:
        raise KeyError(f"column {name!r} missing in {path}")
    return np.array([float(r[name]) if r[name] != "" else np.nan for r in rows])


def pav(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit (pool adjacent violators): removes measurement noise that would make
    a larger batch look cheaper, without biasing the level the way a running max would."""
    vals: list[float] = []
    counts: list[int] = []
    for v in np.asarray(y, dtype=float):
        vals.append(v)
        counts.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            n = counts[-2] + counts[-1]
            vals[-2] = (vals[-2] * counts[-2] + vals[-1] * counts[-1]) / n
            counts[-2] = n
            vals.pop()
            counts.pop()
    return np.repeat(vals, counts)


def nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares on relative error (rows weighted 1/y) with non-negative coefficients (active set)."""
    return nnls_relative_target(x, y, y)


# ----------------------------------------------------------------------------------------------- profiles


@dataclass
class MlpProfile:
    path: Path
    tokens: dict[int, np.ndarray]  # tp -> sorted token counts
    ops: dict[int, dict[str, np.ndarray]]  # tp -> op -> median ms (duplicate token counts averaged)


def mlp_path(data_dir: Path, gpu: GpuSpec, model: ModelSpec) -> Path:
    return data_dir / "vidur_profiling/profiling/compute" / gpu.compute_dir / model.hf_id / "mlp.csv"


def read_mlp(data_dir: Path, gpu: GpuSpec, model: ModelSpec) -> MlpProfile:
    path = mlp_path(data_dir, gpu, model)
    rows = read_csv(path)
    # Guard against a wrong file: the profiled geometry must be the spec's (vocab is padded in the profile).
    for col, want in (("n_head", model.num_heads), ("n_kv_head", model.num_kv_heads), ("n_embd", model.hidden),
                      ("n_expanded_embd", model.intermediate)):  # fmt: skip
        got = set(column(rows, col, path).astype(int))
        if got != {want}:
            raise ValueError(f"{path}: {col}={sorted(got)} but the {model.name} spec says {want}")
    tp_col = column(rows, "num_tensor_parallel_workers", path).astype(int)
    tok_col = column(rows, "num_tokens", path).astype(int)
    names = ["emb", *LAYER_OPS]
    cols = {op: column(rows, f"time_stats.{op}.median", path) for op in names}
    prof = MlpProfile(path, {}, {})
    for tp in sorted(set(tp_col)):
        sel = tp_col == tp
        toks = np.unique(tok_col[sel])
        prof.tokens[int(tp)] = toks
        prof.ops[int(tp)] = {}
        for op in names:
            v = cols[op][sel]
            t = tok_col[sel]
            prof.ops[int(tp)][op] = np.array([v[t == k].mean() for k in toks])
    return prof


def allreduce_path(data_dir: Path, gpu: GpuSpec) -> Path:
    return data_dir / "vidur_profiling/profiling/network" / str(gpu.network_dir) / "all_reduce.csv"


@dataclass
class Collective:
    sizes: np.ndarray  # bytes
    ms: np.ndarray  # PAV-smoothed median ms
    tail_slope: float  # ms per byte, least squares over sizes >= 16 MiB (for extrapolation)
    tail_x0: float
    tail_y0: float

    def __call__(self, size: np.ndarray) -> np.ndarray:
        size = np.asarray(size, dtype=float)
        inside = np.interp(size, self.sizes, self.ms)
        beyond = self.tail_y0 + self.tail_slope * (size - self.tail_x0)
        return np.where(size > self.sizes[-1], np.maximum(beyond, self.ms[-1]), inside)


def read_allreduce(data_dir: Path, gpu: GpuSpec, tp: int) -> Collective:
    path = allreduce_path(data_dir, gpu)
    rows = read_csv(path)
    # One NVLink node: only rows with devices_per_node == num_workers (others span nodes).
    sel = [r for r in rows if int(r["num_workers"]) == tp and int(r["devices_per_node"]) == tp]
    if not sel:
        raise KeyError(f"{path}: no single-node all_reduce rows with num_workers == devices_per_node == {tp}")
    size = np.array([float(r["size"]) for r in sel])
    ms = np.array([float(r["time_stats.all_reduce.median"]) for r in sel])
    order = np.argsort(size, kind="stable")
    size, ms = size[order], ms[order]
    sizes = np.unique(size)
    med = np.array([ms[size == s].mean() for s in sizes])
    smooth = pav(med)
    tail = sizes >= 16 * 2**20
    slope, icpt = np.polyfit(sizes[tail], smooth[tail], 1)
    x0 = float(sizes[-1])
    return Collective(sizes, smooth, max(float(slope), 0.0), x0, float(icpt + slope * x0))


# --------------------------------------------------------------------------------------------- linear ops


def _layer_ms(ops: dict[str, np.ndarray]) -> np.ndarray:
    return sum(ops[op] * n for op, n in LAYER_OPS.items())


def derived_ops(base_a100: MlpProfile, ref_gpu: MlpProfile, ref_a100: MlpProfile, tp: int) -> dict:
    """Target-GPU operator times = A100 times of the model x per-operator <gpu>/A100 ratio of the reference
    model at the same token count (ratio held at its last value beyond the reference profile's range)."""
    toks = base_a100.tokens[tp]
    out = {}
    for op, v in base_a100.ops[tp].items():
        if not np.array_equal(ref_gpu.tokens[tp], ref_a100.tokens[tp]):
            raise ValueError(f"{ref_gpu.path} and {ref_a100.path} profile different token counts")
        ratio = ref_gpu.ops[tp][op] / ref_a100.ops[tp][op]
        out[op] = v * np.interp(toks, ref_a100.tokens[tp], ratio)
    return out


def linear_table_ms(
    model: ModelSpec, tp: int, toks: np.ndarray, ops: dict, ar: Collective | None
) -> np.ndarray:
    """All layers' linear ops + 2 all-reduces per layer (after o_proj and down_proj) + embedding (with its
    own all-reduce under TP), in ms, made non-decreasing in tokens."""
    total = model.num_layers * _layer_ms(ops) + ops["emb"]
    if tp > 1:
        if ar is None:
            raise ValueError(f"tp={tp} needs an all-reduce profile")
        bytes_ = model.hidden * toks * model.bytes_per_param
        total = total + (2 * model.num_layers + 1) * ar(bytes_)
    return pav(total)


def simplify_knots(x: np.ndarray, y: np.ndarray, tol: float = KNOT_TOL) -> np.ndarray:
    """Indices of a subset of points (ends included) whose linear interpolation is within ``tol`` relative
    error of every point (Douglas-Peucker on relative error)."""
    keep = {0, len(x) - 1}
    stack = [(0, len(x) - 1)]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        inner = np.interp(x[i + 1 : j], [x[i], x[j]], [y[i], y[j]])
        err = np.abs(inner - y[i + 1 : j]) / y[i + 1 : j]
        k = int(np.argmax(err))
        if err[k] > tol:
            keep.add(i + 1 + k)
            stack += [(i, i + 1 + k), (i + 1 + k, j)]
    return np.array(sorted(keep))


def tail_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Per-token slope for extrapolation past the profile: least squares over the upper half of the tokens,
    where the GEMMs are compute-bound and time is linear in tokens."""
    sel = x >= x[-1] / 2
    return max(float(np.polyfit(x[sel], y[sel], 1)[0]), 0.0)


def lm_head_s(model: ModelSpec, toks: np.ndarray, up_proj_ms: np.ndarray) -> list[float]:
    """Output layer as a GEMM like mlp_up_proj (hidden -> 2*I/tp columns) scaled to vocab/tp columns: the
    profiled up-projection's time per output column, fixed part at 1 row, slope from 1 to 512 rows."""
    r = model.vocab / (2 * model.intermediate)
    up = pav(up_proj_ms)
    t1 = float(np.interp(1, toks, up))
    t512 = float(np.interp(512, toks, up))
    return [sig(r * t1 * MS), sig(r * max(t512 - t1, 0.0) / 511 * MS)]


def fit_entry(data_dir: Path, model: ModelSpec, gpu: GpuSpec, tp: int, cache: dict) -> dict | None:
    def prof(g: GpuSpec, m: ModelSpec) -> MlpProfile:
        key = (g.name, m.name)
        if key not in cache:
            cache[key] = read_mlp(data_dir, g, m)
        return cache[key]

    if tp > 1 and gpu.network_dir is None:
        return None
    ref = DERIVED.get((model.name, gpu.name))
    a100 = GPUS["a100-80gb"]
    if ref is None:
        p = prof(gpu, model)
        if tp not in p.ops:
            return None
        toks, ops = p.tokens[tp], p.ops[tp]
        sources = [str(p.path.relative_to(data_dir))]
    else:
        base, rg, ra = prof(a100, model), prof(gpu, MODELS[ref]), prof(a100, MODELS[ref])
        toks = base.tokens[tp]
        ops = derived_ops(base, rg, ra, tp)
        sources = [str(x.path.relative_to(data_dir)) for x in (base, rg, ra)]
    ar = read_allreduce(data_dir, gpu, tp) if tp > 1 else None
    if ar is not None:
        sources.append(
            f"{allreduce_path(data_dir, gpu).relative_to(data_dir)} (num_workers=devices_per_node={tp})"
        )
    full = linear_table_ms(model, tp, toks, ops, ar)
    idx = simplify_knots(toks.astype(float), full)
    rel = np.abs(np.interp(toks, toks[idx], full[idx]) - full) / full
    entry = {
        "model": model.name,
        "gpu": gpu.name,
        "tp": tp,
        "derived": ref is not None,
        "sources": sources,
        "rows": f"num_tensor_parallel_workers == {tp}, time_stats.*.median, {len(toks)} token counts",
        "knot_interp_max_rel_err": round(float(rel.max()), 4),
        "tokens": [int(t) for t in toks[idx]],
        "linear_s": [sig(v * MS) for v in full[idx]],
        "tail_slope_s_per_token": sig(tail_slope(toks.astype(float), full) * MS),
        "lm_head_s": lm_head_s(model, toks, ops["mlp_up_proj"]),
    }
    if ref is not None:
        entry["derivation"] = (
            f"per-operator {gpu.name}/a100-80gb time ratio of {ref} (same token count) applied to the "
            f"a100-80gb {model.name} profile"
        )
    return entry


def derivation_check(data_dir: Path, model: ModelSpec, gpu: GpuSpec, cache: dict) -> dict:
    """Held-out check of the DERIVED method on a model measured on both GPUs: relative error of the predicted
    whole-model linear-op time (all profiled token counts) against the measured one, per TP."""
    ref, a100 = MODELS["llama-2-7b"], GPUS["a100-80gb"]
    for g, m in ((a100, model), (gpu, model), (a100, ref), (gpu, ref)):
        if (g.name, m.name) not in cache:
            cache[(g.name, m.name)] = read_mlp(data_dir, g, m)
    meas = cache[(gpu.name, model.name)]
    out: dict = {"model": model.name, "gpu": gpu.name, "reference": ref.name}
    for tp in TPS:
        pred = derived_ops(
            cache[(a100.name, model.name)], cache[(gpu.name, ref.name)], cache[(a100.name, ref.name)], tp
        )
        mt = pav(model.num_layers * _layer_ms(meas.ops[tp]) + meas.ops[tp]["emb"])
        pt = pav(model.num_layers * _layer_ms(pred) + pred["emb"])
        e = pt / mt - 1
        out[f"tp{tp}"] = {
            "mean_abs_rel_err": round(float(np.abs(e).mean()), 4),
            "bias": round(float(e.mean()), 4),
        }
    return out


# ---------------------------------------------------------------------------------------------- attention

LEGACY = "vidur_profiling/legacy_a100_codellama34b_tp2"


def fit_attention(data_dir: Path) -> dict:
    """Per-layer attention kernel costs from the legacy A100 profile (CodeLlama-34B geometry at TP2: 32 q heads
    and 4 KV heads of dim 128 per GPU), expressed as roofline efficiencies so they transfer to other
    geometries and GPUs.
      prefill: t = a + pairs * 4*d*qh / (peak * eff) + tokens * k * d*qh / peak   (k: FLOP-equivalents per query
               token and q-dim, i.e. the small-chunk inefficiency of the kernel)
      decode:  t = a + ctx_tokens * 2*kvh*d*2 bytes / (bw * eff)
    """
    path = data_dir / LEGACY / "attention.csv"
    rows = read_csv(path)
    a100 = GPUS["a100-80gb"]
    tp = int(column(rows, "num_tensor_parallel_workers", path)[0])
    n_q = int(column(rows, "n_q_head", path)[0])
    hd = int(column(rows, "n_embd", path)[0]) // n_q
    qh, kvh = n_q // tp, int(column(rows, "n_kv_head", path)[0]) // tp
    is_pf = np.array([r["is_prefill"] == "True" for r in rows])
    chunk = column(rows, "prefill_chunk_size", path)
    kv = column(rows, "kv_cache_size", path)
    batch = column(rows, "batch_size", path)

    c, p = chunk[is_pf], kv[is_pf]
    t = column(rows, "time_stats.attn_prefill.median", path)[is_pf] * MS
    pairs = c * (p + (c + 1) / 2)
    xp = np.c_[np.ones_like(c), pairs, c]
    a_p, b_p, e_p = nnls_relative(xp, t)
    mape_p = float(np.mean(np.abs(xp @ [a_p, b_p, e_p] - t) / t))

    ctx = (batch * kv)[~is_pf]
    td = column(rows, "time_stats.attn_decode.median", path)[~is_pf] * MS
    xd = np.c_[np.ones_like(ctx), ctx]
    a_d, c_d = nnls_relative(xd, td)
    mape_d = float(np.mean(np.abs(xd @ [a_d, c_d] - td) / td))
    return {
        "source": f"{LEGACY}/attention.csv",
        "rows": f"is_prefill=True ({int(is_pf.sum())} rows, batch 1) and is_prefill=False ({int((~is_pf).sum())} "
        "rows); time_stats.attn_prefill/attn_decode.median",
        "prefill_fixed_s": round(float(a_p), 9),
        "prefill_flop_efficiency": round(float(4 * hd * qh / (b_p * a100.peak_flops)), 6),
        "prefill_token_flop_equiv_per_qdim": round(float(e_p * a100.peak_flops / (hd * qh)), 3),
        "prefill_fit_mape": round(mape_p, 4),
        "decode_fixed_s": round(float(a_d), 9),
        "decode_bw_efficiency": round(float(2 * kvh * hd * 2 / (c_d * a100.mem_bw)), 6),
        "decode_fit_mape": round(mape_d, 4),
    }


# ---------------------------------------------------------------------------------------------- overheads

FLOOR_GRID_MS = np.arange(0.0, 80.0, 0.05)  # candidate launch floors (whole 80-layer model), ms


def fit_vidur_overhead(data_dir: Path) -> dict:
    """Vidur's per-iteration CPU overheads (A100, CodeLlama-34B TP2, batch 8-128): schedule + sampler +
    prepare_inputs + process_model_outputs (medians) + ray_comm_time (mean; no median column), linear in batch."""
    path = data_dir / LEGACY / "cpu_overheads.csv"
    rows = read_csv(path)
    cols = ["schedule_median", "sampler_e2e_median", "prepare_inputs_e2e_median", "process_model_outputs_median",
            "ray_comm_time_mean"]  # fmt: skip
    total = sum(column(rows, c, path) for c in cols) * MS
    batch = column(rows, "batch_size", path)
    slope, icpt = np.polyfit(batch, total, 1)
    host = {"floor_s_per_layer": 0.0, "fixed_s": round(float(icpt), 9), "per_decode_seq_s": round(float(slope), 9),
            "prefill_s": 0.0}  # fmt: skip
    return {
        "source": f"{LEGACY}/cpu_overheads.csv",
        "rows": f"all {len(rows)} rows (batch 8-128, TP2); columns {', '.join(cols)}",
        "method": "least-squares line in batch size of the summed per-iteration CPU overheads",
        "by_gpu": {"a100-80gb": host},
        "fallback_gpu": "a100-80gb",
    }


def _cpu_line(rows: list[dict[str, str]], path: Path, cols: list[str]) -> tuple[float, float]:
    total = sum(column(rows, c, path) for c in cols) * MS
    slope, icpt = np.polyfit(column(rows, "batch_size", path), total, 1)
    return round(float(icpt), 9), round(float(slope), 9)


def fit_vllm_overhead(data_dir: Path, splitwise: dict) -> dict:
    """Host-side costs of a vLLM-family engine (engine profiles "vllm" and "vllm-eager", envs/perf/engines.py).

    CPU per iteration and per sequence: Vidur's measured schedule + sampler + prepare_inputs +
    process_model_outputs (medians; CodeLlama-34B, TP2, batch 8-128), a line in batch size. Not ray_comm_time:
    Vidur's engine broadcasts each iteration's inputs to its TP workers through Ray, vLLM's multiprocessing
    executor through a shared-memory queue. These are per iteration and per sequence, not per layer, so they
    carry to any model size. Eager launch floor per layer: Vidur's measured model execution
    (model_execution_e2e median) of CodeLlama-34B (48 layers) is flat from batch 8 to 40 (within 5%: a host
    launch floor above the GPU work), its median there divided by its layers; Splitwise's Llama2-70B fit (80 layers) is the second model size that checks it."""
    path = data_dir / LEGACY / "cpu_overheads.csv"
    rows = read_csv(path)
    cpu = [
        "schedule_median",
        "sampler_e2e_median",
        "prepare_inputs_e2e_median",
        "process_model_outputs_median",
    ]
    fixed, per_seq = _cpu_line(rows, path, cpu)
    layers = MODELS["codellama-34b"].num_layers
    exec_ms = column(rows, "model_execution_e2e_median", path)
    flat = exec_ms <= 1.05 * exec_ms.min()  # batch 8-40: the GPU work grows, the execution time does not
    floor_layer = round(float(np.median(exec_ms[flat])) * MS / layers, 9)
    sw = splitwise["by_gpu"]["a100-80gb"]["floor_s_per_layer"]
    host = {"fixed_s": fixed, "per_decode_seq_s": per_seq, "eager_floor_s_per_layer": floor_layer}
    return {
        "source": f"{LEGACY}/cpu_overheads.csv; eager floor checked against overhead.splitwise",
        "rows": f"all {len(rows)} rows (CodeLlama-34B, 48 layers, batch 8-128, TP2)",
        "method": "least-squares line in batch size of the CPU costs (no Ray broadcast); eager launch floor = "
        "median model_execution_e2e over the flat rows (within 5% of the minimum) / layers",
        "eager_floor_check": {
            "codellama-34b_48_layers_s_per_layer": floor_layer,
            "llama2-70b_80_layers_s_per_layer_splitwise": sw,
            "flat_rows_batch": [int(b) for b in column(rows, "batch_size", path)[flat]],
        },
        "by_gpu": {"a100-80gb": host},
        "fallback_gpu": "a100-80gb",
    }


def fit_splitwise_overhead(data_dir: Path, table: dict) -> dict:
    """Framework overheads of Splitwise's serving engine, fitted on the training measurements of
    validate.is_training (Llama2-70B, 80 layers) per hardware:
        measured = max(gpu_model, floor) + fixed + per_decode_seq * batch + prefill * [prompt]
    floor by grid search, the other three by non-negative least squares on relative error."""
    rows = validate.load_rows(data_dir)
    gpu_only = validate.coefficient_map(table, "none")
    gp, gt = validate.predict_ms(rows, gpu_only)
    layers = MODELS["llama-2-70b"].num_layers
    by_gpu = {}
    for hw in validate.HARDWARE:
        y, g, x = [], [], []
        for r, p_ms, t_ms in zip(rows, gp, gt, strict=True):
            if r.hardware != hw:
                continue
            if validate.is_training(r, "prompt"):
                y.append(r.prompt_ms), g.append(p_ms), x.append([1.0, 0.0, 1.0])
            if validate.is_training(r, "token"):
                y.append(r.token_ms), g.append(t_ms), x.append([1.0, float(r.batch), 0.0])
        ya, ga, xa = np.array(y), np.array(g), np.array(x)
        best = None
        for floor in FLOOR_GRID_MS:
            base = np.maximum(ga, floor)
            coef = nnls_relative_target(xa, ya - base, ya)
            err = float(np.mean(np.abs(base + xa @ coef - ya) / ya))
            if best is None or err < best[0] - 1e-12:
                best = (err, floor, coef)
        err, floor, coef = best
        by_gpu[hw] = {
            "floor_s_per_layer": round(float(floor) * MS / layers, 9),
            "fixed_s": round(float(coef[0]) * MS, 9),
            "per_decode_seq_s": round(float(coef[1]) * MS, 9),
            "prefill_s": round(float(coef[2]) * MS, 9),
            "train_n": len(ya),
            "train_mape": round(err * 100, 2),
        }
    return {
        "source": validate.SPLITWISE_CSV,
        "rows": "training measurements only (envs/perf/validate.py is_training): prompt_time of batch-1 128-token "
        "prompts; token_time of batch 1/8/32 with prompt 128/512, token_size 128; all TPs; llama2-70b",
        "method": "grid search over the launch floor, NNLS (relative error) for the rest; floor scaled per layer",
        "by_gpu": by_gpu,
        "fallback_gpu": "a100-80gb",
    }


def nnls_relative_target(x: np.ndarray, resid: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares of resid ~ x @ c with rows weighted by 1/y (relative error of y)."""
    w = 1.0 / y
    active = list(range(x.shape[1]))
    while active:
        sol = np.linalg.lstsq(x[:, active] * w[:, None], resid * w, rcond=None)[0]
        if (sol >= 0).all():
            coef = np.zeros(x.shape[1])
            coef[active] = sol
            return coef
        active.pop(int(np.argmin(sol)))
    return np.zeros(x.shape[1])


# -------------------------------------------------------------------------------------------------- driver

# CodeLlama-34B has profiles too but is not shipped (its spec is kept: the attention profile uses its geometry).
MODELS_FITTED = ("llama-2-7b", "llama-3-8b", "llama-2-70b")


def fits_in_memory(model: str, gpu: str, tp: int) -> bool:
    try:
        kv_cache_blocks(model, gpu, tp)
    except ValueError:
        return False
    return True


def fit_all(data_dir: Path) -> dict:
    """The full coefficient table (what perf_coefficients.json holds)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data dir {data_dir} does not exist (set --data-dir or SERVEGYM_DATA_DIR)")
    cache: dict = {}
    entries = {}
    for m in MODELS_FITTED:
        for g in GPUS:
            for tp in TPS:
                if not fits_in_memory(m, g, tp):  # e.g. Llama-2-70B on one GPU: no use shipping it
                    continue
                e = fit_entry(data_dir, MODELS[m], GPUS[g], tp, cache)
                if e is not None:
                    entries[f"{m}|{g}|tp{tp}"] = e
    table = {
        "schema": 1,
        "fit_version": FIT_VERSION,
        "generated": datetime.date.today().isoformat(),
        "generator": "scripts/fit_perf_model.py (envs/perf/fit.py)",
        "units": "seconds; see envs/perf/model.py for how each field enters iteration_time_s",
        "knot_tolerance": KNOT_TOL,
        "entries": entries,
        "attention": fit_attention(data_dir),
        "derivation_checks": [
            derivation_check(data_dir, MODELS[m], GPUS[g], cache) for m, g in DERIVATION_CHECKS
        ],
        "overhead": {"vidur": fit_vidur_overhead(data_dir)},
    }
    table["overhead"]["splitwise"] = fit_splitwise_overhead(data_dir, table)
    table["overhead"]["vllm"] = fit_vllm_overhead(data_dir, table["overhead"]["splitwise"])
    table["validation"] = validate.run(data_dir, table)
    return table


def write_json(table: dict, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(table, indent=1)
    # Lists of scalars on one line: keeps the file small and diffable per entry.
    text = re.sub(r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    out.write_text(text + "\n")
