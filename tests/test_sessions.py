"""Agentic sessions: the workload generator, the closed loop in the core, session metrics and the facts.

Facts (issue 7), on configs/scenarios/agentic_sessions.yaml: session-affinity routing with prefix caching
re-prefills far fewer tokens and has a lower session p99 than round-robin; without the prefix cache that
advantage is gone.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from servegym.envs.metrics import compute_metrics
from servegym.envs.scenario import ScenarioError, load_scenario, scenario_from_dict
from servegym.envs.sim import state as S
from servegym.envs.sim.simulator import Simulator
from servegym.envs.workloads.requests import PREFIX_BLOCK_TOKENS, WorkloadError
from servegym.envs.workloads.scenario_requests import requests_for_scenario
from tests.conftest import examples, tiny_scenario
from tests.test_sim_core import drive

SESSIONS = {
    "kind": "sessions",
    "tenant": "chat",
    "arrival": {"rate_per_s": 0.5},
    "steps": {"mean": 4, "max": 12},
    "first_prompt": {"mean": 1500, "cv": 0.5},
    "step_input": {"mean": 300},
    "output": {"mean": 100},
    "pause": {"mean_s": 1.0},
    "max_context_tokens": 8192,
}


def session_table(horizon_s: float = 60.0, seed: int = 0, **src):
    sc = tiny_scenario(horizon_s=horizon_s, sources=[{**SESSIONS, **src}])
    return requests_for_scenario(sc, np.random.default_rng(seed))


def test_generator_grows_the_context_and_shares_prefix_blocks():
    t = session_table(horizon_s=200.0)
    t.validate("sessions")
    c = t.sessions
    later = np.flatnonzero(c.step > 0)
    assert later.size > 50
    assert np.all(np.isinf(t.arrival_s[later])) and np.all(np.isfinite(t.arrival_s[c.step == 0]))
    prev = np.empty(len(t), dtype=np.int64)
    prev[c.next[c.next >= 0]] = np.flatnonzero(c.next >= 0)
    for j in later[:200]:
        p = prev[j]
        assert c.session[p] == c.session[j] and c.step[j] == c.step[p] + 1
        # append-only context: previous prompt + its output + at least one new token
        assert t.prompt_tokens[j] > t.prompt_tokens[p] + t.output_tokens[p] - 1
        hp = t.prefix_hashes[t.prefix_offsets[p] : t.prefix_offsets[p + 1]]
        hj = t.prefix_hashes[t.prefix_offsets[j] : t.prefix_offsets[j + 1]]
        full = t.prompt_tokens[p] // PREFIX_BLOCK_TOKENS
        assert np.array_equal(hp[:full], hj[:full])  # every full block of the previous prompt is shared
        if full < hp.size:
            assert hp[full] != hj[full]  # a partial block is not the same 512 tokens at the next step
        assert t.prompt_tokens[j] + t.output_tokens[j] <= 8192
    assert np.all(c.pause_s[later] > 0) and np.all(c.pause_s[c.step == 0] == 0)


def test_generator_is_seeded():
    a, b = session_table(seed=3), session_table(seed=3)
    assert np.array_equal(a.prompt_tokens, b.prompt_tokens) and np.array_equal(
        a.sessions.next, b.sessions.next
    )
    assert not np.array_equal(a.prompt_tokens, session_table(seed=4).prompt_tokens)


def test_sessions_merge_with_open_loop_sources_and_validate():
    synth = {"kind": "synthetic", "tenant": "chat", "arrival": {"rate_per_s": 2.0}}
    sc = tiny_scenario(horizon_s=60.0, sources=[synth, SESSIONS, synth])
    t = requests_for_scenario(sc, np.random.default_rng(0))
    t.validate("merged")
    later = t.sessions.step > 0
    assert np.all(np.isfinite(t.arrival_s[~later])) and np.all(np.diff(t.arrival_s[~later]) >= 0)
    assert np.all(t.arrival_s[~later] < 60.0)
    assert later.any() and np.flatnonzero(later).min() == int((~later).sum())  # later steps last


def test_validation_names_the_session_field():
    t = session_table()
    t.sessions.next[np.flatnonzero(t.sessions.next >= 0)[0]] = 0
    with pytest.raises(WorkloadError, match="sessions.next"):
        t.validate("bad")
    with pytest.raises(ScenarioError, match=r"sources\.0\.sessions\.steps\.mean"):
        tiny_scenario(sources=[{**SESSIONS, "steps": {"mean": 0.5}}])
    with pytest.raises(ScenarioError, match=r"sources\.0\.sessions\.pause"):
        tiny_scenario(sources=[{k: v for k, v in SESSIONS.items() if k != "pause"}])


def test_closed_loop_next_step_arrives_after_finish_plus_pause():
    sc = tiny_scenario(horizon_s=120.0, sources=[SESSIONS], policies={"routing": "session_affinity"})
    sim = Simulator(sc, seed=1)
    sim.run()
    assert sim.audit() == ""
    st = sim.state
    nxt = st.rqi[S.RI_NEXT]
    done = np.flatnonzero((nxt >= 0) & (st.rqi[S.RI_STATUS] == S.ST_FINISHED))
    released = nxt[done]
    arrived = st.rqi[S.RI_STATUS, released] != S.ST_FUTURE
    assert arrived.sum() > 20
    d, j = done[arrived], released[arrived]
    expect = st.rqf[S.RF_FINISH, d] + st.rqf[S.RF_PAUSE, j]
    assert np.allclose(st.rqf[S.RF_ARRIVAL, j], expect, rtol=0, atol=1e-9)
    assert np.all(st.rqi[S.RI_HOME, j] == st.rqi[S.RI_REPLICA, d])
    # no later step arrives before its predecessor finished; unfinished predecessors hold theirs back
    pending = np.flatnonzero((nxt >= 0) & (st.rqi[S.RI_STATUS] != S.ST_FINISHED))
    assert np.all(st.rqi[S.RI_STATUS, nxt[pending]] == S.ST_FUTURE)


def test_a_dropped_step_abandons_its_session():
    # one sequence per replica and a 1 s max wait: many steps are dropped
    sc = tiny_scenario(
        horizon_s=120.0,
        max_wait_s=1.0,
        sources=[{**SESSIONS, "arrival": {"rate_per_s": 3.0}}],
        pools=[{**tiny_scenario().pools[0].model_dump(), "initial_replicas": 1, "max_num_seqs": 1}],
    )
    sim = Simulator(sc, seed=2)
    m = compute_metrics(sim.run())
    assert sim.audit() == ""
    st = sim.state
    dropped = np.flatnonzero((st.rqi[S.RI_STATUS] == S.ST_DROPPED) & (st.rqi[S.RI_NEXT] >= 0))
    assert dropped.size > 0
    assert np.all(st.rqi[S.RI_STATUS, st.rqi[S.RI_NEXT, dropped]] == S.ST_FUTURE)
    assert m["session/failed"] > 0
    assert m["session/judged"] == 0  # the tenant has no session_slo_s: nothing is judged


SESSION_METRICS = ("session/completion_s/p99", "session/reprefilled_tokens", "session/reused_tokens")


def agentic(routing: str, prefix_cache: bool) -> dict:
    sc = load_scenario("agentic_sessions")
    pool = {**sc.pools[0].model_dump(), "prefix_cache": prefix_cache}
    raw = {**sc.model_dump(), "pools": [pool], "policies": {**sc.policies.model_dump(), "routing": routing}}
    # timing v0: agentic_sessions grows contexts to 32k tokens on Llama-2-7B (4k context), which v1 rejects
    sim = Simulator(scenario_from_dict(raw), timing="v0")
    m = compute_metrics(sim.run())
    assert sim.audit() == ""
    return m


@pytest.fixture(scope="module")
def facts() -> dict:
    return {(r, pc): agentic(r, pc) for r in ("session_affinity", "round_robin") for pc in (True, False)}


def test_fact_session_affinity_with_prefix_cache_beats_round_robin(facts):
    aff, rr = facts[("session_affinity", True)], facts[("round_robin", True)]
    # far fewer tokens prefilled again: at most half of round-robin's (measured: about a fifth)
    assert aff["session/reprefilled_tokens"] < 0.5 * rr["session/reprefilled_tokens"]
    assert aff["session/reused_tokens"] > 2 * rr["session/reused_tokens"]
    assert aff["session/completion_s/p99"] < 0.9 * rr["session/completion_s/p99"]
    assert aff["session/completed"] >= rr["session/completed"]


def test_fact_without_prefix_cache_the_advantage_is_gone(facts):
    aff, rr = facts[("session_affinity", False)], facts[("round_robin", False)]
    assert aff["session/reused_tokens"] == rr["session/reused_tokens"] == 0
    assert aff["session/reprefilled_tokens"] == aff["session/context_tokens"]
    # session p99 within 10% of round-robin's, where with the cache it was more than 10% lower
    assert aff["session/completion_s/p99"] >= 0.9 * rr["session/completion_s/p99"]
    with_cache = facts[("session_affinity", True)]["session/completion_s/p99"]
    assert aff["session/completion_s/p99"] > with_cache


def test_session_metrics_definitions():
    sc = tiny_scenario(horizon_s=120.0, sources=[SESSIONS], policies={"routing": "session_affinity"})
    sc = scenario_from_dict(
        {**sc.model_dump(), "tenants": [{**sc.tenants[0].model_dump(), "session_slo_s": 30}]}
    )
    sim = Simulator(sc, seed=5)
    o = sim.run()
    m = compute_metrics(o)
    sess = sim.requests.sessions
    done = []
    for s in np.unique(sess.session):
        rows = np.flatnonzero(sess.session == s)
        if np.all(o.status[rows] == 2):
            done.append(np.nanmax(o.finish_s[rows]) - o.arrival_s[rows[sess.step[rows] == 0][0]])
    assert m["session/completed"] == len(done)
    assert m["session/completion_s/p99"] == pytest.approx(np.percentile(done, 99))
    assert m["session/slo_met"] == sum(d <= 30 for d in done)
    assert m["session/reused_tokens"] + m["session/reprefilled_tokens"] == m["session/context_tokens"]


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=hs.integers(0, 2**31 - 1),
    routing=hs.sampled_from(["round_robin", "lor", "prefix_affinity", "session_affinity"]),
    batching=hs.sampled_from(["fcfs", "edf", "vtc"]),
    faults=hs.booleans(),
    prefix=hs.booleans(),
    control=hs.sets(hs.sampled_from(["route", "batch", "scale"])),
)
def test_conservation_fuzz_with_sessions(seed, routing, batching, faults, prefix, control):
    pool = {
        "name": "a",
        "gpu": "a100-80gb",
        "model": "llama-2-7b",
        "min_replicas": 0,
        "max_replicas": 3,
        "initial_replicas": 2,
        "cold_start_s": 3.0,
        "prefix_cache": prefix,
        "max_num_seqs": 16,
    }
    if faults:
        pool.update(mtbf_s=15.0, repair_s=2.0)
    sc = tiny_scenario(
        horizon_s=25.0,
        max_wait_s=4.0,
        queue_capacity=32,
        pools=[pool],
        policies={"batching": batching, "routing": routing},
        sources=[
            {**SESSIONS, "arrival": {"rate_per_s": 2.0}, "pause": {"mean_s": 0.5}},
            {"kind": "synthetic", "tenant": "chat", "arrival": {"rate_per_s": 3.0}},
        ],
    )
    sim = Simulator(sc, seed=seed, control=tuple(sorted(control)))
    drive(sim, np.random.default_rng(seed), step_s=1.3)  # audit at every stop
    c = sim.counts()
    assert c["arrived"] == c["finished"] + c["dropped"] + c["in_flight"]
    # every finished step with a successor released it, at the finish time plus its pause (pending or arrived)
    nxt = sim.requests.sessions.next
    finished_with_successor = int(
        np.count_nonzero((sim.state.rqi[S.RI_STATUS] == S.ST_FINISHED) & (nxt >= 0))
    )
    assert c["session_steps_released"] + c["session_steps_pending"] == finished_with_successor


def overloaded_agentic(batching: str, seed: int) -> dict:
    """agentic_sessions at twice its session rate (1 session/s on its 4 replicas): queues build up."""
    src = load_scenario("agentic_sessions").sources[0].model_dump()
    src["arrival"]["rate_per_s"] = 1.0
    overrides = {"policies": {"batching": batching}, "sources": [src]}
    # timing v0: agentic_sessions grows contexts past Llama-2-7B's 4k context, which v1 rejects
    return compute_metrics(Simulator("agentic_sessions", seed=seed, overrides=overrides, timing="v0").run())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fact_least_attained_service_batching_finishes_sessions_sooner_under_overload(seed):
    # Autellix's program-level LAS admits the calls of sessions that have made fewer calls first; without
    # knowing any session's length it favours the short ones, as SRPT would (measured: session p99 ~480 s ->
    # ~310 s, session attainment +4-14 points over FCFS, on every seed)
    fcfs, las = overloaded_agentic("fcfs", seed), overloaded_agentic("session_las", seed)
    assert fcfs["session/slo_attainment"] < 0.8  # overloaded: FCFS misses many session targets
    assert las["session/slo_attainment"] > fcfs["session/slo_attainment"] + 0.02
    assert las["session/completion_s/p99"] < 0.85 * fcfs["session/completion_s/p99"]
    assert las["session/completed"] > fcfs["session/completed"]
