"""Policies by name (Vidur-style registry), so scripts and the leaderboard take a name or a checkpoint path.

Names:
- a single rule: a batching (``"edf"``), routing (``"jsq"``) or scaling (``"reactive"``) baseline;
- a combination for ``Cluster-v0``: rules joined by ``+``, at most one per decision kind, in any order
  (``"edf+jsq+reactive"``);
- a path to a checkpoint (a file that exists, or a name ending in ``.zip``/``.pt``), loaded by the loader
  registered for its suffix (``register_checkpoint_loader``).

Every built-in name is also a rule of the simulator core, so ``builtin_policies(name)`` gives the scenario
override (``{"batching": ..., "routing": ..., "scaling": ...}``) that runs it inside the core, exactly.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from servegym.baselines.batching import BatchingRule
from servegym.baselines.planning import DESCRIPTIONS as PLANNER_DESCRIPTIONS
from servegym.baselines.planning import make_planner
from servegym.baselines.policy import BasePolicy, Policy, PolicyError, unbatch_infos
from servegym.baselines.routing import RoutingRule
from servegym.baselines.sageserve import SageServeScaler
from servegym.baselines.scaling import ScalingRule
from servegym.envs.rules import DECISION_KINDS, POLICY_KEY, RULES

KIND_TO_POLICY_KEY = POLICY_KEY


@dataclass(frozen=True)
class PolicySpec:
    name: str
    kind: str  # "batch", "route", "scale" (the decision it answers)
    factory: Callable[..., Policy]
    description: str = ""
    builtin: bool = False  # also a rule of the simulator core (runs exactly via scenario overrides)
    planner: bool = False  # a search over simulator forks (baselines/planning.py), not a heuristic
    # a scenario-specific controller that binds the env (baselines/sageserve.py): run on purpose, never swept
    controller: bool = False


_REGISTRY: dict[str, PolicySpec] = {}
_CHECKPOINT_LOADERS: dict[str, Callable[..., Policy]] = {}
# The module that owns the training run's folder layout and registers the loaders of its checkpoints.
CHECKPOINT_PLUGIN = "servegym.agents.checkpoints"


def register(
    name: str,
    kind: str,
    factory: Callable[..., Policy],
    description: str = "",
    builtin: bool = False,
    overwrite: bool = False,
    planner: bool = False,
    controller: bool = False,
) -> None:
    """Register a policy factory under ``name`` for decisions of ``kind``."""
    if kind not in KIND_TO_POLICY_KEY:
        raise ValueError(f"register({name!r}): kind must be one of {list(KIND_TO_POLICY_KEY)}, got {kind!r}")
    if "+" in name:
        raise ValueError(f"register({name!r}): '+' joins names of a combination and cannot be in a name")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"register({name!r}): already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = PolicySpec(name, kind, factory, description, builtin, planner, controller)


def register_checkpoint_loader(suffix: str, loader: Callable[..., Policy]) -> None:
    """``loader(path, **kw) -> Policy`` for checkpoint files ending in ``suffix`` (e.g. ``".zip"``)."""
    _CHECKPOINT_LOADERS[suffix] = loader


def list_policies(kind: str | None = None, planners: bool = False) -> list[str]:
    """Registered single-rule names (combine them with ``+``), optionally only those answering ``kind``.

    The heuristics only, unless ``planners``: the planning baselines (``oracle_*``, ``mpc_*``) and the
    scenario-specific controllers (``sageserve``) are run on purpose (scripts/headroom.py, the leaderboard's
    reference rows, scripts/sageserve.py), never swept as heuristics.
    """
    return [
        n
        for n, s in _REGISTRY.items()
        if (kind is None or s.kind == kind) and (planners or not (s.planner or s.controller))
    ]


def policy_spec(name: str) -> PolicySpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PolicyError(f"unknown policy {name!r}; known: {list_policies()}") from None


def split_combination(name: str) -> dict[str, str]:
    """``"edf+jsq+reactive"`` -> ``{"batch": "edf", "route": "jsq", "scale": "reactive"}``."""
    parts = [p.strip() for p in name.split("+")]
    out: dict[str, str] = {}
    for part in parts:
        spec = policy_spec(part)
        if spec.kind in out:
            raise PolicyError(
                f"policy {name!r}: {out[spec.kind]!r} and {part!r} both answer {spec.kind!r} decisions"
            )
        out[spec.kind] = part
    return out


def is_checkpoint(name_or_path: str | Path) -> bool:
    p = Path(name_or_path)
    return p.suffix in (".zip", ".pt", ".pth", ".ckpt") or (p.exists() and p.is_file())


def builtin_policies(name: str) -> dict[str, str] | None:
    """The scenario ``policies`` override that runs ``name`` inside the core, or None if it cannot be."""
    if is_checkpoint(name):
        return None
    parts = split_combination(name)
    if not all(_REGISTRY[n].builtin for n in parts.values()):
        return None
    return {KIND_TO_POLICY_KEY[k]: n for k, n in parts.items()}


def make_policy(name_or_path: str | Path, **kwargs: Any) -> Policy:
    """A fresh policy by registered name, ``+`` combination, or checkpoint path.

    ``kwargs`` go to the factories; for a combination each factory gets the keyword arguments its rule
    accepts (e.g. ``replica_capacity_rps`` reaches the scaler, ``max_queue`` the router).
    """
    if is_checkpoint(name_or_path):
        path = Path(name_or_path)
        if path.suffix not in _CHECKPOINT_LOADERS:
            # the trained agents' loaders are a plugin: agents/checkpoints.py registers them when imported
            # (by name, so that this package never imports agents/ and torch loads only for a checkpoint)
            importlib.import_module(CHECKPOINT_PLUGIN)
        loader = _CHECKPOINT_LOADERS.get(path.suffix)
        if loader is None:
            raise PolicyError(
                f"no checkpoint loader for {str(path)!r} (suffix {path.suffix!r}); "
                f"registered: {sorted(_CHECKPOINT_LOADERS)}"
            )
        return loader(path, **kwargs)
    name = str(name_or_path)
    parts = split_combination(name)
    if len(parts) == 1:
        spec = _REGISTRY[name.strip()]
        return spec.factory(**kwargs)
    subs = {
        kind: _REGISTRY[n].factory(**_accepted(_REGISTRY[n].factory, kwargs)) for kind, n in parts.items()
    }
    return ClusterPolicy(name, subs)


def _accepted(factory: Callable[..., Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return dict(kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}


class ClusterPolicy(BasePolicy):
    """One sub-policy per decision kind; each decision goes to the one that answers ``info["decision"]``."""

    def __init__(self, name: str, subs: Mapping[str, Policy]) -> None:
        super().__init__()
        self.name = name
        self.subs = dict(subs)
        self.decisions = tuple(self.subs)

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        # distinct, reproducible seeds per sub-policy
        for j, kind in enumerate(sorted(self.subs)):
            sub_seed = None if seed is None else int(np.random.SeedSequence([seed, j]).generate_state(1)[0])
            self.subs[kind].reset(sub_seed)

    def decide(self, obs: Any, info: Mapping[str, Any], st: dict[str, Any]) -> Any:
        kind = info.get("decision")
        sub = self.subs.get(kind)
        if sub is None:
            raise PolicyError(
                f"policy {self.name!r} has no rule for decision={kind!r}; it answers {list(self.subs)}"
            )
        if isinstance(sub, BasePolicy):
            return sub.decide(obs, info, sub.state(st["env"]))
        return sub.act(obs, info)

    def bind_env(self, env: Any) -> None:
        """Hand the env to the sub-policies that plan on it (baselines/planning.py)."""
        for sub in self.subs.values():
            if hasattr(sub, "bind_env"):
                sub.bind_env(env)

    @property
    def needs_info_features(self) -> bool:
        return any(getattr(s, "needs_info_features", True) for s in self.subs.values())


def _register_builtins() -> None:
    # partial() keeps the rule classes' keyword signatures visible to _accepted()
    rule_class = {"batch": BatchingRule, "route": RoutingRule, "scale": ScalingRule}
    for kind, table in RULES.items():
        for rule in table:
            register(
                rule.name,
                kind,
                functools.partial(rule_class[kind], rule.name),
                rule.description,
                builtin=True,
            )
    for kind in DECISION_KINDS:
        for clairvoyant, prefix in ((True, "oracle"), (False, "mpc")):
            register(
                f"{prefix}_{kind}",
                kind,
                make_planner(kind, clairvoyant),
                PLANNER_DESCRIPTIONS[prefix].format(kind=kind),
                planner=True,
            )
    register(
        "sageserve",
        "scale",
        SageServeScaler,
        "SageServe (Jaiswal et al. 2025): hourly seasonal forecast + integer program of instances per model "
        "and region (scipy milp / HiGHS) + reactive adjustments guided by the plan",
        controller=True,
    )


class SB3Policy:
    """A trained SB3 model as a policy: deterministic ``predict``, with the action mask when it takes one."""

    def __init__(self, name: str, model: Any, obs_norm: Any = None) -> None:
        self.name = name
        self.model = model
        self.obs_norm = obs_norm  # a VecNormalize whose statistics were saved with the model, or None
        self.env_id: str | None = None  # the env the model was trained on, when its run config says
        self.run_config: dict[str, Any] = {}  # the training run's config.yaml, when there is one

    def check_spaces(self, env: Any) -> None:
        """PolicyError naming both shapes when ``env``'s spaces are not the ones the model was trained on
        (else the first ``predict`` fails deep in numpy on mismatched operands)."""
        trained_obs, trained_act = self.model.observation_space, self.model.action_space
        if trained_obs == env.observation_space and trained_act == env.action_space:
            return

        def shapes(space: Any) -> Any:
            sub = getattr(space, "spaces", None)
            return {k: v.shape for k, v in sub.items()} if isinstance(sub, Mapping) else space

        cfg = self.run_config
        trained = f"env {cfg.get('env_id', '?')}, scenario {cfg.get('scenario', '?')}, env_config {cfg.get('env_config', {})}"
        raise PolicyError(
            f"checkpoint {self.name!r} does not fit this env: it was trained with observations "
            f"{shapes(trained_obs)} and actions {trained_act} ({trained}), this env gives observations "
            f"{shapes(env.observation_space)} and actions {env.action_space}; build the env with the agent's "
            "padding (max_replicas, max_pools) and the same top_k / scale_step / rate_bins"
        )

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.model.set_random_seed(seed)

    def _predict(self, obs: Any, masks: Any) -> Any:

        if self.obs_norm is not None:
            obs = self.obs_norm.normalize_obs(obs)
        if masks is not None and "action_masks" in inspect.signature(self.model.predict).parameters:
            return self.model.predict(obs, deterministic=True, action_masks=masks)[0]
        return self.model.predict(obs, deterministic=True)[0]

    def act(self, obs: Any, info: Mapping[str, Any]) -> Any:
        return self._predict(obs, info.get("action_mask"))

    def act_batch(self, obs: Any, infos: Any) -> np.ndarray:

        per_env = unbatch_infos(
            infos, len(obs) if not isinstance(obs, Mapping) else len(next(iter(obs.values())))
        )
        masks = [i.get("action_mask") for i in per_env]
        stacked = None if any(m is None for m in masks) else np.stack([np.asarray(m) for m in masks])
        return np.asarray(self._predict(obs, stacked))


_register_builtins()
