"""What an env keeps beside its simulator for one episode (``EnvAux``), its field indices, and how it is
built from the layout and config (``make_aux``; Python, once per episode).

``EnvAux`` holds sizes and offsets (``ai``, filled from ``config.Layout``), normalization constants and
reward weights (``af``), the batch candidates on offer (``cand``), per-tier cumulative arrival counts and
prompt-token sums (``cum``, so rates need no scan) and pool prices. The kernels of features.py,
decisions.py and kernels.py read it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from servegym.envs.gym import config as C
from servegym.envs.scenario import Scenario
from servegym.envs.sim import state as S
from servegym.envs.sim.build import pool_price_per_gpu_hour
from servegym.envs.sim.policies import BATCHING_IDS
from servegym.envs.sim.simulator import Simulator

INF = np.inf

# ---- ai[] int64 fields
(
    AI_MODE,
    AI_R,  # replicas of the running scenario (<= AI_RPAD)
    AI_P,
    AI_RPAD,
    AI_PPAD,
    AI_K,
    AI_SK,  # scale step: action j of a pool is the delta j - SK
    AI_H,  # rate bins
    AI_BORDER,  # batch ranking policy, -1: the scenario's
    AI_NOOP,  # 1: invalid actions become penalized no-ops
    AI_EV,  # pending decision (EV_ROUTE/EV_BATCH/EV_SCALE) or EV_DONE
    AI_DONE,
    AI_ROUTES,  # routing decisions taken this episode (the round-robin pointer a baseline needs)
    AI_PREV_MET,
    AI_PREV_TOK,
    AI_PREV_MISS,
    AI_PREV_DROPS,
    AI_O_DEC,  # observation offsets, -1 when the env has no such group
    AI_O_REQ,
    AI_O_PFX,
    AI_O_CAND,
    AI_O_FORM,
    AI_O_REP,
    AI_O_POOL,
    AI_O_GLOB,
    AI_OBS_N,
    AI_A_ROUTE,  # action index of each decision's dim(s), -1 when absent
    AI_A_BATCH,
    AI_A_SCALE,
    AI_NACT,
    AI_M_ROUTE,  # mask offsets
    AI_M_BATCH,
    AI_M_SCALE,
    AI_MASK_N,
    AI_IB,  # info int buffer: batch section, scale section, size
    AI_IS,
    AI_NI,
    AI_FB,  # info float buffer: batch section, scale section, size
    AI_FS,
    AI_NF,
    AI_REL_FILLED,  # released session steps already summed into cumrel
    AI_O_SESS,  # session group offsets (config.SESSION_GROUPS), -1 without session features
    AI_O_SREP,
    AI_O_SCAND,
    AI_O_DISAGG,  # disaggregation group offset (config.DISAGG_FEATURES), -1 without it
) = range(45)
N_AI = 45

# ---- af[] float64 fields: norms (config.NORM_KEYS order), reward weights (config.REWARD_KEYS order), misc
(
    AF_N_PROMPT,
    AF_N_QUEUE,
    AF_N_SLACK,
    AF_N_WAIT,
    AF_N_COUNTER,
    AF_N_RATE,
    AF_N_COST,
    AF_N_PRICE,
    AF_N_COLD,
    AF_N_TPOT,
    AF_N_STEPS,
) = range(11)
AF_W = 11  # 7 weights, already multiplied by their sign
AF_DAY, AF_BIN_S, AF_PREV_COST, AF_PREV_GAP = 18, 19, 20, 21
N_AF = 22

# features per entity (a replica's and a forming batch's are followed by a one-hot of their pool)
F_REQ, F_POOL, F_CAND = len(C.REQUEST_FEATURES), len(C.POOL_FEATURES), len(C.CANDIDATE_FEATURES)
F_GLOB0, F_FORM0, F_REP0 = len(C.GLOBAL_FEATURES), len(C.FORMING_FEATURES), len(C.REPLICA_FEATURES)
F_SREP, F_SCAND = len(C.SESSION_REPLICA_FEATURES), len(C.SESSION_CANDIDATE_FEATURES)
# Route info: ints (7 per replica + 9 request scalars), floats (2 per replica + 5 request scalars).
N_ROUTE_I, N_ROUTE_F = 9, 5
# Batch info: ints and floats per candidate slot.
N_BATCH_I, N_BATCH_F = 5, 5


class EnvAux(NamedTuple):
    # i8[N_AI + 2 x rate bins]: the fields above, then the left-edge pointer of each rate bin into the rows
    # (first arrivals), then into the release log (later session steps)
    ai: np.ndarray
    af: np.ndarray  # f8[N_AF]
    cand: np.ndarray  # i8[2, K]: request id (-1: empty slot) and admissible flag of each batch slot
    cscore: np.ndarray  # f8[K]: scratch for ranking the batch candidates
    cum: (
        np.ndarray
    )  # i8[3, N + 1]: interactive arrivals, batch arrivals, prompt tokens among the first n requests
    price: np.ndarray  # f8[P]: USD per GPU-hour
    # i8[3, H + 1]: cum's sums over the release log's first k entries (later session steps, whose arrival
    # order only the simulation decides), extended as steps are released (sync_released)
    cumrel: np.ndarray


def info_sizes(r_pad: int, p_pad: int, k: int) -> tuple[int, int, int, int, int, int]:
    """(IB, IS, NI, FB, FS, NF): section offsets and sizes of the info buffers (see docs/envs.md)."""
    ib = 7 * r_pad + N_ROUTE_I
    i_s = ib + N_BATCH_I * k
    fb = 2 * r_pad + N_ROUTE_F
    f_s = fb + N_BATCH_F * k
    return ib, i_s, i_s + 8 * p_pad + 2, fb, f_s, f_s + 3 * p_pad + 2


# ---------------------------------------------------------------- building the aux state (Python)


def pool_prices(scenario: Scenario) -> np.ndarray:
    """USD per GPU-hour of each pool: the scenario's price, else the GPU's default (build.py)."""
    return np.array([pool_price_per_gpu_hour(p) for p in scenario.pools], dtype=np.float64)


def day_period(cfg: dict[str, Any], scenario: Scenario) -> float:
    if cfg["day_period_s"] is not None:
        return float(cfg["day_period_s"])
    for src in scenario.sources:
        diurnal = getattr(getattr(src, "arrival", None), "diurnal", None)
        if diurnal is not None:
            return float(diurnal.period_s)
    return 86400.0


def make_aux(lay: C.Layout, cfg: dict[str, Any], scenario: Scenario, sim: Simulator) -> EnvAux:
    """The env-side state of one episode."""
    ai = np.zeros(N_AI + 2 * lay.rate_bins, np.int64)
    ai[AI_MODE] = lay.mode
    ai[AI_R] = sum(p.max_replicas for p in scenario.pools)
    ai[AI_P] = len(scenario.pools)
    ai[AI_RPAD], ai[AI_PPAD], ai[AI_K] = lay.r_pad, lay.p_pad, lay.k
    ai[AI_SK], ai[AI_H] = lay.scale_step, lay.rate_bins
    ai[AI_BORDER] = -1 if cfg["batch_order"] == "scenario" else BATCHING_IDS[cfg["batch_order"]]
    ai[AI_NOOP] = cfg["invalid_action"] == "noop_penalty"
    for f, g in (
        (AI_O_DEC, "decision"),
        (AI_O_REQ, "request"),
        (AI_O_PFX, "prefix_hits"),
        (AI_O_CAND, "candidates"),
        (AI_O_FORM, "forming"),
        (AI_O_REP, "replicas"),
        (AI_O_POOL, "pools"),
        (AI_O_GLOB, "global"),
        (AI_O_SESS, "session"),
        (AI_O_SREP, "session_replicas"),
        (AI_O_SCAND, "session_candidates"),
        (AI_O_DISAGG, "disagg"),
    ):
        ai[f] = lay.off(g)
    ai[AI_OBS_N] = lay.obs_size
    ai[AI_A_ROUTE], ai[AI_A_BATCH], ai[AI_A_SCALE] = lay.act_offsets
    ai[AI_NACT] = len(lay.nvec)
    ai[AI_M_ROUTE], ai[AI_M_BATCH], ai[AI_M_SCALE] = lay.mask_offsets
    ai[AI_MASK_N] = lay.mask_size
    (ai[AI_IB], ai[AI_IS], ai[AI_NI], ai[AI_FB], ai[AI_FS], ai[AI_NF]) = info_sizes(
        lay.r_pad, lay.p_pad, lay.k
    )
    af = np.zeros(N_AF)
    af[: len(C.NORM_KEYS)] = [float(cfg["norm"][k]) for k in C.NORM_KEYS]
    af[AF_W : AF_W + len(C.REWARD_KEYS)] = [
        s * float(cfg["reward"][k]) for k, s in zip(C.REWARD_KEYS, C.REWARD_SIGNS, strict=True)
    ]
    af[AF_DAY] = day_period(cfg, scenario)
    af[AF_BIN_S] = float(cfg["rate_bin_s"])
    st = sim.state
    n = st.rqf.shape[1]
    cum = np.zeros((3, n + 1), np.int64)
    tier = st.rqi[S.RI_TIER]
    np.cumsum(tier == S.TIER_INTERACTIVE, out=cum[0, 1:])
    np.cumsum(tier == S.TIER_BATCH, out=cum[1, 1:])
    np.cumsum(st.rqi[S.RI_PROMPT], out=cum[2, 1:])
    cand = np.full((2, lay.k), -1, np.int64)
    cand[1] = 0
    price = np.zeros(lay.p_pad)
    price[: len(scenario.pools)] = pool_prices(scenario)
    n_later = st.rlog.shape[0]
    return EnvAux(ai, af, cand, np.zeros(lay.k), cum, price, np.zeros((3, n_later + 1), np.int64))
