"""FairServe (docs/fairserve.md): applications and users, admission in the core and as Admit-v1, the app
metrics, and the facts the issue asks for, on small horizons with margins that could fail."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest

import servegym.envs  # noqa: F401
from servegym.baselines.admission import AdmissionRule
from servegym.envs.metrics import compute_metrics
from servegym.envs.scenario import ScenarioError, load_scenario, scenario_from_dict
from servegym.envs.sim import state as S
from servegym.envs.sim.simulator import Simulator
from servegym.envs.slo import jain_index as jain
from servegym.envs.workloads.applications import expected_calls, expected_service, load_app_trace
from servegym.envs.workloads.requests import WorkloadError

ABUSE = "fairserve_abuse"
OFFPEAK = "fairserve_offpeak"
FAIRSERVE = {"batching": "wsc", "admission": "fairserve"}
VTC = {"batching": "vtc", "admission": "admit_all"}
FCFS = {"batching": "fcfs", "admission": "admit_all"}


def run(scenario: str, seed: int, policies: dict, horizon_s: float = 300.0, **kw) -> tuple[Simulator, dict]:
    sim = Simulator(scenario, seed=seed, overrides={"horizon_s": horizon_s, "policies": policies}, **kw)
    return sim, compute_metrics(sim.run())


def raw(name: str) -> dict:
    return load_scenario(name).model_dump(mode="json")


# ---------------------------------------------------------------- workload


def test_users_become_tenants_of_their_application_and_dumps_validate_again():
    sc = load_scenario(ABUSE)
    chat = [t for t in sc.tenants if t.application == "chat"]
    assert len(chat) == 20 and chat[0].name == "chat/0" and chat[0].abusive
    assert not any(t.abusive for t in chat[1:])
    assert all(t.ttft_slo_s == 1.0 for t in chat)
    again = scenario_from_dict(sc.model_dump(mode="json"))
    assert [t.name for t in again.tenants] == [t.name for t in sc.tenants]
    # `abuse: {}` takes the spec's defaults: its one abusive user is flagged (the throttling metrics' truth)
    d = raw(ABUSE)
    d["applications"][0]["abuse"] = {}
    flagged = [t.name for t in scenario_from_dict(d).tenants if t.abusive]
    assert flagged == ["chat/0"]


def test_bad_applications_are_rejected_with_their_key():
    d = raw(ABUSE)
    d["applications"][0]["abuse"]["users"] = 99
    with pytest.raises(ScenarioError, match="abuse.users"):
        scenario_from_dict(d)
    d = raw(ABUSE)
    d["tenants"][0]["application"] = "nope"
    with pytest.raises(ScenarioError, match="unknown application"):
        scenario_from_dict(d)


def test_one_application_request_is_one_session_of_its_calls_and_abusers_send_more():
    sim = Simulator(ABUSE, seed=0, overrides={"horizon_s": 200.0})
    req = sim.requests
    sc = sim.scenario
    sess, step = req.sessions.session, req.sessions.step
    first = step == 0
    copilot = np.array([sc.tenants[t].application == "copilot" for t in req.tenant])
    n_calls = np.bincount(sess[copilot])
    n_calls = n_calls[n_calls > 0]
    # copilot makes ~4 calls per request (geometric mean 4, capped at 8, shortened by the 4096-token context)
    assert 2.0 < n_calls.mean() <= 4.0 and n_calls.max() > 1
    chat_calls = np.bincount(sess[~copilot])
    assert chat_calls[chat_calls > 0].max() == 1  # single-call applications
    per_user = np.bincount(req.tenant[first], minlength=len(sc.tenants))
    assert per_user[0] > 30 * np.median(per_user[1:20])  # chat/0 sends 100x the normal rate


def test_expected_calls_and_service_follow_the_application():
    sc = load_scenario(ABUSE)
    chat, copilot = sc.applications[0], sc.applications[1]
    assert expected_calls(chat) == 1.0
    p = 1 / 4
    assert expected_calls(copilot) == pytest.approx(sum((1 - p) ** k for k in range(8)))
    assert expected_service(chat) == pytest.approx(800 + 2 * 200)
    assert expected_service(copilot) > 3 * expected_service(chat)


def _trace_scenario(tmp_path, monkeypatch, rows: str):
    monkeypatch.setenv("SERVEGYM_TRACE_ROOTS", str(tmp_path))
    f = tmp_path / "apps.csv"
    f.write_text(rows)
    d = raw(ABUSE)
    for a in d["applications"]:
        a["synthetic"] = False
    d["sources"] = [{"kind": "app_trace", "file": str(f)}]
    return scenario_from_dict(d), f


def test_app_trace_maps_users_of_applications_to_their_tenants(tmp_path, monkeypatch):
    rows = "arrival_s,application,user,prompt_tokens,output_tokens\n2.0,copilot,3,100,10\n1.0,chat,0,50,5\n"
    sc, f = _trace_scenario(tmp_path, monkeypatch, rows)
    t = load_app_trace(sc.sources[0], f, sc)
    names = [sc.tenants[i].name for i in t.tenant]
    assert names == ["chat/0", "copilot/3"] and t.arrival_s.tolist() == [1.0, 2.0]
    sim = Simulator(sc, seed=0)
    sim.run()
    assert sim.counts()["finished"] == 2


@pytest.mark.parametrize(
    ("rows", "line", "column"),
    [
        ("arrival_s,application,prompt_tokens,output_tokens\n1,chat,5,5\n", 1, "user"),
        (
            "arrival_s,application,user,prompt_tokens,output_tokens\n1,chat,0,5,5\n1,mail,0,5,5\n",
            3,
            "application",
        ),
        ("arrival_s,application,user,prompt_tokens,output_tokens\n1,chat,20,5,5\n", 2, "user"),
        ("arrival_s,application,user,prompt_tokens,output_tokens\nx,chat,0,5,5\n", 2, "arrival_s"),
        ("arrival_s,application,user,prompt_tokens,output_tokens\n1,chat,0,0,5\n", 2, "prompt_tokens"),
    ],
)
def test_app_trace_errors_name_file_line_and_column(tmp_path, monkeypatch, rows, line, column):
    sc, f = _trace_scenario(tmp_path, monkeypatch, rows)
    with pytest.raises(WorkloadError) as e:
        load_app_trace(sc.sources[0], f, sc)
    assert e.value.file == str(f) and e.value.row == line and e.value.field == column
    assert str(f) in str(e.value) and column in str(e.value)


def test_scenarios_without_the_new_keys_leave_admission_off():
    sim = Simulator("multi_tenant_tiers", seed=0, overrides={"horizon_s": 30.0})
    st = sim.state
    assert st.cnt[S.K_ADMISSION] == 0 and st.cnt[S.K_PENDING_ADMIT] == -1 and st.dfq.shape == (2, 1)
    assert np.all(st.ten[S.TF_LIMIT_RATE] == np.inf)
    o = sim.run()
    assert o.admission is None and o.tenant_application is None
    assert not any(k.startswith("app/") for k in compute_metrics(o))


# ---------------------------------------------------------------- admission in the core


@pytest.mark.parametrize("rule", ["rpm", "tpm", "fairserve"])
def test_rejections_are_counted_drops_and_the_books_balance(rule):
    sim, m = run(ABUSE, 1, {"admission": rule, "admission_tpm": 20_000.0}, horizon_s=200.0)
    c = sim.counts()
    assert sim.audit() == ""
    assert c["arrived"] == c["finished"] + c["dropped"] + c["in_flight"]
    assert 0 < c["rejected"] <= c["dropped"] and m["app/throttle/rejected"] == c["rejected"]
    assert m["app/throttle/recall"] == 1.0  # the abuser is always caught here


def test_agent_deferrals_and_rejections_keep_the_audit_balanced():
    env = gym.make("servegym/Admit-v1", horizon_s=60.0).unwrapped
    env.reset(seed=2)
    rng = np.random.default_rng(0)
    done, steps = False, 0
    while not done:
        ok = np.flatnonzero(env.action_masks())
        _, _, term, trunc, info = env.step(int(rng.choice(ok)))
        done = term or trunc
        steps += 1
        if steps % 50 == 0:
            assert env.sim.audit() == ""
    c = env.sim.counts()
    assert env.sim.audit() == "" and c["deferrals"] > 0 and c["rejected"] > 0
    assert c["arrived"] == c["finished"] + c["dropped"] + c["in_flight"]
    assert info["metrics"]["app/throttle/deferrals"] == c["deferrals"]


def test_admit_env_passes_gymnasiums_checker_and_masks_late_deferrals():
    from gymnasium.utils.env_checker import check_env

    env = gym.make("servegym/Admit-v1", horizon_s=30.0).unwrapped
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert info["decision"] == "admit" and info["action_mask"].tolist() == [1, 1, 1]
    assert env.observation_space.contains(obs)
    env.close()
    late = gym.make(
        "servegym/Admit-v1", horizon_s=30.0, scenario_overrides={"policies": {"defer_s": 100.0}}
    ).unwrapped
    _, info = late.reset(seed=0)
    assert info["action_mask"].tolist() == [1, 0, 1]


@pytest.mark.parametrize("rule", ["rpm", "tpm", "fairserve"])
def test_builtin_throttlers_are_policies_of_the_admit_env(rule):
    """The rule from info["admit"] on Admit-v1 reproduces the core's built-in rule bit for bit."""
    pol = {"admission": rule, "admission_tpm": 20_000.0}
    env = gym.make("servegym/Admit-v1", horizon_s=120.0, scenario_overrides={"policies": pol}).unwrapped
    policy = AdmissionRule(rule)
    _, info = env.reset(seed=1)
    done = False
    while not done:
        _, _, term, trunc, info = env.step(policy.act(None, info))
        done = term or trunc
    ref = compute_metrics(Simulator(ABUSE, seed=1, overrides={"horizon_s": 120.0, "policies": pol}).run())
    got = info["metrics"]
    assert got["app/throttle/rejected"] > 0
    diff = {
        k: (got[k], ref[k]) for k in ref if not (got[k] == ref[k] or (got[k] != got[k] and ref[k] != ref[k]))
    }
    assert got.keys() == ref.keys() and not diff


# ---------------------------------------------------------------- metrics


def test_jain_index():
    assert jain(np.array([1.0, 1.0, 1.0])) == 1.0
    assert jain(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.25)
    assert jain(np.zeros(3)) == 1.0


def test_throttling_precision_recall_and_application_fairness():
    _, m = run(ABUSE, 0, FAIRSERVE)
    # the abuser is caught; a benign user is rarely caught in a burst during the overload (precision counts
    # users, so one such call halves it; request precision counts calls)
    assert m["app/throttle/recall"] == 1.0 and m["app/throttle/precision"] >= 0.5
    assert m["app/throttle/request_precision"] > 0.99
    assert m["app/throttle/rejected_benign"] <= 3
    # FairServe throttles only under overload, so it never over-throttles by construction
    assert m["app/throttle/overthrottled_benign"] == 0 and m["app/throttle/overthrottle_gpu_s"] == 0.0
    for k in ("jain_users", "jain_benign_users", "jain_apps"):
        assert 0.0 < m[f"app/fairness/{k}"] <= 1.0
    # the abuser's service dwarfs the benign users': fairness over all users is worse than over benign ones
    assert m["app/fairness/jain_users"] < m["app/fairness/jain_benign_users"]
    assert m["app/fairness/max_gap_users"] > m["app/fairness/max_gap_benign_users"]


# ---------------------------------------------------------------- facts


@pytest.mark.parametrize("seed", [0, 1])
def test_fairserve_keeps_benign_users_attainment_above_vtc_and_fcfs_under_an_abuser(seed):
    """One chat user at 100x the normal rate overloads one A100. Measured on the full 600 s scenario (seeds
    0, 1, 2), benign application-request attainment was FairServe 0.996 / 1.000 / 0.996, VTC 0.608 / 0.654 /
    0.552, FCFS 0.022 / 0.022 / 0.011. Here on 300 s, with margins."""
    b = {}
    for name, pol in (("fairserve", FAIRSERVE), ("vtc", VTC), ("fcfs", FCFS)):
        _, m = run(ABUSE, seed, pol)
        b[name] = m["app/slo_attainment/benign"]
    assert b["fairserve"] > 0.9
    assert b["fairserve"] > b["vtc"] + 0.15
    assert b["fairserve"] > b["fcfs"] + 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_fixed_rpm_limits_leave_capacity_idle_off_peak(seed):
    """Off-peak, a chat-sized RPM limit turns away the copilot's legitimate calls while GPUs sit idle;
    FairServe's overload-only, per-application-request limit turns nobody away. Measured on the full 600 s
    scenario (seeds 0, 1, 2): rpm rejected 60 / 35 / 34 benign calls, all with spare capacity, wasting
    78.8 / 49.8 / 45.9 GPU-seconds; benign attainment 0.888 / 0.926 / 0.932 vs 1.0 under fairserve."""
    _, rpm = run(OFFPEAK, seed, {"admission": "rpm"})
    _, fair = run(OFFPEAK, seed, {"admission": "fairserve"})
    assert rpm["app/throttle/rejected_benign"] >= 5
    # off-peak every one of them is turned away with spare capacity
    assert rpm["app/throttle/overthrottled_benign"] == rpm["app/throttle/rejected_benign"]
    assert rpm["app/throttle/overthrottle_gpu_s"] > 5.0
    assert rpm["util/busy"] < 0.97  # the fleet was not saturated
    assert fair["app/throttle/rejected"] == 0 and fair["app/throttle/overthrottle_gpu_s"] == 0.0
    assert fair["app/slo_attainment/benign"] > rpm["app/slo_attainment/benign"]


def test_runs_are_deterministic():
    _, a = run(ABUSE, 3, FAIRSERVE, horizon_s=100.0)
    _, b = run(ABUSE, 3, copy.deepcopy(FAIRSERVE), horizon_s=100.0)
    assert a.keys() == b.keys() and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)


def test_wsc_from_the_batch_env_info_reproduces_the_builtin_rule():
    """The registry's wsc agent reads the tenant weights the env exposes, which are FairServe's weights."""
    from servegym.envs.sim.policies import BATCHING_IDS
    from tests.test_envs_contract import assert_same_metrics, head_of_line, run_env

    overrides = {"horizon_s": 45.0, "policies": {"batching": "wsc", "admission": "admit_all"}}
    env = gym.make("servegym/Batch-v1", scenario=OFFPEAK, sim_seed=3, scenario_overrides=overrides)
    got = run_env(env, head_of_line(BATCHING_IDS["wsc"]))
    ref = compute_metrics(Simulator(OFFPEAK, seed=3, overrides=overrides, timing="v1").run())
    assert ref["dropped"] == 0 and ref["finished"] > 50
    assert_same_metrics(got, ref)


def test_deferring_past_the_horizon_does_not_hide_misses_from_the_reward():
    """Rewards summed over an episode equal met - missed of its final metrics (unit weights), whatever the
    policy; a policy that always defers would otherwise be paid for postponing its misses."""
    for act in (0, 1, 2):
        env = gym.make("servegym/Admit-v1", horizon_s=40.0).unwrapped
        _, info = env.reset(seed=4)
        total, done = 0.0, False
        while not done:
            a = act if env.action_masks()[act] else 0
            _, r, term, trunc, info = env.step(a)
            total += r
            done = term or trunc
        m = info["metrics"]
        assert total == pytest.approx(m["slo_met"] - m["slo_missed"])
