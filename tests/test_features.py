"""Observation features sit where their names say: the kernels' named positions agree with the layout."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

import servegym.envs  # noqa: F401  (registers the ids)
from servegym.envs.gym import aux_state as F
from servegym.envs.gym import config as C


def test_a_sentinel_written_at_each_named_position_reads_back_by_name():
    lay = C.Layout.build(C.MODE_CLUSTER, r_pad=3, p_pad=2, k=4, scale_step=1, rate_bins=2, sessions=True)
    # group -> (named positions of one entity, the kernels' stride between entities, entities)
    groups = {
        "request": (C.REQUEST, F.F_REQ, 1),
        "replicas": (C.REPLICA, F.F_REP0 + lay.p_pad, lay.r_pad),  # then a one-hot of the pool
        "pools": (C.POOL, F.F_POOL, lay.p_pad),
        "global": (C.GLOBAL, 0, 1),
        "candidates": (C.CANDIDATE, F.F_CAND, lay.k),
        "forming": (C.FORMING, 0, 1),
        "session": (C.SESSION, 0, 1),
        "session_replicas": (C.SESSION_REPLICA, F.F_SREP, lay.r_pad),
        "session_candidates": (C.SESSION_STEP, F.F_SCAND, lay.k),
    }
    assert set(groups) | {"decision", "prefix_hits"} == set(lay.names)
    n_checked = 0
    for group, (index, stride, count) in groups.items():
        for e in range(count):
            for member in index:
                flat = np.zeros(lay.obs_size)
                flat[lay.off(group) + e * stride + member] = 7.0
                obs = {g: flat[a:b] for g, (a, b) in lay.offsets.items()}  # as the envs slice it
                name = member.name.lower() if count == 1 else f"{e}/{member.name.lower()}"
                got = obs[group][list(lay.names[group]).index(name)]
                assert got == 7.0, (group, name)
                n_checked += 1
    # every named feature of these groups but the pool one-hots and the rate bins was checked
    assert n_checked == sum(len(ix) * n for ix, _, n in groups.values())


def test_the_kernels_write_what_the_names_say():
    env = gym.make("servegym/Cluster-v0", horizon_s=30.0, max_replicas=14)
    obs, info = env.reset(seed=3)
    names = env.unwrapped.obs_features
    sc = env.unwrapped.sim.scenario

    def feat(group, name):
        return obs[group][names[group].index(name)]

    n_rep = sum(p.max_replicas for p in sc.pools)
    warm = sum(p.initial_replicas for p in sc.pools)
    for r in range(14):
        assert feat("replicas", f"{r}/exists") == (1.0 if r < n_rep else 0.0)
    assert sum(feat("replicas", f"{r}/active") for r in range(n_rep)) == warm
    for p, pool in enumerate(sc.pools):
        assert feat("pools", f"{p}/exists") == 1.0
        assert feat("pools", f"{p}/n_active") == pool.initial_replicas / pool.max_replicas
        assert feat("pools", f"{p}/spot") == (1.0 if pool.spot else 0.0)
    if info["decision"] == "route":
        assert feat("request", "valid") == 1.0
        assert feat("request", "tier_interactive") + feat("request", "tier_batch") == 1.0
    env.close()
