"""``servegym/Scale-v0``: one step per control interval; the action is a replica delta per pool."""

from __future__ import annotations

from servegym.envs.gym.base import ServeEnv
from servegym.envs.gym.config import MODE_SCALE


class ScaleEnv(ServeEnv):
    """Add or remove replicas of every pool at each control tick (``MultiDiscrete``).

    Each pool's action j means a delta of ``j - scale_step`` replicas; deltas that would leave
    [min_replicas, max_replicas] are masked (padded pools can only hold). Added replicas revive draining
    ones first, then cold-start; removed ones cancel the latest cold start first, then drain the least
    loaded. Routing and batching follow the scenario's built-in rules. Observation keys: ``pools``,
    ``replicas``, ``global``.
    """

    MODE = MODE_SCALE
    DEFAULT_SCENARIO = "hetero_a100_h100"
