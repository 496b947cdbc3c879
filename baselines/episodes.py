"""What one evaluation episode is (``EpisodeSpec``), how a policy that is a rule of the core runs it
(``builtin_episode``), and the type of any episode runner.

The harness (harness.py) runs many specs in a process pool; the env-driven runner (env_runner.py) plays one
spec through an env. Both read these types from here, so neither imports the other for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from servegym.baselines.registry import builtin_policies
from servegym.envs.metrics import compute_metrics
from servegym.envs.scenario import ScenarioError
from servegym.envs.sim.simulator import Simulator


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to run: a policy (name or checkpoint), a scenario (name or path) and a seed."""

    policy: str
    scenario: str
    seed: int
    overrides: Mapping[str, Any] | None = None  # deep-merged over the scenario file
    policy_kwargs: Mapping[str, Any] | None = None  # for make_policy (env-driven runners)
    # Timing version (envs/sim/timing.py): None runs the core's rules with the Simulator's default (v1) and an
    # agent on its env id as given; "v0"/"v1" pins both (an env id's version is set to it).
    timing: str | None = None


EpisodeRunner = Callable[[EpisodeSpec], dict[str, Any]]


def scenario_overrides(spec: EpisodeSpec) -> dict[str, Any]:
    """The spec's overrides with the built-in policies of ``spec.policy`` merged in; error if it has none."""
    pols = builtin_policies(spec.policy)
    if pols is None:
        raise NotImplementedError(
            f"policy {spec.policy!r} is not a rule of the simulator core: evaluate it with an env-driven "
            "episode runner (evaluate(..., episode_runner=...))"
        )
    over = json.loads(json.dumps(dict(spec.overrides or {})))  # a deep copy
    over.setdefault("policies", {})
    if not isinstance(over["policies"], dict):
        raise ScenarioError(f"overrides.policies must be a mapping, got {over['policies']!r}")
    over["policies"].update(pols)
    return over


def builtin_episode(spec: EpisodeSpec) -> dict[str, Any]:
    """Run the episode with the core's built-in rules (selected through scenario overrides)."""
    sim = Simulator(spec.scenario, seed=spec.seed, overrides=scenario_overrides(spec), timing=spec.timing)
    return compute_metrics(sim.run())
