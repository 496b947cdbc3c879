"""The ``info`` contract: raw (unnormalized) candidate features of the pending decision.

The kernels fill two flat buffers per step (``ii`` int64, ``ff`` float64, layout in ``kernels.info_sizes``);
the functions here only slice them into the documented dicts (docs/envs.md), so a baseline can call the
core's scoring rules (``servegym.envs.sim.policies``) on exactly what the core itself would see. They work on one
env's 1-D buffers and on a vector env's 2-D buffers (one row per sub-env) alike: slices run along the last
axis, and scalars become per-env arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from servegym.envs.gym.aux_state import N_ROUTE_F, N_ROUTE_I, info_sizes
from servegym.envs.gym.config import REWARD_KEYS, Layout


def _scalar(a: np.ndarray, j: int, batched: bool) -> Any:
    return a[..., j] if batched else a[j].item()


def route_info(lay: Layout, ii: np.ndarray, ff: np.ndarray, batched: bool = False) -> dict[str, Any]:
    r = lay.r_pad
    b = 7 * r
    if batched:
        ints = [ii[..., b + j] for j in range(N_ROUTE_I)]
        floats = [ff[..., 2 * r + j] for j in range(N_ROUTE_F)]
    else:  # one tolist() per buffer: per-scalar .item() calls cost more than the rest of this function
        ints = ii[b : b + N_ROUTE_I].tolist()
        floats = ff[2 * r : 2 * r + N_ROUTE_F].tolist()
    return {
        "route": {
            "queue_len": ii[..., 0:r],
            "running": ii[..., r : 2 * r],
            "kv_frac": ff[..., 0:r],
            "prefix_hits": ii[..., 2 * r : 3 * r],
            "pool": ii[..., 3 * r : 4 * r],
            "price_per_gpu_hour": ff[..., r : 2 * r],
            "tp": ii[..., 4 * r : 5 * r],
            # prefill/decode disaggregation: the pool role (0 mixed, 1 prefill), and the prompt tokens the
            # replica still has to prefill (waiting and running; Mooncake's queueing estimate)
            "role": ii[..., 5 * r : 6 * r],
            "prefill_tokens": ii[..., 6 * r : 7 * r],
            "rr_pointer": ints[5],
        },
        "request": {
            "request_id": ints[0],
            "prompt_tokens": ints[1],
            "output_tokens": ints[2],
            "tier": ints[3],
            "tenant": ints[4],
            "arrival_s": floats[0],
            "ttft_slo_s": floats[1],
            "tpot_slo_s": floats[2],
            "deadline_s": floats[3],
            # agentic sessions: the replica that served the session's previous step (-1: none, or not in a
            # session), the calls the session made before this one, its end-to-end deadline (inf: none)
            "home_replica": ints[6],
            "session_step": ints[7],
            "session_deadline_s": floats[4],
            # 1: the decode phase of a disaggregated request, its KV cache looking for a decode replica
            # (route.running then counts the slots of KV caches arriving too); 0: a new request
            "decode_phase": ints[8],
        },
    }


def batch_info(lay: Layout, ii: np.ndarray, ff: np.ndarray, batched: bool = False) -> dict[str, Any]:
    ib, _, _, fb, _, _ = info_sizes(lay.r_pad, lay.p_pad, lay.k)
    k = lay.k
    return {
        "batch": {
            "request_id": ii[..., ib : ib + k],
            "arrival_s": ff[..., fb : fb + k],
            "deadline_s": ff[..., fb + k : fb + 2 * k],
            "prompt_tokens": ii[..., ib + k : ib + 2 * k],
            "tier": ii[..., ib + 2 * k : ib + 3 * k],
            "tenant": ii[..., ib + 3 * k : ib + 4 * k],
            "tenant_counter": ff[..., fb + 2 * k : fb + 3 * k],
            "tenant_weight": ff[..., fb + 3 * k : fb + 4 * k],
            "session_step": ii[..., ib + 4 * k : ib + 5 * k],
            "session_deadline_s": ff[..., fb + 4 * k : fb + 5 * k],
        }
    }


def scale_info(lay: Layout, ii: np.ndarray, ff: np.ndarray, batched: bool = False) -> dict[str, Any]:
    _, i0, _, _, f0, _ = info_sizes(lay.r_pad, lay.p_pad, lay.k)
    p = lay.p_pad
    return {
        "scale": {
            "kv_util": ff[..., f0 : f0 + p],
            "n_up": ii[..., i0 : i0 + p],
            "n_active": ii[..., i0 + p : i0 + 2 * p],
            "min": ii[..., i0 + 2 * p : i0 + 3 * p],
            "max": ii[..., i0 + 3 * p : i0 + 4 * p],
            "queue_len": ii[..., i0 + 4 * p : i0 + 5 * p],
            "arrivals_last_interval": ii[..., i0 + 6 * p : i0 + 6 * p + 2],  # per tier
            "cold_start_s": ff[..., f0 + p : f0 + 2 * p],
            "price_per_gpu_hour": ff[..., f0 + 2 * p : f0 + 3 * p],
            "tp": ii[..., i0 + 5 * p : i0 + 6 * p],
            "reactive_up": _scalar(ff, f0 + 3 * p, batched),
            "reactive_down": _scalar(ff, f0 + 3 * p + 1, batched),
            "spot": ii[..., i0 + 6 * p + 2 : i0 + 7 * p + 2],
            "lost_last_interval": ii[..., i0 + 7 * p + 2 : i0 + 8 * p + 2],
        },
        "scale_deltas": np.arange(-lay.scale_step, lay.scale_step + 1),
    }


def reward_components(rc: np.ndarray, batched: bool = False) -> dict[str, Any]:
    if batched:
        return {k: rc[:, c] for c, k in enumerate(REWARD_KEYS)}
    return dict(zip(REWARD_KEYS, rc[: len(REWARD_KEYS)].tolist(), strict=True))
