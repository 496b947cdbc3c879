"""``servegym/Admit-v1``: one step per arriving request; the action admits, defers or rejects it.

The decision is the core's admission (envs/sim/admission.py): an admitted request is routed, batched and
scaled by the scenario's built-in rules; a deferred one is presented again ``policies.defer_s`` later (and
dropped if it would then have waited past ``max_wait_s``); a rejected one is dropped and counted. So an agent
learns throttling: whom to turn away, and when.

The env keeps, per user (a tenant; with ``applications``, a user of an application), one token bucket for each
built-in throttling rule -- a fixed RPM, a fixed TPM, FairServe's application-derived limit -- charged with
that rule's cost whenever a request is admitted, exactly as the core charges the scenario's own rule. Their
levels, each rule's cost of the request and the overload signal are in ``info["admit"]``, so every built-in
rule is a policy of this env (``baselines/admission.py``) that reproduces the core bit for bit, and in the
observation, so a learner sees what the rules see.

Unlike Route/Batch/Scale/Cluster, whose observations the numba env kernels pack, this env is written over the
``Simulator`` API in Python: one decision per arrival is cheap next to the simulation between two arrivals.
It has no native vector env (wrap it in Gymnasium's SyncVectorEnv). Reward per step: SLO-met requests finished
since the last step, minus requests that finished past their SLO or were dropped (rejections included),
times ``reward_weights``; the last step also subtracts (weight ``slo_missed``) every request the metrics judge
missed that no step counted yet -- in flight past its deadline at the end, deferred ones included, or dropped
by the end of the episode -- so deferring a request past the horizon does not hide its miss.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from servegym.envs.gym.config import ConfigError
from servegym.envs.metrics import compute_metrics
from servegym.envs.rules import ADMISSION
from servegym.envs.scenario import Scenario, load_scenario
from servegym.envs.sim import state as S
from servegym.envs.sim.admission import load_per_replica
from servegym.envs.sim.build import admission_limits
from servegym.envs.sim.policies import ADMISSION_IDS, admission_cost, bucket_refill
from servegym.envs.sim.simulator import Simulator
from servegym.envs.workloads.applications import application_index, expected_calls, expected_service

ACTIONS = ("admit", "defer", "reject")
THROTTLING_RULES = tuple(r.name for r in ADMISSION if r.name != "admit_all")
REQUEST_FEATURES = (
    "prompt_tokens",
    "output_tokens",
    "first_call",
    "call_index",
    "interactive",
    "times_deferred",
    "wait_s",
)
USER_FEATURES = (
    *(f"bucket_{r}" for r in THROTTLING_RULES),  # level / burst of each rule's bucket (1: full or no limit)
    *(f"cost_{r}" for r in THROTTLING_RULES),  # the request's cost under each rule / its burst
    "rate_ratio",  # the user's recent application requests per second / its application's normal rate
    "counter",  # the user's VTC counter / the largest counter
    "app_calls",  # its application's expected LLM calls per application request / 8
    "app_service",  # its application's expected service per application request / the largest
)
GLOBAL_FEATURES = ("load", "overloaded", "kv_util", "time")
REWARD_KEYS = ("slo_met", "slo_missed", "drops", "invalid_action")
# The user's arrival-rate estimate: an exponentially decaying count of its application requests, 60 s scale.
RATE_TAU_S = 60.0


def _clip01(x: float) -> float:
    return float(min(max(x, 0.0), 1.0))


@dataclass
class _Layout:
    """The action layout, as the other envs' ``layout.nvec`` (one Discrete(3) dimension)."""

    nvec: tuple[int, ...] = (len(ACTIONS),)


class AdmitEnv(gym.Env[dict[str, np.ndarray], int]):
    """Admit (0), defer (1) or reject (2) each arriving request (``Discrete(3)``); see the module docstring.

    Observation keys: ``request`` (REQUEST_FEATURES), ``user`` (USER_FEATURES), ``global`` (GLOBAL_FEATURES),
    each in [0, 1]. Mask: defer is masked when the request would be dropped for waiting past max_wait anyway.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    DEFAULT_SCENARIO = "fairserve_abuse"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            "scenario": cls.DEFAULT_SCENARIO,
            "scenario_overrides": {},
            "horizon_s": None,
            "sim_seed": None,
            "timing": "v1",
            # as the other envs: "noop_penalty" replaces a masked or out-of-range action by admit and reports
            # invalid_action in info; "raise" raises ValueError naming the action
            "invalid_action": "noop_penalty",
            # as the other envs: a masked or out-of-range action (replaced by admit) costs invalid_action
            "reward_weights": {"slo_met": 1.0, "slo_missed": 1.0, "drops": 1.0, "invalid_action": 1.0},
            "max_episode_steps": None,
        }

    def __init__(self, config: dict[str, Any] | None = None, render_mode: str | None = None, **kwargs: Any):
        if render_mode is not None:
            raise ValueError(f"AdmitEnv: render_mode {render_mode!r} is not supported")
        cfg = self.default_config()
        for src in (config or {}, kwargs):
            for k, v in src.items():
                if k not in cfg:
                    raise ConfigError(f"AdmitEnv: unknown config key {k!r}; known: {sorted(cfg)}")
                cfg[k] = v
        if cfg["invalid_action"] not in ("raise", "noop_penalty"):
            raise ConfigError(
                f"AdmitEnv: invalid_action must be 'raise' or 'noop_penalty', got {cfg['invalid_action']!r}"
            )
        unknown = set(cfg["reward_weights"]) - set(REWARD_KEYS)
        if unknown:
            raise ConfigError(
                f"AdmitEnv: reward_weights: unknown keys {sorted(unknown)}; known: {REWARD_KEYS}"
            )
        self.config = cfg
        overrides = dict(cfg["scenario_overrides"])
        if cfg["horizon_s"] is not None:
            overrides["horizon_s"] = float(cfg["horizon_s"])
        self.scenario: Scenario = load_scenario(cfg["scenario"], overrides)
        self.layout = _Layout()
        self.action_space = spaces.Discrete(len(ACTIONS))
        self.observation_space = spaces.Dict(
            {
                "request": spaces.Box(0.0, 1.0, (len(REQUEST_FEATURES),), np.float32),
                "user": spaces.Box(0.0, 1.0, (len(USER_FEATURES),), np.float32),
                "global": spaces.Box(0.0, 1.0, (len(GLOBAL_FEATURES),), np.float32),
            }
        )
        sc = self.scenario
        n_t = len(sc.tenants)
        self._limits = {}
        for rule in THROTTLING_RULES:
            rule_sc = sc.model_copy(update={"policies": sc.policies.model_copy(update={"admission": rule})})
            self._limits[rule] = admission_limits(rule_sc)
        apps = list(sc.applications)
        app_of = application_index(sc)
        calls = np.array([expected_calls(a) for a in apps] or [1.0])
        service = np.array([expected_service(a) for a in apps] or [1.0])
        self._app_calls = np.where(app_of >= 0, calls[np.maximum(app_of, 0)], 1.0)
        self._app_service = np.where(app_of >= 0, service[np.maximum(app_of, 0)], 1.0) / service.max()
        normal = np.array([a.rate_per_user_s for a in apps] or [np.inf])
        self._app_rate = np.where(app_of >= 0, normal[np.maximum(app_of, 0)], np.inf)
        self._n_tenants = n_t
        self._sim: Simulator | None = None
        self._done = True
        self._mask = np.zeros(len(ACTIONS), np.int8)

    # ------------------------------------------------------------------ episode state
    def _new_buckets(self) -> None:
        self._bucket = {r: self._limits[r][1].copy() for r in THROTTLING_RULES}
        self._bucket_t = {r: np.zeros(self._n_tenants) for r in THROTTLING_RULES}
        self._rate = np.zeros(self._n_tenants)  # decaying count of application requests
        self._rate_t = np.zeros(self._n_tenants)

    def _level(self, rule: str, u: int, now: float) -> float:
        """The core's refill (admission.bucket_level), on the env's bucket of ``rule``."""
        rate, burst = self._limits[rule][0][u], self._limits[rule][1][u]
        if rate == np.inf:
            return np.inf
        lvl = float(bucket_refill(self._bucket[rule][u], self._bucket_t[rule][u], rate, burst, now))
        self._bucket[rule][u] = lvl
        self._bucket_t[rule][u] = now
        return lvl

    def _pending(self) -> int:
        assert self._sim is not None
        return self._sim.pending_admission()

    def _decision_info(self) -> dict[str, Any]:
        """The pending request's features for the built-in rules: per rule its bucket level and cost, and the
        overload signal (admission.load_per_replica against the scenario's threshold)."""
        st = self._sim.state
        i = self._pending()
        u = int(st.rqi[S.RI_TENANT, i])
        now = float(st.clock[S.C_NOW])
        load_pr = float(load_per_replica(st))  # the core's own overload signal, not a copy of it
        prompt, output, step = (
            int(st.rqi[S.RI_PROMPT, i]),
            int(st.rqi[S.RI_OUTPUT, i]),
            int(st.rqi[S.RI_STEP, i]),
        )
        rules = {}
        for rule in THROTTLING_RULES:
            rules[rule] = {
                "bucket": self._level(rule, u, now),
                "burst": float(self._limits[rule][1][u]),
                "cost": float(admission_cost(ADMISSION_IDS[rule], prompt, output, step)),
            }
        return {
            "request_id": i,
            "user": u,
            "rules": rules,
            "load_per_replica": load_pr,
            "overloaded": bool(load_pr > st.clock[S.C_OVERLOAD_LOAD]),
            "now_s": now,
        }

    def _observe(self, d: dict[str, Any]) -> dict[str, np.ndarray]:
        st = self._sim.state
        i, u, now = d["request_id"], d["user"], d["now_s"]
        # the user's application-request rate: decay, then count this request if it starts one
        decay = np.exp(-(now - self._rate_t[u]) / RATE_TAU_S)
        self._rate[u] *= decay
        self._rate_t[u] = now
        step = int(st.rqi[S.RI_STEP, i])
        times_deferred = int(st.rqi[S.RI_ADMIT, i]) >> 2
        if step == 0 and times_deferred == 0:
            self._rate[u] += 1.0
        ratio = self._rate[u] / RATE_TAU_S / self._app_rate[u] if self._app_rate[u] < np.inf else 0.0
        req = [
            _clip01(st.rqi[S.RI_PROMPT, i] / 32768.0),
            _clip01(st.rqi[S.RI_OUTPUT, i] / 4096.0),
            float(step == 0),
            _clip01(step / 32.0),
            float(st.rqi[S.RI_TIER, i] == S.TIER_INTERACTIVE),
            _clip01(times_deferred / 8.0),
            _clip01((now - st.rqf[S.RF_ARRIVAL, i]) / st.clock[S.C_MAX_WAIT]),
        ]
        user = []
        for rule in THROTTLING_RULES:
            r = d["rules"][rule]
            user.append(1.0 if r["burst"] == np.inf else _clip01(r["bucket"] / r["burst"]))
        for rule in THROTTLING_RULES:
            r = d["rules"][rule]
            user.append(0.0 if r["burst"] == np.inf else _clip01(r["cost"] / r["burst"]))
        cmax = float(st.ten[S.TF_COUNTER].max())
        user += [
            _clip01(ratio / 10.0),
            _clip01(st.ten[S.TF_COUNTER, u] / cmax) if cmax > 0 else 0.0,
            _clip01(self._app_calls[u] / 8.0),
            _clip01(self._app_service[u]),
        ]
        up = (st.repi[S.XI_STATE] == S.RS_ACTIVE) | (st.repi[S.XI_STATE] == S.RS_DRAINING)
        kv = float(st.repi[S.XI_KV_USED][up].sum() / max(st.repi[S.XI_KV_CAP][up].sum(), 1))
        glob = [
            _clip01(d["load_per_replica"] / max(2.0 * st.clock[S.C_OVERLOAD_LOAD], 1.0)),
            float(d["overloaded"]),
            _clip01(kv),
            _clip01(now / st.clock[S.C_HORIZON]),
        ]
        return {
            "request": np.array(req, np.float32),
            "user": np.array(user, np.float32),
            "global": np.array(glob, np.float32),
        }

    def _advance(self) -> tuple[dict[str, np.ndarray], dict[str, Any], bool]:
        """Run to the next admission decision; (obs, info, episode over)."""
        ev = self._sim.advance()
        if ev == S.EV_DONE:
            zero = {k: np.zeros(s.shape, np.float32) for k, s in self.observation_space.spaces.items()}
            self._mask[:] = 0
            return zero, {"decision": "none", "action_mask": self._mask.copy()}, True
        if ev != S.EV_ADMIT:
            raise RuntimeError(f"AdmitEnv: the core stopped for event {ev}, not admission")
        d = self._decision_info()
        # what admitting it charges each rule's bucket (immutable: info["admit"] is the caller's to keep)
        self._charges = (d["user"], tuple((rule, r["bucket"], r["cost"]) for rule, r in d["rules"].items()))
        st = self._sim.state
        i = d["request_id"]
        late = d["now_s"] + st.clock[S.C_DEFER_S] - st.rqf[S.RF_ARRIVAL, i] > st.clock[S.C_MAX_WAIT]
        self._mask[:] = (1, 0 if late else 1, 1)
        info = {"decision": "admit", "admit": d, "action_mask": self._mask.copy()}
        return self._observe(d), info, False

    def _counts(self) -> np.ndarray:
        c = self._sim.state.cnt
        return np.array([c[S.K_SLO_MET], c[S.K_SLO_MISSED_FINISHED], c[S.K_DROPS]], dtype=np.float64)

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        opts = options or {}
        unknown = set(opts) - {"seed"}
        if unknown:
            raise ConfigError(f"AdmitEnv.reset: unknown options {sorted(unknown)}; known: ['seed']")
        s = opts.get("seed", self.config["sim_seed"])
        if s is None:
            s = seed if seed is not None else int(self.np_random.integers(0, 2**63 - 1))
        self._sim = Simulator(self.scenario, seed=int(s), control=("admit",), timing=self.config["timing"])
        self._new_buckets()
        self._steps = 0
        obs, info, done = self._advance()
        if done:
            raise RuntimeError(f"AdmitEnv: scenario {self.scenario.name!r} has no arrival before its horizon")
        self._done = False
        self._last = self._counts()
        return obs, info

    def step(self, action: Any):
        if self._sim is None or self._done:
            raise RuntimeError("AdmitEnv: call reset() first (the episode is over or never started)")
        a = int(action) if np.ndim(action) == 0 else -1
        invalid = not (0 <= a < len(ACTIONS)) or not self._mask[a]
        if invalid:
            if self.config["invalid_action"] == "raise":
                raise ValueError(
                    f"AdmitEnv: action {action!r} is not allowed now (mask {self._mask.tolist()})"
                )
            a = 0
        i = self._pending()
        if a == 0:  # charge every rule's bucket, as the core charges the scenario's rule (admission.charge)
            # the levels and costs of this decision's info: no simulated time passed since they were refilled
            u, charges = self._charges
            for rule, level, cost in charges:
                if level != np.inf:
                    self._bucket[rule][u] = max(level - cost, 0.0)
        if not self._sim.apply_admission(a):
            raise RuntimeError(f"AdmitEnv: the core refused action {a} for request {i}")
        obs, info, done = self._advance()
        self._steps += 1
        now = self._counts()
        delta, self._last = now - self._last, now
        w = self.config["reward_weights"]
        reward = (
            w.get("slo_met", 1.0) * delta[0]
            - w.get("slo_missed", 1.0) * delta[1]
            - w.get("drops", 1.0) * delta[2]
            - w.get("invalid_action", 1.0) * float(invalid)
        )
        limit = self.config["max_episode_steps"]
        truncated = bool(not done and limit is not None and self._steps >= limit)
        overdue = 0.0
        if done or truncated:
            self._done = True
            m = self.episode_metrics()
            info["metrics"] = m
            # settle the episode's books: requests the end left in flight past their deadline (deferred ones
            # included) and those the end dropped count as missed, so deferring past the end is no way out
            overdue = float(m["slo_missed"] - (self._last[1] + self._last[2]))
            reward -= w.get("slo_missed", 1.0) * overdue
        components = dict(zip(REWARD_KEYS, [*delta.tolist(), float(invalid)], strict=True))
        components["overdue_at_end"] = overdue
        info["reward_components"] = components
        info["invalid_action"] = float(invalid)
        return obs, float(reward), done, truncated, info

    def episode_metrics(self) -> dict[str, Any]:
        if self._sim is None:
            raise RuntimeError("AdmitEnv: call reset() before episode_metrics()")
        return compute_metrics(self._sim.outcome(final=True))

    def action_masks(self) -> np.ndarray:
        return self._mask.astype(bool)

    @property
    def sim(self) -> Simulator | None:
        return self._sim

    def fork(self) -> AdmitEnv:
        """An independent copy mid-episode: its own simulator state, buckets, mask and generator."""
        twin = copy.copy(self)
        if self._sim is not None:
            twin._sim = self._sim.fork()
            twin._bucket = {k: v.copy() for k, v in self._bucket.items()}
            twin._bucket_t = {k: v.copy() for k, v in self._bucket_t.items()}
            twin._rate = self._rate.copy()
            twin._rate_t = self._rate_t.copy()
            twin._last = self._last.copy()
        twin._mask = self._mask.copy()
        if self._np_random is not None:
            twin._np_random = copy.deepcopy(self._np_random)
        twin.observation_space = copy.deepcopy(self.observation_space)
        twin.action_space = copy.deepcopy(self.action_space)
        return twin
