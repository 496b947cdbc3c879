"""Runtime performance model: seconds per continuous-batching iteration on one replica of ``tp`` GPUs.

``load_perf_coefficients`` turns the shipped ``perf_coefficients.json`` (fitted by ``envs/perf/fit.py`` from
the Vidur and Splitwise profiles, see docs/perf_model.md) into a flat float64 vector, and the njit function
``iteration_time_s`` evaluates it. Calling ``iteration_time_s`` from plain Python works too (numba dispatches).

Coefficient vector layout (LAYOUT_VERSION 1; all times in seconds, all layers of the model included):
    [0]  layout version (1.0)
    [1]  K, number of token knots of the linear-op table
    [2]  prefill attention: fixed cost when prefill_tokens > 0
    [3]  prefill attention: per causal query-key pair
    [4]  prefill attention: per prefill (query) token
    [5]  decode attention: fixed cost when decode_seqs > 0
    [6]  decode attention: per KV-context token read
    [7]  output (vocabulary) layer: fixed cost when any logits are computed
    [8]  output layer: per sequence that gets logits (decode seqs + 1 if there is a prefill)
    [9]  launch floor: the GPU part of an iteration takes at least this long (host-bound kernel launches)
    [10] framework overhead per iteration (not overlapped with the GPU)
    [11] framework overhead per decode sequence
    [12] framework overhead of an iteration that contains prefill tokens
    [13..15] reserved (0)
    [16 : 16+K]     token knots T_k (tokens in the iteration = prefill_tokens + decode_seqs), increasing
    [16+K : 16+2K]  time of all linear ops + tensor-parallel all-reduces + embedding at T_k, non-decreasing;
                    linear interpolation inside. The last knot sits at twice the profiled range and carries
                    the fitted tail slope; beyond it the last segment's slope continues.
GPU part = table(T) + attention + output layer; iteration = max(GPU part, floor) + framework overheads.
Every term is non-decreasing in every argument, so the iteration time is too.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numba
import numpy as np

from servegym.envs.perf.engines import (
    DEFAULT_ENGINE,
    ENGINES,
    INTERCONNECTS,
    engine_overheads,
    pcie_extra_allreduce_s,
)
from servegym.envs.perf.specs import GPUS, MODELS, PROFILE_ALIASES, get_gpu, get_model, kv_heads_per_gpu

LAYOUT_VERSION = 1
HEADER = 16
COEF_JSON = Path(__file__).with_name("perf_coefficients.json")
OVERHEAD_PROFILES = ENGINES  # the engine profiles (envs/perf/engines.py); "overhead" is their older name


def entry_key(model: str, gpu: str, tp: int) -> str:
    return f"{model}|{gpu}|tp{tp}"


@lru_cache(maxsize=4)
def _load_json(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"performance coefficients not found: {p} (run scripts/fit_perf_model.py)")
    with p.open() as f:
        return json.load(f)


def load_table(path: str | Path | None = None) -> dict:
    """The parsed coefficient JSON (cached)."""
    return _load_json(str(path or COEF_JSON))


def supported(table: dict | None = None) -> list[tuple[str, str, int]]:
    """(model, gpu, tp) combinations that have coefficients."""
    t = table if table is not None else load_table()
    fitted = {(e["model"], e["gpu"], int(e["tp"])) for e in t["entries"].values()}
    aliased = {(a, g, tp) for a, base in PROFILE_ALIASES.items() for m, g, tp in fitted if m == base}
    return sorted(fitted | aliased)


def coefficients_from_table(
    table: dict,
    model: str,
    gpu: str,
    tp: int,
    overhead: str = DEFAULT_ENGINE,
    interconnect: str = "nvlink",
) -> np.ndarray:
    """Assemble the coefficient vector for one (model, gpu, tp) from a parsed coefficient table.

    ``overhead`` is the engine profile (envs/perf/engines.py); ``interconnect`` "nvlink" keeps the measured
    NVLink all-reduces, "pcie" replaces them by the PCIe ring model of engines.pcie_allreduce_s."""
    m, g = get_model(model), get_gpu(gpu)
    base = get_model(PROFILE_ALIASES.get(model, model))  # same decoder layers: reuse the fitted table
    key = entry_key(base.name, gpu, tp)
    if key not in table["entries"]:
        raise KeyError(
            f"no coefficients for model={model!r} gpu={gpu!r} tp={tp}; supported: "
            + ", ".join(f"{a}/{b}/tp{c}" for a, b, c in supported(table))
        )
    if overhead not in OVERHEAD_PROFILES:
        raise ValueError(f"unknown engine (overhead profile) {overhead!r}; known: {OVERHEAD_PROFILES}")
    if interconnect not in INTERCONNECTS:
        raise ValueError(f"unknown interconnect {interconnect!r}; known: {INTERCONNECTS}")
    e = table["entries"][key]
    # One extra knot at twice the profiled range carries the fitted tail slope (see fit.tail_slope).
    t_last, v_last = float(e["tokens"][-1]), float(e["linear_s"][-1])
    knots = np.array([*e["tokens"], 2.0 * t_last], dtype=np.float64)
    values = np.array([*e["linear_s"], v_last + e["tail_slope_s_per_token"] * t_last], dtype=np.float64)
    if interconnect == "pcie" and tp > 1:  # the all-reduces (2 per layer + embedding) cross PCIe, not NVLink
        n_ar = 2 * base.num_layers + 1
        values = values + n_ar * pcie_extra_allreduce_s(gpu, tp, base.hidden * knots * base.bytes_per_param)
    k = len(knots)
    c = np.zeros(HEADER + 2 * k)
    c[0], c[1] = LAYOUT_VERSION, k

    # Attention: per-layer kernel costs fitted on the A100 legacy profile, rescaled to this geometry/GPU by
    # the roofline (prefill compute-bound on the q heads of one GPU, decode bound by KV bytes read).
    a = table["attention"]
    layers = m.num_layers
    qh = m.num_heads // tp
    kvh = kv_heads_per_gpu(m, tp)
    flops_per_pair = 4.0 * m.head_dim * qh  # QK^T and PV, 2 FLOPs per multiply-add each
    c[2] = layers * a["prefill_fixed_s"]
    c[3] = layers * flops_per_pair / (g.peak_flops * a["prefill_flop_efficiency"])
    c[4] = layers * a["prefill_token_flop_equiv_per_qdim"] * m.head_dim * qh / g.peak_flops
    kv_bytes_per_token = 2.0 * kvh * m.head_dim * m.bytes_per_param  # K and V of one layer
    c[5] = layers * a["decode_fixed_s"]
    c[6] = layers * kv_bytes_per_token / (g.mem_bw * a["decode_bw_efficiency"])
    c[7], c[8] = e["lm_head_s"]
    if m.vocab != base.vocab:  # the output GEMM has vocab/tp columns
        c[7] *= m.vocab / base.vocab
        c[8] *= m.vocab / base.vocab

    c[9], c[10], c[11], c[12] = engine_overheads(table, overhead, gpu, tp, layers)

    c[HEADER : HEADER + k] = knots
    c[HEADER + k : HEADER + 2 * k] = values
    return c


def load_perf_coefficients(
    model: str, gpu: str, tp: int, overhead: str = DEFAULT_ENGINE, interconnect: str = "nvlink"
) -> np.ndarray:
    """Coefficient vector (float64, layout in the module docstring) for ``iteration_time_s``.

    ``overhead`` selects the engine profile (envs/perf/engines.py): "vllm" (default: CUDA graphs, vLLM's
    measured CPU costs), "vllm-eager", "splitwise" (the Splitwise-era Llama2-70B calibration that timing v0
    pins), "vidur" (Vidur's CPU overheads as Vidur applies them) or "none" (GPU kernels only).
    """
    if not isinstance(tp, (int, np.integer)) or tp < 1:
        raise ValueError(f"tp must be a positive int, got {tp!r}")
    return coefficients_from_table(load_table(), model, gpu, int(tp), overhead, interconnect)


@numba.njit(cache=True)
def iteration_time_s(coef, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_ctx_tokens):
    """Seconds for one iteration with ``prefill_tokens`` prompt tokens (``prefill_attn_pairs`` causal
    query-key pairs) and ``decode_seqs`` decoding sequences reading ``decode_ctx_tokens`` KV tokens."""
    k = int(coef[1])
    x0 = HEADER
    y0 = HEADER + k
    n = prefill_tokens + decode_seqs
    gpu = 0.0
    if n > 0:
        if n <= coef[x0]:
            gpu = coef[y0]
        elif n >= coef[x0 + k - 1]:
            slope = (coef[y0 + k - 1] - coef[y0 + k - 2]) / (coef[x0 + k - 1] - coef[x0 + k - 2])
            gpu = coef[y0 + k - 1] + slope * (n - coef[x0 + k - 1])
        else:
            lo = 0
            hi = k - 1
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                if coef[x0 + mid] <= n:
                    lo = mid
                else:
                    hi = mid
            xl = coef[x0 + lo]
            w = (n - xl) / (coef[x0 + hi] - xl)
            gpu = coef[y0 + lo] + w * (coef[y0 + hi] - coef[y0 + lo])
    logits = decode_seqs
    if prefill_tokens > 0:
        gpu += coef[2] + coef[3] * prefill_attn_pairs + coef[4] * prefill_tokens
        logits += 1
    if decode_seqs > 0:
        gpu += coef[5] + coef[6] * decode_ctx_tokens
    if logits > 0:
        gpu += coef[7] + coef[8] * logits
    t = max(gpu, coef[9]) + coef[10] + coef[11] * decode_seqs
    if prefill_tokens > 0:
        t += coef[12]
    return t


def iteration_time_py(
    coef: np.ndarray, prefill_tokens: int, prefill_attn_pairs: float, decode_seqs: int, decode_ctx_tokens: int
) -> float:
    """Plain-Python entry point (same result as calling the njit function directly)."""
    return float(
        iteration_time_s(coef, prefill_tokens, float(prefill_attn_pairs), decode_seqs, decode_ctx_tokens)
    )


def kv_cache_blocks(
    model: str,
    gpu: str,
    tp: int,
    block_tokens: int = 16,
    gpu_memory_utilization: float = 0.9,
    max_batched_tokens: int = 8192,
) -> int:
    """KV-cache blocks per replica (each block holds ``block_tokens`` tokens on every GPU of the replica).

    free = memory * utilization - weights/tp - activation reserve, per GPU (vLLM's accounting). The reserve
    is the peak live activation of one forward pass over ``max_batched_tokens`` tokens (what vLLM's profiling
    run measures): inside the MLP the residual and the normed input (2*hidden), gate+up output (2*I/tp) and
    the activation output (I/tp), bf16; plus fp32 logits for up to 256 sequences (vLLM's max_num_seqs).
    Per-token KV bytes per GPU = 2 (K,V) * layers * kv_heads_per_gpu * head_dim * 2 bytes, where
    kv_heads_per_gpu = max(1, kv_heads // tp) because vLLM replicates KV heads when tp > kv_heads.
    """
    m, g = get_model(model), get_gpu(gpu)
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if block_tokens < 1:
        raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
    kvh = kv_heads_per_gpu(m, tp)
    weights = m.weight_bytes / tp
    act = max_batched_tokens * (2 * m.hidden + 3 * m.intermediate // tp) * m.bytes_per_param
    logits = 256 * m.vocab * 4
    free = g.memory_bytes * gpu_memory_utilization - weights - act - logits
    per_block = block_tokens * 2 * m.num_layers * kvh * m.head_dim * m.bytes_per_param
    blocks = int(free // per_block)
    if blocks < 1:
        raise ValueError(
            f"{model!r} does not fit on {tp} x {gpu!r}: {weights / 2**30:.1f} GiB of weights per GPU + "
            f"{(act + logits) / 2**30:.1f} GiB activation reserve exceed "
            f"{g.memory_bytes * gpu_memory_utilization / 2**30:.1f} GiB usable; use a larger tp"
        )
    return blocks


__all__ = [
    "GPUS",
    "MODELS",
    "iteration_time_py",
    "iteration_time_s",
    "kv_cache_blocks",
    "load_perf_coefficients",
    "supported",
]
