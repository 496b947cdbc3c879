"""Scenario families: one base scenario and named parameters (load, cluster size, length mix, heterogeneity,
trace window), with separate train, validation and test values, so that an agent trains on a distribution
of scenarios and is tested on held-out members.

A family file (YAML)::

    name: hetero_route
    base: hetero_route.yaml            # relative to the family file
    params:
      load:                            # one or more key paths into the scenario, set to the same value
        path: sources.0.arrival.rate_per_s
        train: [7.0, 8.0, 9.0, 10.0]
        validation: [8.5]
        test: [9.5]
      a40_replicas:
        path: [pools.2.min_replicas, pools.2.max_replicas, pools.2.initial_replicas]
        train: [2, 3]
        test: [4]

A member is one value per parameter; a split's members are the product of that split's values (a parameter
without values in a split keeps the base scenario's). A member is held out when some parameter takes a value
the train split never uses. ``sample(rng, "train")`` draws a member for one training episode; pass the
scenario to an env as ``reset(options={"scenario": ...})`` with ``max_replicas``/``max_pools`` from
``padding()`` fixed at construction. Errors name the family file and the key.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from servegym.envs.scenario import Scenario, ScenarioError, scenario_from_dict

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Param:
    name: str
    paths: tuple[str, ...]
    values: dict[str, tuple[Any, ...]]  # split -> values


@dataclass(frozen=True)
class Family:
    name: str
    path: Path
    base: dict[str, Any]
    params: tuple[Param, ...]

    def choices(self, split: str) -> list[dict[str, Any]]:
        """One ``{parameter: value}`` per member of ``split`` (the product of the split's values)."""
        if split not in SPLITS:
            raise ValueError(f"{self.path}: unknown split {split!r}; splits: {SPLITS}")
        axes = [(p.name, p.values[split]) for p in self.params if p.values.get(split)]
        return [
            dict(zip((n for n, _ in axes), combo, strict=True))
            for combo in itertools.product(*(v for _, v in axes))
        ]

    def members(self, split: str) -> list[tuple[str, Scenario]]:
        """(label, scenario) of every member of ``split``, e.g. ``hetero_route[load=9.5,a40_replicas=4]``."""
        return [(self.label(c), self.member(c)) for c in self.choices(split)]

    def label(self, choice: dict[str, Any]) -> str:
        return f"{self.name}[" + ",".join(f"{k}={v}" for k, v in choice.items()) + "]"

    def member(self, choice: dict[str, Any]) -> Scenario:
        """The scenario with each named parameter set to its value in ``choice``."""
        doc = copy.deepcopy(self.base)
        known = {p.name: p for p in self.params}
        for name, value in choice.items():
            if name not in known:
                raise ValueError(f"{self.path}: no parameter {name!r}; parameters: {sorted(known)}")
            for key in known[name].paths:
                _set(doc, key, value, f"{self.path}: params.{name}.path {key!r}")
        doc["name"] = self.label(choice)
        return scenario_from_dict(doc, source=f"{self.path} {self.label(choice)}")

    def sample(self, rng: np.random.Generator, split: str = "train") -> Scenario:
        """One member of ``split``, each parameter's value drawn uniformly from the split's values."""
        choice = {}
        for p in self.params:
            vals = p.values.get(split, ())
            if vals:
                choice[p.name] = vals[int(rng.integers(len(vals)))]
        return self.member(choice)

    def padding(self) -> dict[str, int]:
        """``max_replicas``/``max_pools`` that fit every member of every split (an env's fixed spaces)."""
        r = p = 0
        for split in SPLITS:
            for _, sc in self.members(split):
                r = max(r, sum(pool.max_replicas for pool in sc.pools))
                p = max(p, len(sc.pools))
        return {"max_replicas": r, "max_pools": p}

    def held_out(self, split: str = "test") -> bool:
        """Every member of ``split`` sets some parameter to a value the train split never uses."""
        train = {p.name: set(p.values["train"]) for p in self.params}
        return all(any(v not in train[k] for k, v in c.items()) for c in self.choices(split))


def _set(doc: dict[str, Any], key: str, value: Any, where: str) -> None:
    cur: Any = doc
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                raise ScenarioError(f"{where}: {'.'.join(parts[:i])} has {len(cur)} items, no {part!r}")
            if last:
                cur[int(part)] = value
            else:
                cur = cur[int(part)]
        elif isinstance(cur, dict):
            if part not in cur and not last:
                raise ScenarioError(f"{where}: no key {'.'.join(parts[: i + 1])!r} in the base scenario")
            if last:
                cur[part] = value
            else:
                cur = cur[part]
        else:
            raise ScenarioError(f"{where}: {'.'.join(parts[:i])!r} is a value, not a mapping or list")


def load_family(path: str | Path) -> Family:
    """Load a family file and check that every member of every split is a valid scenario."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"{path}: no such family file")
    raw = yaml.safe_load(path.read_text()) or {}
    where = str(path)
    for key in ("name", "base", "params"):
        if key not in raw:
            raise ScenarioError(f"{where}: missing key {key!r}")
    base_path = path.parent / raw["base"]
    if not base_path.is_file():
        raise ScenarioError(f"{where}: base: no such scenario file {base_path}")
    params = []
    for name, spec in raw["params"].items():
        w = f"{where}: params.{name}"
        if not isinstance(spec, dict) or "path" not in spec:
            raise ScenarioError(f"{w}: needs a 'path' (a key path or a list of them) and split values")
        unknown = set(spec) - {"path", *SPLITS}
        if unknown:
            raise ScenarioError(f"{w}: unknown keys {sorted(unknown)}; known: path, {', '.join(SPLITS)}")
        paths = (spec["path"],) if isinstance(spec["path"], str) else tuple(spec["path"])
        values = {s: tuple(spec[s]) for s in SPLITS if spec.get(s)}
        if "train" not in values:
            raise ScenarioError(f"{w}: needs train values")
        params.append(Param(name, paths, values))
    fam = Family(str(raw["name"]), path, yaml.safe_load(base_path.read_text()), tuple(params))
    for split in SPLITS:
        fam.members(split)  # every member must load: errors name the file, the member and the key
    return fam
