"""Gymnasium environments over the simulator core: Route, Batch, Scale and Cluster (docs/envs.md)."""

from envs.gym.base import InvalidActionError, ServeEnv
from envs.gym.batch import BatchEnv
from envs.gym.cluster import ClusterEnv
from envs.gym.config import ConfigError
from envs.gym.route import RouteEnv
from envs.gym.scale import ScaleEnv

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
]
