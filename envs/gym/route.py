"""``servegym/Route-v0``: one step per arriving request; the action is the replica it goes to."""

from __future__ import annotations

from servegym.envs.gym.base import ServeEnv
from servegym.envs.gym.config import MODE_ROUTE


class RouteEnv(ServeEnv):
    """Route each arriving request to a replica (``Discrete(max_replicas)``).

    Replicas that are not active, serve another model, or could never hold the request's context are masked.
    Batching and scaling follow the scenario's built-in rules. Observation keys: ``request``,
    ``prefix_hits`` (per replica), ``replicas``, ``pools``, ``global``.
    """

    MODE = MODE_ROUTE
    DEFAULT_SCENARIO = "chat_azure"
