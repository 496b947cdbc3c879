"""Native vector envs: N simulators stepped by one numba call per vector step.

The N ``SimState`` tuples (and the envs' ``EnvAux`` tuples) sit in ``numba.typed.List``s; ``kernels.vec_step``
loops over them in compiled code, so a vector step costs one dispatch, not N Python env steps. Every
sub-env runs the same ``step_core`` as a single env: sub-env i seeded ``seed + i`` is bit-identical to a
single env reset with that seed. Episodes autoreset in the same step (``AutoresetMode.SAME_STEP``): a
finished sub-env's returned observation is the first of its next episode, and its last observation and
info (with ``metrics``) are in ``info["final_obs"]`` / ``info["final_info"]``. Resetting one sub-env builds
its next workload in Python (about a millisecond), which is rare next to the steps of an episode.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from numba.typed import List

from servegym.envs.gym import config as C
from servegym.envs.gym import kernels as K
from servegym.envs.gym.base import InvalidActionError, ServeEnv, invalid_action_error, no_decision_error
from servegym.envs.gym.batch import BatchEnv
from servegym.envs.gym.cluster import ClusterEnv
from servegym.envs.gym.info import batch_info, reward_components, route_info, scale_info
from servegym.envs.gym.route import RouteEnv
from servegym.envs.gym.scale import ScaleEnv
from servegym.envs.metrics import compute_metrics
from servegym.envs.sim import state as S

_DECISION_NAMES = np.array(C.DECISIONS)


class ServeVectorEnv(VectorEnv):
    """N copies of ``ENV_CLASS`` in one process; accepts the same config keywords as the single env."""

    metadata: ClassVar[dict[str, Any]] = {
        "autoreset_mode": AutoresetMode.SAME_STEP,
        "render_modes": ["ansi", "rgb_array"],
    }
    ENV_CLASS: ClassVar[type[ServeEnv]] = ClusterEnv

    def __init__(
        self,
        num_envs: int = 1,
        config: dict[str, Any] | None = None,
        render_mode: str | None = None,
        parallel: bool = False,
        **kwargs: Any,
    ):
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"{type(self).__name__}: num_envs must be an int >= 1, got {num_envs!r}")
        # A never-stepped single env parses the config, owns the scenario and builds each episode.
        self.proto = self.ENV_CLASS(config=config, render_mode=None, **kwargs)
        if self.proto.config["max_episode_steps"] is not None:
            raise C.ConfigError(
                f"{type(self).__name__}: config key 'max_episode_steps' is for single envs; the native vector "
                f"env's episodes end at the scenario's horizon, so set horizon_s to shorten them"
            )
        self.num_envs = int(num_envs)
        self.render_mode = render_mode
        # Step the sub-envs on numba's threads (NUMBA_NUM_THREADS); results are identical to serial.
        self.parallel = bool(parallel)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"{type(self).__name__}: render_mode {render_mode!r} not in {self.metadata['render_modes']}"
            )
        self.layout = self.proto.layout
        self.single_observation_space = self.proto.observation_space
        self.single_action_space = self.proto.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._rngs: list[np.random.Generator | None] = [None] * self.num_envs
        self._sims: list[Any] = [None] * self.num_envs
        self._states: List | None = None
        self._auxs: List | None = None
        self._aux_py: list[Any] = [None] * self.num_envs  # the same tuples, for pickling
        self._opts: dict[str, Any] = {}
        self._mask = np.zeros((self.num_envs, self.layout.mask_size), np.int8)
        self._evs = np.zeros(self.num_envs, np.int64)
        self._act_shape = (self.num_envs, len(self.layout.nvec))

    @property
    def config(self) -> dict[str, Any]:
        return self.proto.config

    def _rng(self, j: int) -> np.random.Generator:
        if self._rngs[j] is None:
            self._rngs[j] = seeding.np_random()[0]
        return self._rngs[j]

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        n = self.num_envs
        if seed is None:
            seeds: list[int | None] = [None] * n
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + j for j in range(n)]  # as gymnasium's SyncVectorEnv seeds its envs
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"{type(self).__name__}.reset: {len(seeds)} seeds for {n} envs")
        for j, s in enumerate(seeds):
            if s is not None:
                self._rngs[j] = seeding.np_random(s)[0]
        # as ServeEnv.reset: a reset that raises leaves the envs needing a reset, with the previous config
        config, scenario = self.proto.config, self.proto.scenario
        self._states = self._auxs = None
        try:
            options, workload_seeds = self._per_env_seeds(options)
            opts = self.proto._episode_options(options)
            states, auxs = List(), List()
            for j in range(n):
                o = opts if workload_seeds is None else {**opts, "seed": workload_seeds[j]}
                sim, aux = self.proto.new_episode(self._rng(j), o, seeds[j])
                self._sims[j], self._aux_py[j] = sim, aux
                states.append(sim.state)
                auxs.append(aux)
            evs, obs, mask, ii, ff = K.vec_reset(states, auxs, np.arange(n))
            if np.any(evs == S.EV_DONE):
                raise no_decision_error(type(self).__name__, self.proto.scenario)
        except BaseException:
            self.proto.config, self.proto.scenario = config, scenario
            raise
        self._states, self._auxs = states, auxs
        self._opts = {k: v for k, v in opts.items() if k != "seed"}  # a fixed workload seed is per reset
        self._evs, self._mask = evs, mask
        return self._obs(obs), self._infos(evs, mask, ii, ff, np.zeros((n, K.N_RC)))

    def _per_env_seeds(
        self, options: dict[str, Any] | None
    ) -> tuple[dict[str, Any] | None, list[int] | None]:
        """``options["seed"]`` may list one workload seed per sub-env (this reset only), so that sub-env j
        replays exactly the episode of a single env reset with ``options={"seed": seeds[j]}``."""
        if not isinstance(options, dict) or not isinstance(options.get("seed"), (list, tuple, np.ndarray)):
            return options, None
        rest = {k: v for k, v in options.items() if k != "seed"}
        seeds = list(options["seed"])
        if len(seeds) != self.num_envs or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds
        ):
            raise ValueError(
                f"{type(self).__name__}.reset: option 'seed' as a list needs {self.num_envs} ints (one workload "
                f"seed per sub-env), got {options['seed']!r}"
            )
        return rest, [int(s) for s in seeds]

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._states is None:
            raise ResetNeeded(f"{type(self).__name__}: call reset() before step()")
        acts = self._actions(actions)
        step = K.vec_step_parallel if self.parallel else K.vec_step
        bad, code, dim, status, evs, obs, mask, ii, ff, rc = step(
            self._states, self._auxs, acts, self._mask, self._evs, self._aux_py[0].ai
        )
        if bad >= 0:
            raise self._invalid(int(bad), int(code), int(dim), acts[bad])
        # the single env's hooks, on the whole batch (ServeEnv's hooks section)
        terminated = np.asarray(self.proto._is_terminated(status), dtype=bool)
        truncated = np.asarray(self.proto._is_truncated(status), dtype=bool)
        rewards = np.array(self.proto._reward(rc), dtype=np.float64)
        done = np.flatnonzero(terminated | truncated)
        final: tuple | None = None
        if done.size:
            final = self._autoreset(done, obs, mask, ii, ff, rc, evs)
        self._evs, self._mask = evs, mask
        infos = self._infos(evs, mask, ii, ff, rc)
        if final is not None:
            infos["final_obs"], infos["_final_obs"], infos["final_info"], infos["_final_info"] = final
        return self._obs(obs), rewards, terminated, truncated, infos

    def _autoreset(self, done, obs, mask, ii, ff, rc, evs) -> tuple:
        n = self.num_envs
        final_obs = np.full(n, None, dtype=object)
        final_info: dict[str, Any] = {}
        flags = np.zeros(n, bool)
        flags[done] = True
        opts = self._opts
        for j in done:
            final_obs[j] = {g: obs[j, a:b].copy() for g, (a, b) in self.layout.offsets.items()}
            info = self.proto._info(S.EV_DONE, mask[j].copy(), ii[j].copy(), ff[j].copy(), rc[j].copy())
            info["metrics"] = compute_metrics(self._sims[j].outcome(final=True))
            final_info = self._add_info(final_info, info, j)
            sim, aux = self.proto.new_episode(self._rng(j), opts)
            self._sims[j], self._aux_py[j] = sim, aux
            self._states[j] = sim.state
            self._auxs[j] = aux
            evs[j] = K.vec_reset_into(self._states, self._auxs, j, obs, mask, ii, ff)
            if evs[j] == S.EV_DONE:
                raise RuntimeError(f"{type(self).__name__}: sub-env {j}: the new episode has no decision")
        return final_obs, flags, final_info, flags.copy()

    def action_masks(self) -> np.ndarray:
        """[num_envs, mask size] valid actions of each sub-env's pending decision."""
        return self._mask.astype(bool)

    def render(self) -> tuple[Any, ...] | None:
        if self.render_mode is None or self._states is None:
            return None
        from servegym.envs.gym import render

        names = [C.DECISIONS[int(e)] for e in self._evs]
        if self.render_mode == "ansi":
            return tuple(render.ansi(s, d) for s, d in zip(self._sims, names, strict=True))
        return tuple(render.rgb([], s, d) for s, d in zip(self._sims, names, strict=True))

    @property
    def sims(self) -> list[Any]:
        """The sub-envs' simulators (read them, don't drive them)."""
        return list(self._sims)

    # ------------------------------------------------------------------ helpers
    def _obs(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {g: flat[:, a:b] for g, (a, b) in self.layout.offsets.items()}

    def _infos(self, evs, mask, ii, ff, rc) -> dict[str, Any]:
        present = np.ones(self.num_envs, bool)
        infos: dict[str, Any] = {
            "decision": _DECISION_NAMES[evs],
            "_decision": present,
            "action_mask": mask,
            "_action_mask": present,
            "reward_components": reward_components(rc, batched=True),
            "_reward_components": present,
        }
        if self.proto.config["info_features"]:
            mode = self.layout.mode
            parts: dict[str, Any] = {}
            if mode in (C.MODE_ROUTE, C.MODE_CLUSTER):
                parts.update(route_info(self.layout, ii, ff, batched=True))
            if mode in (C.MODE_BATCH, C.MODE_CLUSTER):
                parts.update(batch_info(self.layout, ii, ff, batched=True))
            if mode in (C.MODE_SCALE, C.MODE_CLUSTER):
                parts.update(scale_info(self.layout, ii, ff, batched=True))
            for key, val in parts.items():
                infos[key] = val
                infos["_" + key] = present
        return infos

    def _actions(self, actions: Any) -> np.ndarray:
        arr = np.asarray(actions)
        # the exact batched shape: a transposed or flat array of the right size would hand one env's
        # action to another
        if arr.dtype.kind not in "iu" or arr.shape != self.action_space.shape:
            raise InvalidActionError(
                f"{type(self).__name__}: actions must be integers of shape {self.action_space.shape} "
                f"({self.action_space}), got shape {arr.shape} dtype {arr.dtype}"
            )
        if (
            arr.dtype == np.uint64
        ):  # values >= 2**63 would wrap to negatives, which the range check rejects anyway
            arr = np.minimum(arr, np.uint64(2**62))
        return arr.reshape(self._act_shape).astype(np.int64, order="C")

    def _invalid(self, j: int, code: int, dim: int, act: np.ndarray) -> InvalidActionError:
        return invalid_action_error(
            f"{type(self).__name__}: sub-env {j}",
            self.layout,
            self.single_action_space,
            code,
            dim,
            act.tolist(),
            self._mask[j],
            int(self._evs[j]),
        )

    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()  # the typed Lists are rebuilt from the simulators and aux tuples
        d["_states"] = d["_auxs"] = None
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        if self._sims[0] is not None:
            self._states = List([s.state for s in self._sims])
            self._auxs = List(self._aux_py)


class RouteVectorEnv(ServeVectorEnv):
    ENV_CLASS = RouteEnv


class BatchVectorEnv(ServeVectorEnv):
    ENV_CLASS = BatchEnv


class ScaleVectorEnv(ServeVectorEnv):
    ENV_CLASS = ScaleEnv


class ClusterVectorEnv(ServeVectorEnv):
    ENV_CLASS = ClusterEnv


def action_masks(envs: VectorEnv) -> np.ndarray:
    """The stacked action masks ``(num_envs, mask_size)`` of any vector env of the servegym ids.

    The native vector env has ``action_masks()``; Gymnasium's ``SyncVectorEnv`` and ``AsyncVectorEnv``
    (``gym.make_vec(id, vectorization_mode="sync" | "async")``) build their class themselves, so their masks
    come through ``call("action_masks")``, which this stacks into the same array.
    """
    method = getattr(envs, "action_masks", None)
    if callable(method):
        return np.asarray(method(), dtype=bool)
    return np.stack([np.asarray(m, dtype=bool) for m in envs.call("action_masks")])
