"""``ServeEnv``: the machinery the four servegym envs share.

A subclass names its decision kind (``MODE``) and default scenario; everything else is here:
configuration (``default_config`` / ``configure``, highway-env style), scenario loading and per-episode
options, the spaces, one compiled kernel call per step (``kernels.env_call``), the info contract
(``info.py``), and the reward / termination / info hooks a subclass may override.
"""

from __future__ import annotations

import copy
import operator
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.error import ResetNeeded

from servegym.envs.gym import config as C
from servegym.envs.gym import kernels as K
from servegym.envs.gym.aux_state import EnvAux, make_aux
from servegym.envs.gym.info import batch_info, reward_components, route_info, scale_info
from servegym.envs.metrics import compute_metrics
from servegym.envs.scenario import Scenario, load_scenario, scenario_from_dict, with_window
from servegym.envs.sim import state as S
from servegym.envs.sim.simulator import Simulator

OPTION_KEYS = ("config", "scenario", "seed", "window_start_s")
_INT_TYPES = frozenset({int, np.int64, np.int32, np.intp})


class InvalidActionError(ValueError):
    """An action outside the action space, or masked for the pending decision."""


def invalid_action_error(
    who: str, lay: C.Layout, space: Any, code: int, dim: int, action: Any, mask: np.ndarray, ev: int
) -> InvalidActionError:
    """The error for an action the step kernel refused (``code``: ERR_RANGE or ERR_MASKED, on dimension
    ``dim``), naming the valid values of the pending decision's mask; single and vector envs share it."""
    if code == K.ERR_RANGE:
        return InvalidActionError(
            f"{who}: action {action!r} is outside the action space {space} "
            f"(dimension {dim} must lie in [0, {lay.nvec[dim] - 1}])"
        )
    start = sum(lay.nvec[:dim])
    valid = np.flatnonzero(mask[start : start + lay.nvec[dim]]).tolist()
    return InvalidActionError(
        f"{who}: action {action!r} is masked for the pending {C.DECISIONS[ev]!r} decision (dimension {dim}: "
        f"valid values {valid}); read info['action_mask'] or env.action_masks(), or set "
        f"invalid_action='noop_penalty' to turn invalid actions into penalized no-ops"
    )


def no_decision_error(who: str, scenario: Scenario) -> RuntimeError:
    return RuntimeError(
        f"{who}: scenario {scenario.name!r} gives no decision of this env's kind before its horizon "
        f"({scenario.horizon_s} s); lengthen horizon_s"
    )


class ServeEnv(gym.Env[dict[str, np.ndarray], Any]):
    """Base class of the servegym envs; see docs/envs.md for spaces, reward and the info contract."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}
    MODE: ClassVar[int] = C.MODE_CLUSTER
    DEFAULT_SCENARIO: ClassVar[str] = "chat_azure"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = C.base_config()
        cfg["scenario"] = cls.DEFAULT_SCENARIO
        return cfg

    def __init__(self, config: dict[str, Any] | None = None, render_mode: str | None = None, **kwargs: Any):
        name = type(self).__name__
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"{name}: render_mode {render_mode!r} not in {self.metadata['render_modes']}")
        self.render_mode = render_mode
        cfg = C.merge_config(self.default_config(), config, f"{name}(config=...)")
        self.config = C.merge_config(cfg, kwargs, f"{name}(...)")
        C.check_values(self.config, name)
        self.scenario = self._load_scenario(self.config, name)
        r = sum(p.max_replicas for p in self.scenario.pools)
        p = len(self.scenario.pools)
        cfg = self.config
        self.layout = C.Layout.build(
            self.MODE,
            cfg["max_replicas"] or r,
            cfg["max_pools"] or p,
            cfg["top_k"],
            cfg["scale_step"],
            cfg["rate_bins"],
            C.has_sessions(self.scenario) if cfg["session_features"] == "auto" else cfg["session_features"],
            C.has_disagg(self.scenario) if cfg["disagg_features"] == "auto" else cfg["disagg_features"],
        )
        self._check_fits(self.scenario, name)
        lay = self.layout
        self.observation_space = spaces.Dict(
            {g: spaces.Box(lay.low(g), 1.0, (len(n),), np.float32) for g, n in lay.names.items()}
        )
        if len(lay.nvec) == 1 and self.MODE != C.MODE_SCALE:
            self.action_space: spaces.Space = spaces.Discrete(lay.nvec[0])
        else:
            self.action_space = spaces.MultiDiscrete(np.array(lay.nvec, dtype=np.int64))
        self._slices = tuple(lay.offsets.items())
        self._discrete = isinstance(self.action_space, spaces.Discrete)
        self._act = np.zeros(len(lay.nvec), np.int64)
        self._sim: Simulator | None = None
        self._aux: EnvAux | None = None
        self._ev = S.EV_DONE
        self._done = True
        self._steps = 0
        self._mask = np.zeros(lay.mask_size, np.int8)
        self._history: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []

    # ------------------------------------------------------------------ configuration
    @property
    def obs_features(self) -> dict[str, tuple[str, ...]]:
        """Feature names of each observation key, in order."""
        return dict(self.layout.names)

    def configure(self, config: dict[str, Any]) -> None:
        """Update the config (takes effect at the next reset); space-sizing keys cannot change."""
        name = type(self).__name__
        new = C.merge_config(self.config, config, f"{name}.configure")
        for key in C.SPACE_KEYS:
            if new[key] != self.config[key]:
                raise C.ConfigError(
                    f"{name}.configure: config key {key!r} sizes the observation/action spaces and is fixed "
                    f"at construction ({self.config[key]!r}); build a new env to change it"
                )
        C.check_values(new, f"{name}.configure")
        scenario_keys = ("scenario", "scenario_overrides", "horizon_s")
        scenario = self.scenario
        if any(new[k] != self.config[k] for k in scenario_keys):
            scenario = self._load_scenario(new, f"{name}.configure")
            self._check_fits(scenario, f"{name}.configure")
        self.config, self.scenario = new, scenario

    def _load_scenario(self, cfg: dict[str, Any], where: str) -> Scenario:
        overrides = copy.deepcopy(cfg["scenario_overrides"])
        if cfg["horizon_s"] is not None:
            overrides["horizon_s"] = cfg["horizon_s"]
        sc = cfg["scenario"]
        if isinstance(sc, Scenario):
            if not overrides:
                return sc
            return scenario_from_dict(sc.model_dump(), source=f"{where}: {sc.name}", overrides=overrides)
        if not isinstance(sc, (str, Path)):
            raise C.ConfigError(f"{where}: config key 'scenario' must be a name, a path or a Scenario")
        return load_scenario(sc, overrides)

    def _check_fits(self, sc: Scenario, where: str) -> None:
        lay = self.layout
        r = sum(p.max_replicas for p in sc.pools)
        if r > lay.r_pad or len(sc.pools) > lay.p_pad:
            raise C.ConfigError(
                f"{where}: scenario {sc.name!r} has {r} replicas in {len(sc.pools)} pools but this env pads to "
                f"max_replicas={lay.r_pad}, max_pools={lay.p_pad}; build the env with larger max_replicas/max_pools"
            )

    def _episode_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """Apply the persistent options (config, scenario); return the per-episode ones (seed, window)."""
        name = type(self).__name__
        if options is None:
            return {}
        if not isinstance(options, dict):
            raise ValueError(f"{name}.reset: options must be a dict, got {type(options).__name__}")
        for key in options:
            if key not in OPTION_KEYS:
                raise ValueError(f"{name}.reset: unknown option {key!r}; known options: {list(OPTION_KEYS)}")
        update = dict(options.get("config") or {})
        if "scenario" in options:
            update["scenario"] = options["scenario"]
        if update:
            self.configure(update)
        seed = options.get("seed")
        if seed is not None and (
            isinstance(seed, (bool, np.bool_))
            or not isinstance(seed, (int, np.integer))
            or not 0 <= seed < 2**63
        ):
            raise ValueError(
                f"{name}.reset: option 'seed' (the workload seed) must be an int in [0, 2**63), got {seed!r}"
            )
        window = options.get("window_start_s")
        if window is not None:
            if not any(s.kind == "trace" for s in self.scenario.sources):
                raise ValueError(
                    f"{name}.reset: option 'window_start_s' needs a trace source; scenario "
                    f"{self.scenario.name!r} has none"
                )
            if isinstance(window, bool) or not isinstance(window, (int, float)) or window < 0:
                raise ValueError(
                    f"{name}.reset: option 'window_start_s' must be a number >= 0, got {window!r}"
                )
        return {"seed": seed, "window_start_s": window}

    def _episode_scenario(self, window_start_s: float | None) -> Scenario:
        return self.scenario if window_start_s is None else with_window(self.scenario, window_start_s)

    def new_episode(
        self, rng: np.random.Generator, opts: dict[str, Any], reset_seed: int | None = None
    ) -> tuple[Simulator, EnvAux]:
        """A fresh simulator and aux state.

        The workload seed is, in order: ``options["seed"]``, the config's ``sim_seed``, the seed passed to
        ``reset(seed=...)``, else a draw from ``rng``. So ``reset(seed=5)`` and ``reset(options={"seed": 5})``
        give the same workload, and the leaderboard's and README's episodes replay with plain ``reset(seed=)``.
        """
        seed = opts.get("seed")
        if seed is None:
            seed = self.config["sim_seed"]
        if seed is None:
            seed = reset_seed
        if seed is None:
            seed = int(rng.integers(0, 2**63 - 1))
        scenario = self._episode_scenario(opts.get("window_start_s"))
        sim = Simulator(scenario, seed=int(seed), control=C.CONTROLS[self.MODE], timing=self.config["timing"])
        return sim, make_aux(self.layout, self.config, scenario, sim)

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        # A reset that raises leaves the env needing a reset, with the config it had before (a bad option
        # must not stick and break every later plain reset).
        config, scenario = self.config, self.scenario
        self._done = True
        try:
            opts = self._episode_options(options)
            self._sim, self._aux = self.new_episode(self.np_random, opts, seed)
            _, _, ev, obs, mask, ii, ff, _ = K.env_call(self._sim.state, self._aux, self._act, True)
            if ev == S.EV_DONE:
                raise no_decision_error(type(self).__name__, self.scenario)
        except BaseException:
            self.config, self.scenario = config, scenario
            self._sim = self._aux = None
            raise
        self._ev, self._done, self._mask = ev, False, mask
        self._steps = 0
        self._history.clear()
        self._record()
        info = self._info(ev, mask, ii, ff, np.zeros(K.N_RC))
        return self._obs(obs), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._sim is None:
            raise ResetNeeded(f"{type(self).__name__}: call reset() before step()")
        if self._done:
            raise ResetNeeded(f"{type(self).__name__}: the episode is over; call reset()")
        self._write_action(action)
        status, dim, ev, obs, mask, ii, ff, rc = K.env_call(self._sim.state, self._aux, self._act, False)
        if status < 0:
            raise self._invalid(action, status, dim)
        self._ev, self._mask = ev, mask
        self._steps += 1
        terminated = bool(self._is_terminated(status))
        truncated = bool(self._is_truncated(status))
        info = self._info(ev, mask, ii, ff, rc)
        if terminated or truncated:
            self._done = True
            info["metrics"] = self.episode_metrics()
        if self.render_mode == "rgb_array":
            self._record()
        return self._obs(obs), float(self._reward(rc)), terminated, truncated, info

    def episode_metrics(self) -> dict[str, Any]:
        """The metrics of the episode so far, as if it ended now (requests in flight count as unfinished)."""
        if self._sim is None:
            raise ResetNeeded(f"{type(self).__name__}: call reset() before episode_metrics()")
        return compute_metrics(self._sim.outcome(final=True))

    def action_masks(self) -> np.ndarray:
        """Valid actions of the pending decision (MaskablePPO); per-dim masks concatenated for MultiDiscrete."""
        return self._mask.astype(bool)

    def render(self) -> str | np.ndarray | None:
        if self.render_mode is None or self._sim is None:
            return None
        from servegym.envs.gym import render

        if self.render_mode == "ansi":
            return render.ansi(self._sim, C.DECISIONS[self._ev])
        return render.rgb(self._history, self._sim, C.DECISIONS[self._ev])

    # ------------------------------------------------------------------ hooks (highway-env style)
    # A subclass may override _reward, _is_terminated and _is_truncated. The native vector env (vector.py)
    # calls the same three on its prototype env once per vector step, with a leading sub-env axis (rc of shape
    # [num_envs, N_RC], status of shape [num_envs]), so an override must work on both shapes: write it with
    # numpy operations (``rc[..., k]``, ``&``, ``|``), not ``float()``/``and``/``or``. The vector env resets
    # every sub-env that _is_terminated or _is_truncated says is done. _info builds one env's info dict; the
    # vector env batches the same info.py sections itself and calls _info only for a finished sub-env's
    # ``final_info``.
    def _reward(self, rc: np.ndarray) -> Any:
        """Weighted sum of the step's reward components (computed by the kernel with the config weights)."""
        return rc[..., K.N_RC - 1]

    def _is_terminated(self, status: Any) -> Any:
        """Workload exhausted and every request finished or dropped: nothing can happen any more."""
        return status == K.ST_TERMINATED

    def _is_truncated(self, status: Any) -> Any:
        """The simulated horizon was reached with work left, or the config's ``max_episode_steps`` (single
        envs only: the vector env refuses that key)."""
        limit = self.config["max_episode_steps"]
        truncated = status == K.ST_TRUNCATED
        return truncated if limit is None else truncated | (self._steps >= limit)

    def _info(
        self, ev: int, mask: np.ndarray, ii: np.ndarray, ff: np.ndarray, rc: np.ndarray
    ) -> dict[str, Any]:
        info: dict[str, Any] = {
            "decision": C.DECISIONS[ev],
            "action_mask": mask,
            "reward_components": reward_components(rc),
        }
        if self.config["info_features"]:
            if ev == S.EV_ROUTE:
                info.update(route_info(self.layout, ii, ff))
            elif ev == S.EV_BATCH:
                info.update(batch_info(self.layout, ii, ff))
            elif ev == S.EV_SCALE:
                info.update(scale_info(self.layout, ii, ff))
        return info

    def fork(self) -> ServeEnv:
        """An independent copy of this env mid-episode (CompilerGym's ``fork``).

        The copy holds its own simulator state (``Simulator.fork``: a copy of the packed arrays), env-side
        state, pending decision, mask, generator and spaces. Stepped with the same actions, the fork and the
        original return identical observations, rewards, infos and metrics; stepping one never moves the
        other. Config, scenario and layout are shared (they are replaced, never changed in place).
        """
        twin = copy.copy(self)
        if self._sim is not None:
            twin._sim = self._sim.fork()
        if self._aux is not None:
            twin._aux = EnvAux(*(a.copy() for a in self._aux))
        twin._mask = self._mask.copy()
        twin._act = self._act.copy()
        twin._history = list(self._history)
        if self._np_random is not None:
            twin._np_random = copy.deepcopy(self._np_random)
        twin.observation_space = copy.deepcopy(self.observation_space)
        twin.action_space = copy.deepcopy(self.action_space)
        return twin

    # ------------------------------------------------------------------ helpers
    @property
    def sim(self) -> Simulator | None:
        """The running simulator (read it, don't drive it: the env owns its decisions)."""
        return self._sim

    @property
    def batch_slots(self) -> np.ndarray:
        """The request id offered in each batch action slot (-1: empty), for the pending batch decision."""
        return self._aux.cand[0].copy()

    @property
    def pool_prices(self) -> np.ndarray:
        """USD per GPU-hour of each pool of the running scenario (what the cost reward bills)."""
        return self._aux.price[: len(self.scenario.pools)].copy()

    def _obs(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {g: flat[a:b] for g, (a, b) in self._slices}

    def _write_action(self, action: Any) -> None:
        if self._discrete and type(action) in _INT_TYPES:  # the common case, kept cheap
            self._act[0] = action if -(2**62) < action < 2**62 else -1
            return
        name = type(self).__name__
        if self._discrete:
            if isinstance(action, np.ndarray) and action.size == 1:
                action = action.reshape(())
            if isinstance(action, (bool, np.bool_)) or (
                isinstance(action, np.ndarray) and action.dtype == bool
            ):
                raise InvalidActionError(
                    f"{name}: action must be an integer in {self.action_space}, got the bool {action!r}"
                )
            try:
                a = operator.index(action)
            except TypeError:
                raise InvalidActionError(
                    f"{name}: action must be an integer in {self.action_space}, got {action!r}"
                ) from None
            self._act[0] = a if -(2**62) < a < 2**62 else -1
            return
        arr = np.asarray(action)
        if arr.shape != self._act.shape or arr.dtype.kind not in "iu":
            raise InvalidActionError(
                f"{name}: action must be an integer array of shape {self._act.shape} in {self.action_space}, "
                f"got {action!r}"
            )
        if (
            arr.dtype == np.uint64
        ):  # values >= 2**63 would wrap to negatives, which the range check rejects anyway
            arr = np.minimum(arr, np.uint64(2**62))
        self._act[:] = arr

    def _invalid(self, action: Any, status: int, dim: int) -> InvalidActionError:
        return invalid_action_error(
            type(self).__name__, self.layout, self.action_space, status, dim, action, self._mask, self._ev
        )

    def _record(self) -> None:
        if self.render_mode != "rgb_array" or self._sim is None:
            return
        st = self._sim.state
        kv = st.repi[S.XI_KV_USED] / st.repi[S.XI_KV_CAP]
        self._history.append((self._sim.now, st.repi[S.XI_QN].copy(), kv, st.repi[S.XI_STATE].copy()))
        del self._history[:-200]


class MetricsOnTruncation(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Put ``info["metrics"]`` into the last info of an episode cut by a wrapper, as the env does at its own ends.

    ``gym.make(id, max_episode_steps=n)`` truncates in Gymnasium's TimeLimit, outside the env, so the env
    cannot know the episode ended; wrap that env in this to get the metrics. Simpler: give the env the step
    limit itself, ``gym.make(id, config={"max_episode_steps": n})``. (Registering this wrapper in the spec's
    ``additional_wrappers`` would apply it automatically, but Gymnasium then refuses the native vector env.)
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if (terminated or truncated) and "metrics" not in info:
            info["metrics"] = self.env.unwrapped.episode_metrics()
        return obs, reward, terminated, truncated, info
