"""The rule tables of envs/rules.py are the one list of rules: every consumer derives from them."""

from __future__ import annotations

import pytest

from servegym.baselines.registry import builtin_policies, list_policies, make_policy, policy_spec
from servegym.envs import rules
from servegym.envs.scenario import ScenarioError, scenario_from_dict
from servegym.envs.sim import policies
from tests.conftest import tiny_dict


@pytest.mark.parametrize("kind", rules.DECISION_KINDS)
def test_every_rule_is_a_scenario_name_a_core_id_and_a_registered_baseline(kind):
    table = rules.RULES[kind]
    key = rules.POLICY_KEY[kind]
    core_ids = {"batch": policies.BATCHING_IDS, "route": policies.ROUTING_IDS, "scale": policies.SCALING_IDS}[
        kind
    ]
    assert core_ids == {r.name: r.id for r in table}
    assert set(list_policies(kind)) == set(rules.names(table))
    for rule in table:
        spec = policy_spec(rule.name)
        assert (spec.kind, spec.description, spec.builtin) == (kind, rule.description, True)
        assert builtin_policies(rule.name) == {key: rule.name}
        extra = {"replica_capacity_rps": 2.0} if rule.needs_capacity else {}
        scenario_from_dict(tiny_dict(policies={key: rule.name, **extra}))  # the schema accepts it
        kw = {"replica_capacity_rps": 2.0} if rule.needs_capacity else {}
        assert make_policy(rule.name, **kw).name == rule.name


def test_an_unknown_rule_is_rejected_with_the_known_names():
    with pytest.raises(ScenarioError, match="session_affinity"):
        scenario_from_dict(tiny_dict(policies={"routing": "nearest"}))


def test_capacity_scalers_need_a_capacity():
    for rule in rules.SCALING:
        if rule.needs_capacity:
            with pytest.raises(ScenarioError, match="replica_capacity_rps"):
                scenario_from_dict(tiny_dict(policies={"scaling": rule.name}))
