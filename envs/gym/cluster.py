"""``servegym/Cluster-v0``: the agent takes every routing, batching and scaling decision."""

from __future__ import annotations

from servegym.envs.gym.base import ServeEnv
from servegym.envs.gym.config import MODE_CLUSTER


class ClusterEnv(ServeEnv):
    """One step per pending decision of any kind, with one flat ``MultiDiscrete`` action.

    Action dims: ``[replica, batch slot (top_k + 1), one delta per pool]``. Only the dims of the pending
    decision (observation key ``decision``, ``info["decision"]``) are read; the mask enables exactly one
    placeholder value in the others (route 0, batch "start", scale "hold"), so masked samplers stay valid.
    Values in the unread dims must still lie in the action space.
    """

    MODE = MODE_CLUSTER
    DEFAULT_SCENARIO = "hetero_a100_h100"
