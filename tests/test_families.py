"""Scenario families (envs/families.py): parameterised scenarios with held-out test members."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import servegym.envs  # noqa: F401
from servegym.configs import SUITE_DIR
from servegym.envs.families import load_family
from servegym.envs.scenario import ScenarioError

FAMILIES = sorted((SUITE_DIR / "v1" / "families").glob("*.yaml"))


@pytest.mark.parametrize("path", FAMILIES, ids=lambda p: p.stem)
def test_shipped_families_load_and_hold_their_test_members_out(path):
    fam = load_family(path)
    train = fam.members("train")
    test = fam.members("test")
    assert len(train) >= 2 and test
    assert fam.held_out("test")
    assert not {label for label, _ in train} & {label for label, _ in test}
    # a member differs from the base exactly where its parameters say
    label, sc = test[0]
    choice = fam.choices("test")[0]
    assert sc.name == label and all(f"{k}={v}" in label for k, v in choice.items())


def test_one_env_trains_on_sampled_members_and_evaluates_held_out_ones():
    fam = load_family(SUITE_DIR / "v1" / "families" / "hetero_route.yaml")
    pad = fam.padding()
    assert pad["max_replicas"] == 1 + 1 + 4  # the largest member: four A40s
    env = gym.make("servegym/Route-v0", scenario=fam.members("train")[0][1], horizon_s=20.0, **pad).unwrapped
    rng = np.random.default_rng(0)
    seen = set()
    for split in ("train", "train", "train", "test"):
        sc = fam.sample(rng, split)
        seen.add(sc.name)
        env.reset(seed=0, options={"scenario": sc, "config": {"horizon_s": 20.0}})
        n_rep = sum(p.max_replicas for p in sc.pools)
        assert env.action_masks()[n_rep:].sum() == 0  # padding slots are masked
    assert len(seen) >= 2


def test_bad_family_files_name_the_file_and_key(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text((SUITE_DIR / "v1" / "hetero_route.yaml").read_text())
    bad = tmp_path / "fam.yaml"
    bad.write_text(
        "name: f\nbase: base.yaml\nparams:\n  load: {path: sources.7.arrival.rate_per_s, train: [1.0]}\n"
    )
    with pytest.raises(ScenarioError, match=r"fam.yaml: params.load.path .*has 1 items, no '7'"):
        load_family(bad)
    bad.write_text(
        "name: f\nbase: base.yaml\nparams:\n  load: {path: sources.0.arrival.rate_per_s, test: [1.0]}\n"
    )
    with pytest.raises(ScenarioError, match="params.load: needs train values"):
        load_family(bad)
    bad.write_text(
        "name: f\nbase: base.yaml\nparams:\n  load: {path: sources.0.arrival.rate_per_s, train: [-1.0]}\n"
    )
    with pytest.raises(ScenarioError, match="fam.yaml"):
        load_family(bad)
