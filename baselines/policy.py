"""The policy interface shared by heuristic baselines and learned agents.

A policy answers the decisions of a servegym env: ``act(obs, info) -> action`` for one env,
``act_batch(obs, infos) -> actions`` for a vector env, and ``reset(seed)`` at the start of an episode (it
reseeds any randomness and clears per-episode state such as a round-robin pointer or a forecast).

Heuristics read only ``info`` (features and ``action_mask``), never the simulator. The ``info`` contract of
the envs (issue 3) is summarised in docs/baselines.md. In a vector env each sub-env has its own state: a
stateful policy keeps one state per env index.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from servegym.envs.rules import DECISION_KINDS

DECISIONS = DECISION_KINDS


@runtime_checkable
class Policy(Protocol):
    """What scripts, the harness and the leaderboard need from any policy."""

    name: str

    def reset(self, seed: int | None = None) -> None: ...

    def act(self, obs: Any, info: Mapping[str, Any]) -> Any: ...

    def act_batch(self, obs: Any, infos: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> np.ndarray: ...


class PolicyError(ValueError):
    """A policy was given a decision or an info dict it cannot answer; the message names the policy."""


def unbatch_infos(infos: Sequence[Mapping[str, Any]] | Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    """Per-env info dicts from a vector env's ``infos``.

    Accepts a list of dicts, or gymnasium's vector form: one dict whose values are arrays over envs, with
    ``_key`` boolean masks saying which envs set ``key`` (nested dicts are split the same way).
    """
    if not isinstance(infos, Mapping):
        out = [dict(i) for i in infos]
        if len(out) != n:
            raise PolicyError(f"act_batch: {len(out)} info dicts for {n} observations")
        return out
    return [_slice_info(infos, e) for e in range(n)]


# Values a vector env may give once for all sub-envs (1-D), rather than one row per sub-env.
_SHARED_KEYS = {"scale_deltas"}


def _slice_info(infos: Mapping[str, Any], e: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in infos.items():
        if key.startswith("_"):
            continue
        if key in _SHARED_KEYS and np.ndim(val) <= 1:
            out[key] = val
            continue
        present = infos.get(f"_{key}")
        if present is not None and not bool(np.asarray(present)[e]):
            continue
        if isinstance(val, Mapping):
            out[key] = _slice_info(val, e)
        else:
            out[key] = val[e]
    return out


class BasePolicy(ABC):
    """A policy with per-env state and a seeded generator per env (for rules that randomise)."""

    name: str = ""
    #: the decisions this policy answers
    decisions: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._seed: int | None = None
        self._states: dict[int, dict[str, Any]] = {}

    def reset(self, seed: int | None = None) -> None:
        self._seed = seed
        self._states = {}

    def state(self, env: int = 0) -> dict[str, Any]:
        """The mutable per-episode state of sub-env ``env`` (created on first use)."""
        st = self._states.get(env)
        if st is None:
            # One independent stream per env, all derived from the reset seed: runs repeat exactly.
            seq = np.random.SeedSequence(self._seed if self._seed is not None else 0, spawn_key=(env,))
            st = {"rng": np.random.default_rng(seq), "env": env}
            self.init_state(st)
            self._states[env] = st
        return st

    def init_state(self, st: dict[str, Any]) -> None:  # noqa: B027 -- an optional hook, not abstract
        """Fill a fresh per-env state; stateless rules keep only the generator."""

    def act(self, obs: Any, info: Mapping[str, Any]) -> Any:
        return self.decide(obs, info, self.state(0))

    def act_batch(self, obs: Any, infos: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> np.ndarray:
        n = _batch_len(obs, infos)
        per_env = unbatch_infos(infos, n)
        actions = [self.decide(_index(obs, e), per_env[e], self.state(e)) for e in range(n)]
        return np.stack([np.asarray(a) for a in actions])

    @abstractmethod
    def decide(self, obs: Any, info: Mapping[str, Any], st: dict[str, Any]) -> Any:
        """The action for one env given its info and per-env state."""

    def check_decision(self, info: Mapping[str, Any]) -> str:
        """The pending decision kind; an error naming this policy if it does not answer it."""
        kind = info.get("decision", self.decisions[0] if len(self.decisions) == 1 else None)
        if kind not in self.decisions:
            raise PolicyError(
                f"policy {self.name!r} answers {list(self.decisions)} decisions, got decision={kind!r}"
            )
        return kind

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _batch_len(obs: Any, infos: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> int:
    if not isinstance(infos, Mapping):
        return len(infos)
    if isinstance(obs, Mapping):
        return len(next(iter(obs.values())))
    return len(obs)


def _index(obs: Any, e: int) -> Any:
    if obs is None:
        return None
    if isinstance(obs, Mapping):
        return {k: v[e] for k, v in obs.items()}
    return obs[e]


def info_section(policy: str, info: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``info[key]``, or an error naming the policy and the missing key."""
    try:
        sec = info[key]
    except KeyError:
        raise PolicyError(f"policy {policy!r}: info has no {key!r} section (keys: {sorted(info)})") from None
    return sec


def feature(policy: str, section: Mapping[str, Any], key: str, where: str) -> np.ndarray:
    try:
        return np.asarray(section[key])
    except KeyError:
        raise PolicyError(
            f"policy {policy!r}: info[{where!r}] has no {key!r} (keys: {sorted(section)})"
        ) from None
