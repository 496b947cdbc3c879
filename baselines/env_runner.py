"""Run any policy (a registered heuristic, a ``+`` combination or a checkpoint) through a servegym env.

``run_env_episode`` plays one episode on one single env and returns the episode's metrics (the final
``info["metrics"]``, i.e. ``servegym.envs.metrics.compute_metrics``) and, with ``record=True``, the actions it took
as a compact integer array: one row per step, one column per action dimension (``Discrete`` envs have one
column, ``MultiDiscrete`` envs one per dimension), in the smallest unsigned dtype that holds the space.
``replay_actions`` feeds such an array back through the same env; since the env is deterministic given
its scenario and seed, the metrics reproduce bit for bit -- that is what the leaderboard validates.

Seeding: ``reset(seed=seed, options={"seed": seed})`` fixes the env's generator *and* makes ``seed`` the
workload seed, so the episode sees exactly the workload ``Simulator(scenario, seed=seed)`` sees (the
built-in rules' runs in ``servegym.baselines.harness``); the policy is reset with the same seed.

``env_episode_runner`` plugs this into ``servegym.baselines.harness.evaluate`` (``episode_runner=...``) so agents
and checkpoints are evaluated exactly like the built-in heuristics. The env id comes from the spec's
``policy_kwargs["env_id"]``, else from the checkpoint's run config, else ``Route-v0``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import servegym.envs  # noqa: F401  (registers the servegym env ids)
from servegym.baselines.episodes import EpisodeSpec
from servegym.baselines.policy import Policy, PolicyError
from servegym.baselines.registry import (
    SB3Policy,
    _accepted,
    is_checkpoint,
    make_policy,
    policy_spec,
    split_combination,
)
from servegym.configs import CONFIG_DIR
from servegym.envs.gym.base import InvalidActionError
from servegym.envs.gym.config import ConfigError, base_config
from servegym.envs.scenario import Scenario, load_scenario

# Keys of an agent's training env_config that describe the scenario rather than the env's spaces or
# features: the leaderboard replaces them with the suite's scenario.
SCENARIO_KEYS = ("scenario", "scenario_overrides", "horizon_s", "sim_seed")


class ReplayError(ValueError):
    """An action log that cannot be replayed (too short, too long, or an action the env refuses)."""


def make_env(
    env_id: str, scenario: str | Path | Scenario, env_config: Mapping[str, Any] | None = None
) -> Any:
    """The bare env (no Gymnasium checker/order wrappers: they cost a few us per step and check nothing
    the env does not check itself)."""
    cfg = dict(env_config or {})
    cfg["scenario"] = scenario if isinstance(scenario, Scenario) else str(scenario)
    return gym.make(env_id, disable_env_checker=True, **cfg).unwrapped


def scenario_policy_kwargs(scenario: str | Path | Scenario) -> dict[str, Any]:
    """Constructor arguments the heuristics take from the scenario (capacities, control interval,
    cost-aware thresholds), so a rule run through the env is parameterised as the core's own rule is."""
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    pol = sc.policies
    kw: dict[str, Any] = {
        "control_interval_s": sc.control_interval_s,
        "max_queue": pol.cost_aware_max_queue,
        "max_kv": pol.cost_aware_max_kv,
        "session_max_load": pol.session_affinity_max_load,
        "target_utilization": pol.target_utilization,
        "forecast_alpha": pol.forecast_alpha,
        "forecast_beta": pol.forecast_beta,
        "scale_down_cooldown_s": pol.scale_down_cooldown_s,
    }
    cap = pol.replica_capacity_rps
    if isinstance(cap, dict):  # per pool, in pool order (the env's pool index)
        kw["replica_capacity_rps"] = [float(cap.get(p.name, np.nan)) for p in sc.pools]
    elif cap is not None:
        kw["replica_capacity_rps"] = float(cap)
    return kw


def resolve_policy(policy: Policy | str | Path, scenario: str | Path | Scenario, **kwargs: Any) -> Policy:
    """A policy object: given as is, or built by name / checkpoint path (heuristics get the scenario's
    parameters; a checkpoint gets only ``kwargs``)."""
    if not isinstance(policy, (str, Path)):
        return policy

    if is_checkpoint(policy):
        return make_policy(policy, **kwargs)
    kw = {**scenario_policy_kwargs(scenario), **kwargs}
    parts = split_combination(str(policy))
    if len(parts) == 1:  # make_policy hands a single rule every keyword; keep those its factory takes
        kw = _accepted(policy_spec(next(iter(parts.values()))).factory, kw)
    return make_policy(policy, **kw)


# ---------------------------------------------------------------- a learned policy's spaces


def trained_space_config(policy: Any) -> dict[str, Any] | None:
    """The env config keys that sized a learned policy's spaces when it was trained (max_replicas,
    max_pools, top_k, scale_step, rate_bins, session_features); None for a heuristic, or when its training
    env cannot be rebuilt (then only the spaces themselves are compared, SB3Policy.check_spaces)."""
    net = getattr(policy, "net", None)
    lay = getattr(net, "layout", None)  # a native checkpoint stores its layout
    if lay is None and isinstance(policy, SB3Policy):
        if not hasattr(policy, "_trained_layout"):
            policy._trained_layout = _sb3_training_layout(policy)  # type: ignore[attr-defined]
        lay = policy._trained_layout  # type: ignore[attr-defined]
    if lay is None:
        return None
    return {
        "max_replicas": int(lay.r_pad),
        "max_pools": int(lay.p_pad),
        "top_k": int(lay.k),
        "scale_step": int(lay.scale_step),
        "rate_bins": int(lay.rate_bins),
        "session_features": bool(lay.sessions),
    }


def _sb3_training_layout(policy: SB3Policy) -> Any:
    """The layout of the env an SB3 checkpoint's run config names, if its spaces are the model's."""
    cfg = policy.run_config
    env_id, scenario = cfg.get("env_id"), cfg.get("scenario")
    if not env_id or not scenario:
        return None
    path = Path(str(scenario))
    if path.suffix in (".yaml", ".yml") and not path.exists() and path.parts[:1] == ("configs",):
        path = CONFIG_DIR.joinpath(*path.parts[1:])  # a checkout-relative path, in an installed package
    known = base_config()
    env_config = {k: v for k, v in dict(cfg.get("env_config") or {}).items() if k in known}
    try:
        env = make_env(env_id, path if path.suffix else str(scenario), env_config)
    except Exception:  # a scenario or env that no longer exists: fall back to comparing the spaces
        return None
    model = policy.model
    if model.observation_space != env.observation_space or model.action_space != env.action_space:
        return None
    return env.layout


def _describe(space: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in space.items())


def fit_env_config(policy: Any, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """Pad the env to a learned policy's trained sizes (keys the caller did not set); its space config."""
    space = trained_space_config(policy)
    if space is not None:
        for k, v in space.items():
            cfg.setdefault(k, v)
    return space


def make_agent_env(
    policy: Any,
    space: Mapping[str, Any] | None,
    make: Any,
    env_id: str,
    scenario: str | Path | Scenario,
    cfg: Mapping[str, Any],
) -> Any:
    """``make()`` the env; for a learned policy, a PolicyError that says what the agent was trained with and
    what the scenario needs when they differ (rather than a shape error deep inside the model)."""
    try:
        env = make()
    except ConfigError as e:
        if space is None:
            raise
        sc = (
            scenario
            if isinstance(scenario, Scenario)
            else load_scenario(scenario, cfg.get("scenario_overrides"))
        )
        r, p = sum(q.max_replicas for q in sc.pools), len(sc.pools)
        if r <= space["max_replicas"] and p <= space["max_pools"]:
            raise  # another config problem: its own message
        raise PolicyError(
            f"{_trained(policy, space)}; scenario {sc.name!r} needs max_replicas >= {r} and max_pools >= {p} "
            f"(its pools' max_replicas sum to {r}, in {p} pool(s)). An agent acts on clusters up to the size it "
            f"was trained on: run it on a scenario of at most {space['max_replicas']} replicas in "
            f"{space['max_pools']} pool(s), or train one for this scenario ({e})"
        ) from None
    lay = None
    if space is not None:
        lay = getattr(env, "layout", None) or getattr(getattr(env, "unwrapped", None), "layout", None)
    if space is not None and lay is not None:
        have = {
            "max_replicas": lay.r_pad,
            "max_pools": lay.p_pad,
            "top_k": lay.k,
            "scale_step": lay.scale_step,
            "rate_bins": lay.rate_bins,
            "session_features": bool(lay.sessions),
        }
        diff = {k: have[k] for k in space if have[k] != space[k]}
        if diff:
            raise PolicyError(
                f"{_trained(policy, space)}; this env ({env_id}) has {_describe(diff)}: leave those env_config "
                "keys unset (they default to the agent's) or set them to the agent's values"
            )
    return env


def _trained(policy: Any, space: Mapping[str, Any]) -> str:
    cfg = getattr(policy, "run_config", None) or {}
    where = f" on {cfg.get('env_id', '?')}, scenario {cfg.get('scenario', '?')}" if cfg else ""
    return f"checkpoint {getattr(policy, 'name', policy)!r} was trained{where} with {_describe(space)}"


def needs_info_features(policy: Any) -> bool:
    """Heuristics read ``info``'s raw features; a learned model reads only the observation and the mask
    (``info_features=False`` saves the dict building, about a fifth of a step)."""
    return not isinstance(policy, SB3Policy) and getattr(policy, "needs_info_features", True)


def action_dtype(nvec: tuple[int, ...]) -> np.dtype:
    top = max(nvec) - 1
    for dt in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


class _Flattener:
    """Turns a policy's answer into the env's action.

    Heuristic combinations on ``Cluster-v0`` answer only the pending decision (a replica, a batch slot, or
    one delta index per pool); the env wants the whole ``MultiDiscrete`` vector, whose unread dims must
    hold the placeholder the mask enables (route 0, batch "start", scale "hold").
    """

    def __init__(self, env: Any) -> None:
        lay = env.layout
        self.discrete = isinstance(env.action_space, gym.spaces.Discrete)
        self.ndim = len(lay.nvec)
        self.cluster = lay.act_offsets == (0, 1, 2)
        self.base = np.zeros(self.ndim, np.int64)
        if self.cluster:
            self.base[1] = lay.k  # "start the iteration"
            self.base[2:] = lay.scale_step  # "hold"
        self.p_pad = lay.p_pad
        # Cluster's mask concatenates every dim's; a per-decision heuristic reads only its own part
        nv, mo = lay.nvec, lay.mask_offsets
        self.mask_slices = (
            {
                "route": slice(mo[0], mo[0] + nv[0]),
                "batch": slice(mo[1], mo[1] + nv[1]),
                "scale": slice(mo[2], mo[2] + sum(nv[2:])),
            }
            if self.cluster
            else {}
        )

    def policy_info(self, info: dict[str, Any]) -> dict[str, Any]:
        """``info`` with the pending decision's part of a Cluster mask (heuristics only)."""
        sl = self.mask_slices.get(info["decision"])
        if sl is None:
            return info
        return {**info, "action_mask": info["action_mask"][sl]}

    def __call__(self, action: Any, decision: str) -> Any:
        if self.discrete:
            return int(action)
        arr = np.asarray(action, dtype=np.int64).reshape(-1)
        if arr.shape[0] == self.ndim:
            return arr
        if not self.cluster:
            raise ReplayError(f"action {action!r} has {arr.shape[0]} entries; the env needs {self.ndim}")
        out = self.base.copy()
        if decision == "route":
            out[0] = arr[0]
        elif decision == "batch":
            out[1] = arr[0]
        elif decision == "scale":
            out[2 : 2 + arr.shape[0]] = arr
        return out


def run_env_episode(
    policy: Policy | str | Path,
    env_id: str,
    scenario: str | Path | Scenario,
    seed: int,
    env_config: Mapping[str, Any] | None = None,
    record: bool = False,
    window_start_s: float | None = None,
    env: Any = None,
    observer: Any = None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Play one episode of ``policy`` on ``env_id`` / ``scenario`` with workload seed ``seed``.

    Returns ``(metrics, actions)``; ``actions`` is None unless ``record``. ``window_start_s`` replays a
    trace scenario from that point (the env's reset option). ``env`` reuses an env built by ``make_env``
    with the same arguments (it must match ``env_id``/``scenario``/``env_config``; it is not checked).
    ``observer`` sees the episode as the env gives it: ``observer.reset(obs, info)`` once, then
    ``observer.step(action, obs, reward, terminated, truncated, info)`` after each step, with the env's
    whole action and info (demonstration datasets, agents/demos.py); it must copy what it keeps.
    """
    pol = resolve_policy(policy, scenario)
    cfg = dict(env_config or {})
    cfg.setdefault("info_features", needs_info_features(pol))
    # an evaluated policy's invalid action is an error, never a silent no-op in its record
    cfg.setdefault("invalid_action", "raise")
    space = fit_env_config(pol, cfg)
    if env is None:
        env = make_agent_env(pol, space, lambda: make_env(env_id, scenario, cfg), env_id, scenario, cfg)
    if isinstance(pol, SB3Policy):
        pol.check_spaces(env)
    flat = _Flattener(env)
    if hasattr(pol, "bind_env"):  # a planner searches forks of the env's simulator (baselines/planning.py)
        pol.bind_env(env)
    pol.reset(seed=int(seed))
    options: dict[str, Any] = {"seed": int(seed)}
    if window_start_s is not None:
        options["window_start_s"] = float(window_start_s)
    obs, info = env.reset(seed=int(seed), options=options)
    if observer is not None:
        observer.reset(obs, info)
    rows: list[Any] = []
    act = pol.act
    step = env.step
    slice_mask = flat.cluster and cfg["info_features"]  # a learned Cluster agent takes the whole mask
    while True:
        action = flat(act(obs, flat.policy_info(info) if slice_mask else info), info["decision"])
        if record:
            rows.append(action)
        obs, reward, terminated, truncated, info = step(action)
        if observer is not None:
            observer.step(action, obs, reward, terminated, truncated, info)
        if terminated or truncated:
            break
    actions = None
    if record:
        actions = np.asarray(rows, dtype=np.int64).reshape(len(rows), flat.ndim)
        actions = actions.astype(action_dtype(tuple(env.layout.nvec)))
    return info["metrics"], actions


def replay_actions(
    actions: np.ndarray,
    env_id: str,
    scenario: str | Path | Scenario,
    seed: int,
    env_config: Mapping[str, Any] | None = None,
    window_start_s: float | None = None,
) -> dict[str, Any]:
    """Feed a recorded action log through the env; the episode's metrics. Raises ``ReplayError`` if the
    log ends before the episode, outlasts it, or holds an action the env refuses."""

    # replay reads no features, and an action the env refuses must fail the replay, not become a no-op
    cfg = {**dict(env_config or {}), "info_features": False, "invalid_action": "raise"}
    a = np.asarray(actions)
    if a.dtype.kind not in "iu":  # a float log would be truncated to other actions than were logged
        raise ReplayError(f"action log must hold integers, got dtype {a.dtype}")
    env = make_env(env_id, scenario, cfg)
    a = a.astype(np.int64)
    if a.ndim != 2 or a.shape[1] != len(env.layout.nvec):
        raise ReplayError(f"action log has shape {a.shape}; {env_id} needs (steps, {len(env.layout.nvec)})")
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    rows = a[:, 0].tolist() if discrete else list(a)
    options: dict[str, Any] = {"seed": int(seed)}
    if window_start_s is not None:
        options["window_start_s"] = float(window_start_s)
    env.reset(seed=int(seed), options=options)
    for i, row in enumerate(rows):
        try:
            _, _, terminated, truncated, info = env.step(row)
        except InvalidActionError as e:
            raise ReplayError(f"step {i}: the env refuses the logged action: {e}") from None
        if terminated or truncated:
            if i != len(rows) - 1:
                raise ReplayError(f"the episode ended at step {i + 1} but the log holds {len(rows)} actions")
            return info["metrics"]
    raise ReplayError(f"the log's {len(rows)} actions end before the episode does")


# ---------------------------------------------------------------- harness plug-in


def spec_env(spec: EpisodeSpec) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(env id, env config, policy kwargs) of a harness spec: ``policy_kwargs`` may carry ``env_id`` and
    ``env_config``; the rest goes to ``make_policy``. The spec's overrides become ``scenario_overrides``."""
    kw = dict(spec.policy_kwargs or {})
    env_id = kw.pop("env_id", None)
    env_config = dict(kw.pop("env_config", None) or {})
    if spec.overrides:
        env_config["scenario_overrides"] = copy.deepcopy(dict(spec.overrides))
    return env_id, env_config, kw


def env_episode_runner(spec: EpisodeSpec) -> dict[str, Any]:
    """``servegym.baselines.harness`` episode runner that drives the env with the policy (picklable, top level).

    ``evaluate("jsq", "chat_azure", 5, episode_runner=env_episode_runner,
    policy_kwargs={"env_id": "servegym/Route-v0"})``.
    """
    env_id, env_config, kw = spec_env(spec)
    scenario = spec.scenario
    sc = load_scenario(scenario, env_config.get("scenario_overrides"))
    pol = resolve_policy(spec.policy, sc, **kw)
    if env_id is None:
        env_id = getattr(pol, "env_id", None) or "servegym/Route-v0"
    if spec.timing is not None:  # the versions of an env id differ only in timing (envs/__init__.py)
        env_id = f"{env_id.rsplit('-', 1)[0]}-{spec.timing}"
    metrics, _ = run_env_episode(
        pol, env_id, scenario, spec.seed, env_config, window_start_s=spec.window_start_s
    )
    return metrics
