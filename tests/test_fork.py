"""Fork API: ``Simulator.snapshot/restore/fork`` and ``env.fork()`` on every registered env id.

A fork continued with the same actions must give bit-identical results to the original, and stepping a fork
must never move the original.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import servegym.envs  # noqa: F401
from servegym.envs.metrics import compute_metrics
from servegym.envs.sim import state as S
from servegym.envs.sim.simulator import Simulator
from tests.conftest import tiny_scenario

ENV_IDS = sorted(k for k in gym.registry if k.startswith("servegym/"))
# Short horizons on each id's default scenario: a few hundred decisions, every decision kind of the id
HORIZON = {"Route": 40.0, "Batch": 20.0, "Scale": 900.0, "Cluster": 120.0, "Admit": 20.0}
FORK_AT = {"Route": 25, "Batch": 25, "Scale": 5, "Cluster": 25, "Admit": 25}


def _same(a, b) -> bool:
    """Bit-identical, NaN equal to NaN, through dicts, tuples and arrays."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (np.ndarray, float, np.floating)):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    return a == b


def _masked_random(env, rng: np.random.Generator):
    """A random action the env's current mask allows (per dimension for MultiDiscrete)."""
    mask = env.action_masks()
    nvec = env.layout.nvec
    out, off = [], 0
    for n in nvec:
        ok = np.flatnonzero(mask[off : off + n])
        out.append(int(rng.choice(ok)) if len(ok) else 0)
        off += n
    return out[0] if isinstance(env.action_space, gym.spaces.Discrete) else np.array(out)


def _play(env, rng, steps=None):
    """Step with masked random actions until the end (or ``steps``); every step's output, in order."""
    trace = []
    k = 0
    while steps is None or k < steps:
        a = _masked_random(env, rng)
        obs, r, term, trunc, info = env.step(a)
        trace.append((a, obs, r, term, trunc, info))
        k += 1
        if term or trunc:
            break
    return trace


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_fork_continues_bit_identically_and_independently(env_id):
    kind = env_id.split("/")[1].split("-")[0]
    env = gym.make(env_id, horizon_s=HORIZON[kind]).unwrapped
    env.reset(seed=3)
    _play(env, np.random.default_rng(0), steps=FORK_AT[kind])
    twin = env.fork()
    assert twin.sim is not env.sim and twin.sim.state.rqf is not env.sim.state.rqf
    # A third copy is driven elsewhere first: the original and the twin must not notice
    other = env.fork()
    _play(other, np.random.default_rng(99))
    a = _play(env, np.random.default_rng(7))
    b = _play(twin, np.random.default_rng(7))
    assert len(a) == len(b) and len(a) >= 5
    assert a[-1][3] or a[-1][4]
    for sa, sb in zip(a, b, strict=True):
        assert _same(sa, sb)
    assert "metrics" in a[-1][5] and _same(a[-1][5]["metrics"], b[-1][5]["metrics"])


def test_env_fork_matches_an_unforked_episode():
    """Forking changes nothing: the original's episode equals the same episode played without a fork."""
    ref = gym.make("servegym/Cluster-v0", horizon_s=120.0).unwrapped
    ref.reset(seed=5)
    want = _play(ref, np.random.default_rng(1))
    env = gym.make("servegym/Cluster-v0", horizon_s=120.0).unwrapped
    env.reset(seed=5)
    rng = np.random.default_rng(1)
    got = _play(env, rng, steps=10)
    env.fork()
    got += _play(env, rng)
    assert _same(want[-1][5]["metrics"], got[-1][5]["metrics"]) and len(want) == len(got)


def test_simulator_snapshot_restore_and_fork_are_bit_exact():
    sc = tiny_scenario(horizon_s=120.0)
    want = compute_metrics(Simulator(sc, seed=4).run())
    sim = Simulator(sc, seed=4)
    sim.advance(40.0)
    snap = sim.snapshot()
    first = compute_metrics(sim.run())
    assert _same(first, want)
    sim.restore(snap)  # back to t=40: running on reproduces the same end
    assert sim.now == 40.0
    assert _same(compute_metrics(sim.run()), want)
    sim2 = Simulator(sc, seed=4)
    sim2.advance(40.0)
    twin = sim2.fork()
    assert _same(compute_metrics(twin.run()), want)
    assert sim2.now == 40.0  # the fork's run did not move the original
    assert _same(compute_metrics(sim2.run()), want)


def test_restore_refuses_a_snapshot_of_another_run():
    a = Simulator(tiny_scenario(), seed=0)
    b = Simulator(tiny_scenario(horizon_s=120.0), seed=1)
    with pytest.raises(ValueError, match="snapshot field 'rqf'.*restores only into the run"):
        a.restore(b.snapshot())


@pytest.mark.parametrize("control", [("route",), ("batch",), ("scale",), ("route", "batch", "scale")])
def test_release_control_hands_decisions_to_the_builtin_rules_exactly(control):
    """A run that releases control at its first decision ends exactly as the built-in run does."""
    sc = tiny_scenario(horizon_s=90.0)
    want = compute_metrics(Simulator(sc, seed=2).run())
    sim = Simulator(sc, seed=2, control=control)
    ev = sim.advance()
    assert ev in (S.EV_ROUTE, S.EV_BATCH, S.EV_SCALE)
    sim.release_control()
    assert sim.advance() == S.EV_DONE
    assert _same(compute_metrics(sim.outcome(final=True)), want)
