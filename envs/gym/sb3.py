"""A stable-baselines3 ``VecEnv`` over the native vector env.

SB3 does not take Gymnasium vector envs, and its contract differs: ``step`` returns ``(obs, rewards,
dones, infos)`` with a list of per-env info dicts; a finished env is reset in the same step and its last
observation goes in ``infos[i]["terminal_observation"]``, with ``infos[i]["TimeLimit.truncated"]`` telling
a horizon cut (bootstrap) from a true end. The native vector env already autoresets in the same step, so
this adapter only reshapes its output. ``env_method("action_masks")`` serves sb3-contrib's MaskablePPO.
Each finished episode's return, length and wall time go in ``infos[i]["episode"]``, as SB3's ``VecMonitor``
writes them, so ``rollout/ep_rew_mean`` is logged without wrapping (wrapping in VecMonitor as well is harmless).

    from servegym.envs.gym.sb3 import SB3VecEnv
    venv = SB3VecEnv("servegym/Batch-v0", num_envs=8, horizon_s=300)
    MaskablePPO("MultiInputPolicy", venv).learn(100_000)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from servegym.envs.gym.vector import ServeVectorEnv


class SB3VecEnv(VecEnv):
    """Wrap a ``ServeVectorEnv`` (or build one from an env id and config keywords)."""

    def __init__(self, venv: ServeVectorEnv | str, num_envs: int = 1, **kwargs: Any):
        if isinstance(venv, str):
            venv = gym.make_vec(venv, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
        elif kwargs:
            raise ValueError(
                f"SB3VecEnv: config keywords {sorted(kwargs)} apply only when building from an id"
            )
        if not isinstance(venv, ServeVectorEnv):
            raise TypeError(f"SB3VecEnv needs a servegym native vector env, got {type(venv).__name__}")
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self.render_mode = venv.render_mode
        self._actions: np.ndarray | None = None
        self._ep_return = np.zeros(self.num_envs)
        self._ep_length = np.zeros(self.num_envs, np.int64)
        self._ep_start = np.full(self.num_envs, time.perf_counter())

    def reset(self) -> VecEnvObs:
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        options = None
        if any(self._options):
            first = self._options[0]
            if any(o != first for o in self._options):
                raise ValueError("SB3VecEnv: the native vector env takes one options dict for all envs")
            options = first
        obs, _ = self.venv.reset(seed=seeds, options=options)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._ep_return[:] = 0.0
        self._ep_length[:] = 0
        self._ep_start[:] = time.perf_counter()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        dones = terminated | truncated
        self._ep_return += rewards
        self._ep_length += 1
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        now = time.perf_counter()
        for j in np.flatnonzero(dones):
            infos[j]["episode"] = {
                "r": float(self._ep_return[j]),
                "l": int(self._ep_length[j]),
                "t": round(now - self._ep_start[j], 6),
            }
            self._ep_return[j], self._ep_length[j], self._ep_start[j] = 0.0, 0, now
            infos[j]["terminal_observation"] = info["final_obs"][j]
            infos[j]["TimeLimit.truncated"] = bool(truncated[j] and not terminated[j])
            infos[j]["metrics"] = {
                k: v[j].item() for k, v in info["final_info"]["metrics"].items() if k[0] != "_"
            }
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    # ------------------------------------------------------------------ attribute access
    def _n(self, indices: VecEnvIndices) -> list[int]:
        return list(self._get_indices(indices))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        if attr_name == "action_masks":
            masks = self.venv.action_masks()
            return [(lambda m=masks[j]: m) for j in self._n(indices)]
        value = (
            getattr(self.venv, attr_name)
            if hasattr(self.venv, attr_name)
            else getattr(self.venv.proto, attr_name)
        )
        return [value for _ in self._n(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(
            f"SB3VecEnv: the sub-envs share one config; use venv.proto.configure(...) ({attr_name})"
        )

    def env_method(
        self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs
    ) -> list[Any]:
        if method_name == "action_masks":
            masks = self.venv.action_masks()
            return [masks[j] for j in self._n(indices)]
        raise AttributeError(f"SB3VecEnv: env_method supports 'action_masks' only, not {method_name!r}")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._n(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.venv.render_mode != "rgb_array":
            return [None for _ in range(self.num_envs)]
        return list(self.venv.render() or ())

    def action_masks(self) -> np.ndarray:
        return self.venv.action_masks()
