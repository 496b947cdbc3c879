"""Planning baselines (baselines/planning.py): the clairvoyant oracle and the MPC planner."""

from __future__ import annotations

import numpy as np
import pytest

from servegym.baselines import PolicyError, list_policies, make_policy
from servegym.baselines.env_runner import make_env, replay_actions, run_env_episode
from servegym.baselines.planning import FutureSampler
from servegym.envs.sim import state as S
from tests.conftest import tiny_scenario

PLANNERS = [f"{p}_{k}" for k in ("route", "batch", "scale") for p in ("oracle", "mpc")]


def test_planners_are_registered_but_never_swept_as_heuristics():
    assert set(PLANNERS) <= set(list_policies(planners=True))
    assert not set(PLANNERS) & set(list_policies())
    assert make_policy("oracle_route").reference and not make_policy("mpc_route").reference
    with pytest.raises(PolicyError, match="breadth must be an int >= 1"):
        make_policy("oracle_route", breadth=0)
    with pytest.raises(PolicyError, match="bind_env"):
        make_policy("mpc_batch").act(None, {"decision": "batch"})


@pytest.mark.parametrize(
    ("env_id", "policy", "horizon"),
    [
        ("servegym/Route-v0", "oracle_route", 40.0),
        ("servegym/Batch-v0", "mpc_batch", 20.0),
        ("servegym/Scale-v0", "mpc_scale", 120.0),
        ("servegym/Cluster-v0", "oracle_batch+mpc_route+oracle_scale", 40.0),
    ],
)
def test_planner_episodes_replay_bit_for_bit(env_id, policy, horizon):
    sc = tiny_scenario(horizon_s=horizon)
    metrics, actions = run_env_episode(policy, env_id, sc, seed=1, record=True)
    again, _ = run_env_episode(policy, env_id, sc, seed=1)
    assert metrics == again  # deterministic given the seed
    assert replay_actions(actions, env_id, sc, seed=1) == metrics


def _perturb_future(env) -> None:
    """Make every request that has not arrived yet very different (long prompts, one-token outputs)."""
    st = env.sim.state
    na, n_open = int(st.cnt[S.K_NEXT_ARRIVAL]), int(st.cnt[S.K_N_OPEN])
    st.rqi[S.RI_OUTPUT, na:n_open] = 1
    st.rqi[S.RI_PROMPT, na:n_open] = 2000


def test_mpc_never_reads_the_realised_future_but_the_oracle_does():
    sc = tiny_scenario(horizon_s=60.0)
    env = make_env("servegym/Route-v0", sc)
    env.reset(seed=2, options={"seed": 2})
    mpc, oracle = make_policy("mpc_route", breadth=3), make_policy("oracle_route", breadth=3)
    oracle_differs = 0
    for k in range(40):
        real, fake = env.fork(), env.fork()
        _perturb_future(fake)
        answers = {}
        for name, pol in (("mpc", mpc), ("oracle", oracle)):
            for tag, e in (("real", real), ("fake", fake)):
                pol.bind_env(e)
                pol.reset(seed=2)
                answers[name, tag] = (pol.act(None, {"decision": "route"}), list(pol.last_values))
        assert answers["mpc", "real"] == answers["mpc", "fake"], f"decision {k}"
        oracle_differs += answers["oracle", "real"][1] != answers["oracle", "fake"][1]
        _, _, term, trunc, _ = env.step(int(np.flatnonzero(env.action_masks())[k % 2 :][0]))
        if term or trunc:
            break
    assert oracle_differs > 0  # the test's perturbation is one the oracle can see


def test_future_sampler_replaces_every_request_not_yet_arrived():
    sc = tiny_scenario(horizon_s=60.0)
    env = make_env("servegym/Route-v0", sc)
    env.reset(seed=0, options={"seed": 0})
    for _ in range(30):
        env.step(int(np.flatnonzero(env.action_masks())[0]))
    sim = env.sim
    fork = sim.fork()
    FutureSampler(sim, [123]).into(fork, 0)
    st, real = fork.state, sim.state
    na, n_open = int(st.cnt[S.K_NEXT_ARRIVAL]), int(st.cnt[S.K_N_OPEN])
    arr = st.rqf[S.RF_ARRIVAL, na:n_open]
    assert np.all(arr > sim.now) and np.all(np.diff(arr[np.isfinite(arr)]) >= 0)
    assert not np.array_equal(arr, real.rqf[S.RF_ARRIVAL, na:n_open])
    assert np.array_equal(st.rqf[:, :na], real.rqf[:, :na], equal_nan=True)  # the past is untouched
    assert np.array_equal(st.rqi[:, :na], real.rqi[:, :na])


def test_headroom_script_reports_oracle_heuristics_and_mpc_on_train_seeds(tmp_path):
    """scripts/headroom.py on a one-scenario suite: the table, the search grid and the JSON, train seeds only."""
    import importlib.util
    import json

    import yaml

    from servegym.baselines.leaderboard.headroom import measure
    from servegym.baselines.leaderboard.suite import SUITE_DIR, load_suite

    raw = yaml.safe_load((SUITE_DIR / "v1.yaml").read_text())
    raw["scenarios"] = [s for s in raw["scenarios"] if s["name"] == "hetero_route"]
    doc = yaml.safe_load((SUITE_DIR / "v1" / "hetero_route.yaml").read_text())
    doc["horizon_s"] = 20.0
    (tmp_path / "hetero_route.yaml").write_text(yaml.safe_dump(doc))
    raw["scenarios"][0]["scenario"] = "hetero_route.yaml"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = importlib.util.spec_from_file_location(
        "headroom_script", SUITE_DIR.parent.parent / "scripts" / "headroom.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "hr"
    args = [
        "--suite",
        str(path),
        "--seeds",
        "1",
        "--horizons",
        "5,10",
        "--breadths",
        "2",
        "--mpc-samples",
        "2",
    ]
    assert mod.main([*args, "--out", str(out)]) == 0
    (row,) = json.loads((out / "headroom.json").read_text())
    assert set(row["heuristics"]) == set(list_policies("route")) and len(row["mpc"]) == 1
    feasible = [h for h in row["heuristics"] if row["feasible"][h]]
    best_h = max(feasible, key=lambda h: row["heuristics"][h][0])
    best = row["heuristics"][best_h][0]
    # the oracle's rollouts follow the best heuristic on these seeds (the rollout algorithm's base policy)
    assert row["seeds"] == [0] and set(row["oracle"]) == {f"h{h}/b2/d1/base={best_h}" for h in (5, 10)}
    oracle = max(v[0] for v in row["oracle"].values())
    md = (out / "headroom.md").read_text()
    assert f"{(oracle - best) / best:+.1%}" in md and "h10/b2/d1" in md
    suite = load_suite(path)
    with pytest.raises(ValueError, match="measured on train seeds"):
        measure(suite, suite.scenarios[0], [1000], [])


def test_oracle_with_one_candidate_plays_its_base_heuristic_exactly():  # route and batch
    """breadth 1 leaves only the base rule's own choice (the core's rule, via ``Simulator.use_rule``): the
    oracle then routes exactly like that heuristic, so the base choice is found and applied correctly."""
    sc = tiny_scenario(horizon_s=40.0)
    for rule in ("jsq", "lor"):
        planned, _ = run_env_episode(
            make_policy("oracle_route", breadth=1, base=rule), "servegym/Route-v1", sc, seed=2
        )
        heuristic, _ = run_env_episode(rule, "servegym/Route-v1", sc, seed=2)
        assert planned == heuristic
    for rule in ("sjf", "edf"):  # batch: the base forms the batch on a fork; its first admission is played
        planned, _ = run_env_episode(
            make_policy("oracle_batch", breadth=1, base=rule), "servegym/Batch-v1", sc, seed=2
        )
        assert planned == run_env_episode(rule, "servegym/Batch-v1", sc, seed=2)[0]
    # a wider search may leave the base, and must still replay (its actions are what is logged)
    wide, actions = run_env_episode(
        make_policy("oracle_route", breadth=3, base="jsq"), "servegym/Route-v1", sc, seed=2, record=True
    )
    assert replay_actions(actions, "servegym/Route-v1", sc, 2) == wide


def test_base_rules_are_checked():
    with pytest.raises(PolicyError, match="not a rule name"):
        make_policy("oracle_route", base="fastest")
    with pytest.raises(PolicyError, match="twice"):
        make_policy("oracle_route", base="jsq+lor")
    from servegym.envs.sim.simulator import Simulator

    sim = Simulator(tiny_scenario(horizon_s=10.0), seed=0)
    with pytest.raises(ValueError, match="no route rule 'fcfs'"):
        sim.use_rule("route", "fcfs")
    with pytest.raises(ValueError, match="replica_capacity_rps"):
        sim.use_rule("scale", "target_util")
