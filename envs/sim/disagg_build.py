"""The disaggregation part of the simulator state, built from a validated scenario (envs/sim/build.py).

Pool roles, the KV bytes a transfer moves per token, the link between every pair of pools, and the sizes
of the transfer heap and the wait ring. Link and model names are resolved here, at the Python boundary,
with errors that name the scenario key.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from servegym.envs.perf.interconnect import get_link, kv_bytes_per_token, link_bandwidth
from servegym.envs.perf.specs import get_model
from servegym.envs.scenario import POOL_ROLES, Scenario, ScenarioError
from servegym.envs.sim import state as S


class DisaggArrays(NamedTuple):
    on: bool  # some pool has role prefill or decode
    role: np.ndarray  # i8[P] ROLE_* (state.py): the index in POOL_ROLES
    layers: np.ndarray  # i8[P]
    kv_token_bytes: np.ndarray  # f8[P] KV bytes of one token on a whole replica of the pool
    link: np.ndarray  # f8[2, P, P] bandwidth (bytes/s) and latency (s) of a transfer between two pools
    xfq: np.ndarray  # f8[2, X] transfer heap
    xwait: np.ndarray  # i4[W] wait ring
    xqf: np.ndarray  # f8[N_XQF, N or 1] per-request transfer fields (state.py)
    xqi: np.ndarray  # i4[N_XQI, N or 1]


def disaggregation_arrays(
    scenario: Scenario, n_requests: int, max_seqs: int, kv_blocks: list[int]
) -> DisaggArrays:
    pools = scenario.pools
    n_pool = len(pools)
    role = np.array([POOL_ROLES.index(p.role) for p in pools], dtype=np.int64)
    on = bool((role != 0).any())
    layers = np.array([get_model(p.model).num_layers for p in pools], dtype=np.int64)
    kv_token_bytes = np.array([kv_bytes_per_token(p.model, p.tp) for p in pools], dtype=np.float64)
    link = np.zeros((2, n_pool, n_pool))
    names = [p.name for p in pools]
    pair_link = {}
    for e in scenario.kv_transfer.links:
        a, b = (names.index(n) for n in e.pools)
        pair_link[a, b] = pair_link[b, a] = e.link
    for a in range(n_pool):
        for b in range(n_pool):
            name = pair_link.get((a, b), scenario.kv_transfer.link)
            try:
                link[0, a, b] = link_bandwidth(name, pools[a].tp, pools[b].tp)
                link[1, a, b] = get_link(name).latency_s
            except KeyError as e:
                raise ScenarioError(f"scenario {scenario.name!r}: kv_transfer: {e}") from None
    if on:
        # every transfer in flight holds a sequence slot on a decode-capable replica
        n_heap = sum(p.max_replicas * max_seqs for p in pools if p.role != "prefill")
        # every KV cache waiting for a decode replica holds at least one block on a prefill replica
        n_wait = sum(p.max_replicas * kv_blocks[i] for i, p in enumerate(pools) if p.role == "prefill")
        n_heap = max(1, min(n_heap, n_requests))
        n_wait = max(1, min(n_wait, n_requests))
    else:
        n_heap = n_wait = 1
    n_col = n_requests if on else 1  # colocated runs keep their per-request memory
    xqi = np.zeros((S.N_XQI, max(n_col, 1)), dtype=np.int32)
    xqi[S.XQI_SRC] = xqi[S.XQI_DST] = xqi[S.XQI_SLOT] = -1
    return DisaggArrays(
        on=on,
        role=role,
        layers=layers,
        kv_token_bytes=kv_token_bytes,
        link=link,
        xfq=np.stack([np.full(n_heap, np.inf), np.full(n_heap, -1.0)]),
        xwait=np.full(n_wait, -1, dtype=np.int32),
        xqf=np.zeros((S.N_XQF, max(n_col, 1))),
        xqi=xqi,
    )
