"""Gymnasium environments over the simulator core: Route, Batch, Scale and Cluster (docs/envs.md)."""

from servegym.envs.gym.base import InvalidActionError, ServeEnv
from servegym.envs.gym.batch import BatchEnv
from servegym.envs.gym.cluster import ClusterEnv
from servegym.envs.gym.config import ConfigError
from servegym.envs.gym.route import RouteEnv
from servegym.envs.gym.scale import ScaleEnv
from servegym.envs.gym.vector import action_masks

ENV_IDS = ("servegym/Route-v0", "servegym/Batch-v0", "servegym/Scale-v0", "servegym/Cluster-v0")

__all__ = [
    "ENV_IDS",
    "BatchEnv",
    "ClusterEnv",
    "ConfigError",
    "InvalidActionError",
    "RouteEnv",
    "ScaleEnv",
    "ServeEnv",
    "action_masks",
]
