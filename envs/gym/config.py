"""Env configuration: defaults, validation of overrides, and the fixed layout of observations and actions.

A config is a plain dict (highway-env style). ``default_config()`` of each env class gives every key; a user
overrides keys through constructor keyword arguments, a ``config=`` dict, or per episode through
``reset(options={"config": {...}})``. Unknown keys raise a ``ConfigError`` naming the key. Keys that size the
spaces (``SPACE_KEYS``) are fixed when the env is built, because Gymnasium spaces cannot change.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

from servegym.envs.rules import DECISION_KINDS
from servegym.envs.sim.policies import BATCHING_IDS

MODE_ROUTE, MODE_BATCH, MODE_SCALE, MODE_CLUSTER = range(4)
MODE_NAMES = ("route", "batch", "scale", "cluster")
CONTROLS = {
    MODE_ROUTE: ("route",),
    MODE_BATCH: ("batch",),
    MODE_SCALE: ("scale",),
    MODE_CLUSTER: DECISION_KINDS,
}
DECISIONS = ("none", *DECISION_KINDS)  # indexed by the core's EV_* code (EV_DONE=0 -> "none")

# Raw reward components, in the order the kernel writes them; the weighted reward follows them.
REWARD_KEYS = (
    "slo_met",
    "slo_met_tokens",
    "slo_missed",
    "drops",
    "cost_usd",
    "fairness_gap",
    "invalid_action",
)
# +1: a good thing per unit, -1: a cost per unit. reward = sum(sign * weight * component).
REWARD_SIGNS = (1.0, 1.0, -1.0, -1.0, -1.0, -1.0, -1.0)
NORM_KEYS = (
    "prompt_tokens",
    "queue",
    "slack_s",
    "wait_s",
    "counter",
    "rate_per_s",
    "cost_usd_per_hour",
    "price_per_hour",
    "cold_start_s",
    "tpot_s",
    "session_steps",
)
SPACE_KEYS = (
    "max_replicas",
    "max_pools",
    "top_k",
    "scale_step",
    "rate_bins",
    "session_features",
    "disagg_features",
)
INVALID_MODES = ("raise", "noop_penalty")


class ConfigError(ValueError):
    """A config key or value that the env does not accept; the message names the key."""


def base_config() -> dict[str, Any]:
    """Every key an env accepts, with its default (the env classes change ``scenario`` and a few more)."""
    return {
        # A scenario name under configs/scenarios/ or a path to a YAML file.
        "scenario": "chat_azure",
        # Deep-merged over the scenario's YAML mapping, e.g. {"policies": {...}}; a list is replaced whole, or merged
        # entry by entry by a mapping of indices ({"sources": {"0": {"time_scale": 2}}}).
        "scenario_overrides": {},
        # Shortcut for scenario_overrides["horizon_s"]; None keeps the scenario's horizon.
        "horizon_s": None,
        # None: reset(seed=s) uses s as the workload seed (as options={"seed": s} does); a reset without a seed
        # draws one from the env's np_random.
        # An int: the same workload every episode (evaluation on a fixed trace sample).
        "sim_seed": None,
        # Padding of the variable-size parts; None takes the size of the scenario the env is built with.
        "max_replicas": None,
        "max_pools": None,
        # Batch: the K best waiting requests (in `batch_order`) the agent picks from; action K starts the batch.
        "top_k": 8,
        # "scenario" ranks the K slots by the scenario's batching rule, or name one of servegym.envs.sim.policies.
        "batch_order": "scenario",
        # Scale: each pool's action is a replica delta in [-scale_step, scale_step].
        "scale_step": 2,
        # Agentic-session observation groups (docs/envs.md): "auto" adds them when the scenario has a sessions
        # source, so the observations of other scenarios (and the agents trained on them) stay as they are.
        "session_features": "auto",
        # Prefill/decode disaggregation group (docs/disaggregation.md): "auto" adds it when a pool has role
        # prefill or decode, so the observations of colocated scenarios stay as they are.
        "disagg_features": "auto",
        # Timing version of the dynamics when the scenario names none (envs/sim/timing.py): the servegym/*-v0 ids
        # pin "v0" (Splitwise-era overheads, no context limit: what suite v0 and its entries replay), the *-v1 ids
        # use "v1" (engine profiles, default vllm, and context limits).
        "timing": "v0",
        # Arrival-rate history in the global features: rate_bins bins of rate_bin_s seconds, per tier.
        "rate_bins": 4,
        "rate_bin_s": 15.0,
        # Period of the time-of-day features; None takes the scenario's diurnal period, else one day.
        "day_period_s": None,
        # "noop_penalty" (default): an out-of-range or masked action is replaced by the decision's no-op (route:
        # the scenario's built-in rule; batch: start now; scale: hold) and the step's invalid_action component
        # is 1, so unmasked learners and the standard checkers (Gymnasium's and SB3's check_env) work as they
        # are; the mask stays in info["action_mask"] / action_masks() for MaskablePPO. "raise": such an action
        # raises InvalidActionError (the leaderboard's runs and replays use it, so a log never hides one).
        "invalid_action": "noop_penalty",
        # Truncate an episode after this many steps (None: only at the scenario's horizon), with the metrics in
        # the last info. Gymnasium's own gym.make(id, max_episode_steps=n) cuts outside the env and loses them.
        "max_episode_steps": None,
        # Raw candidate features of the pending decision in info (docs/envs.md); False saves ~3 us per step.
        "info_features": True,
        # Weights of the reward components (docs/envs.md): reward = sum(sign * weight * component).
        "reward": {
            "slo_met": 1.0,  # per completion that met its SLO
            "slo_met_tokens": 0.0,  # per output token of those completions
            "slo_missed": 1.0,  # per completion that missed its SLO
            "drops": 1.0,  # per dropped request
            "cost_usd": 100.0,  # per USD of GPU time billed: a met request is worth 1 cent
            "fairness_gap": 0.0,  # per VTC token of growth of the max service gap between tenants
            "invalid_action": 1.0,  # per replaced invalid action (invalid_action="noop_penalty")
        },
        # Scales that map raw features to ~[0, 1] (values beyond are clipped to the Box bounds).
        "norm": {
            "prompt_tokens": 8192.0,
            "queue": 64.0,
            "slack_s": 10.0,
            "wait_s": 10.0,
            "counter": 100000.0,
            "rate_per_s": 20.0,
            "cost_usd_per_hour": 100.0,
            "price_per_hour": 50.0,  # per replica (price per GPU-hour x tp)
            "cold_start_s": 600.0,
            "tpot_s": 0.5,
            "session_steps": 32.0,  # calls a session made (the agentic scenario caps sessions at 32)
        },
    }


def merge_config(base: dict[str, Any], override: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """``base`` updated by ``override``; unknown keys (also inside ``reward`` and ``norm``) raise ConfigError."""
    out = copy.deepcopy(base)
    if not override:
        return out
    if not isinstance(override, dict):
        raise ConfigError(f"{where}: expected a dict of config keys, got {type(override).__name__}")
    for key, val in override.items():
        if key not in out:
            raise ConfigError(f"{where}: unknown config key {key!r}; known keys: {sorted(out)}")
        if key in ("reward", "norm"):
            if not isinstance(val, dict):
                raise ConfigError(f"{where}: config key {key!r} must be a dict, got {type(val).__name__}")
            for sub, x in val.items():
                if sub not in out[key]:
                    raise ConfigError(f"{where}: unknown key {key}.{sub!r}; known: {sorted(out[key])}")
                out[key][sub] = x
        elif key == "scenario_overrides":
            if not isinstance(val, dict):
                raise ConfigError(f"{where}: scenario_overrides must be a dict, got {type(val).__name__}")
            out[key] = copy.deepcopy(val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def check_values(cfg: dict[str, Any], where: str) -> None:
    """Type and range checks of the scalar keys, so a bad value fails here and not inside the kernel."""

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: config key {key!r} {msg}, got {cfg[key]!r}")

    def is_int(x: Any) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    def is_num(x: Any) -> bool:
        return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)

    need(cfg["invalid_action"] in INVALID_MODES, "invalid_action", f"must be one of {INVALID_MODES}")
    need(
        cfg["batch_order"] == "scenario" or cfg["batch_order"] in BATCHING_IDS,
        "batch_order",
        f"must be 'scenario' or one of {sorted(BATCHING_IDS)}",
    )
    need(is_int(cfg["top_k"]) and 1 <= cfg["top_k"] <= 256, "top_k", "must be an int in [1, 256]")
    need(
        is_int(cfg["scale_step"]) and 1 <= cfg["scale_step"] <= 64, "scale_step", "must be an int in [1, 64]"
    )
    need(is_int(cfg["rate_bins"]) and 1 <= cfg["rate_bins"] <= 64, "rate_bins", "must be an int in [1, 64]")
    need(is_num(cfg["rate_bin_s"]) and cfg["rate_bin_s"] > 0, "rate_bin_s", "must be a number > 0")
    for key in ("max_replicas", "max_pools"):
        need(cfg[key] is None or (is_int(cfg[key]) and cfg[key] >= 1), key, "must be None or an int >= 1")
    for key in ("horizon_s", "day_period_s"):
        need(cfg[key] is None or (is_num(cfg[key]) and cfg[key] > 0), key, "must be None or a number > 0")
    need(
        cfg["sim_seed"] is None or (is_int(cfg["sim_seed"]) and 0 <= cfg["sim_seed"] < 2**63),
        "sim_seed",
        "must be None or an int in [0, 2**63)",
    )
    need(
        cfg["max_episode_steps"] is None
        or (is_int(cfg["max_episode_steps"]) and cfg["max_episode_steps"] >= 1),
        "max_episode_steps",
        "must be None or an int >= 1",
    )
    need(cfg["timing"] in ("v0", "v1"), "timing", "must be 'v0' or 'v1'")
    need(isinstance(cfg["info_features"], bool), "info_features", "must be a bool")
    need(
        cfg["session_features"] in ("auto", True, False), "session_features", "must be 'auto', true or false"
    )
    need(cfg["disagg_features"] in ("auto", True, False), "disagg_features", "must be 'auto', true or false")
    for sub, x in cfg["reward"].items():
        if not (is_num(x) and np.isfinite(x)):
            raise ConfigError(f"{where}: reward.{sub} must be a finite number, got {x!r}")
    for sub, x in cfg["norm"].items():
        if not (is_num(x) and np.isfinite(x) and x > 0):
            raise ConfigError(f"{where}: norm.{sub} must be a finite number > 0, got {x!r}")


def has_sessions(scenario: Any) -> bool:
    """Whether a scenario has an agentic sessions source (``session_features: "auto"`` turns them on)."""
    return any(getattr(src, "kind", None) == "sessions" for src in scenario.sources)


def has_disagg(scenario: Any) -> bool:
    """Whether a pool of the scenario has role prefill or decode (``disagg_features: "auto"`` turns the
    disaggregation group on)."""
    return any(getattr(p, "role", "mixed") != "mixed" for p in scenario.pools)


# ---------------------------------------------------------------- observation layout

REQUEST_FEATURES = (
    "valid",
    "prompt_tokens",
    "tier_interactive",
    "tier_batch",
    "slack",
    "slack_fraction",
    "tenant_counter",
    "tenant_weight",
    "tpot_slo",
)
REPLICA_FEATURES = (
    "exists",
    "starting",
    "active",
    "draining",
    "queue_len",
    "running",
    "kv_frac",
    "wait_estimate",
    "busy",
    "startup_left",
)  # followed by a one-hot of the replica's pool (max_pools entries)
POOL_FEATURES = (
    "exists",
    "n_up",
    "n_active",
    "n_starting",
    "n_draining",
    "min_replicas",
    "max_replicas",
    "kv_util",
    "queue_len",
    "price",
    "cold_start",
    "tp",
    "spot",
    "n_failed",
    "n_reclaiming",
)
GLOBAL_FEATURES = (
    "time_of_day_sin",
    "time_of_day_cos",
    "progress",
    "cost_rate",
    "slo_attainment",
    "drop_fraction",
    "held",
)  # followed by arrival rates: tier-major, newest bin first (2 x rate_bins entries)
CANDIDATE_FEATURES = (
    "present",
    "admissible",
    "prompt_tokens",
    "tier_interactive",
    "tier_batch",
    "slack",
    "slack_fraction",
    "waited",
    "tenant_counter",
    "tenant_weight",
    "preempted",
)
FORMING_FEATURES = (
    "valid",
    "running",
    "kv_frac",
    "budget_left",
    "prefilling",
    "queue_len",
    "visible_waiting",
)  # followed by a one-hot of the replica's pool
# Agentic sessions (only with session_features): the request being routed (zeros when none is), then how
# many sessions wait on a tool, i.e. will send their next call soon.
SESSION_STEP_FEATURES = ("in_session", "step", "session_slack")  # of one request (routed, or a candidate)
SESSION_FEATURES = SESSION_STEP_FEATURES + ("has_home", "tools_waiting")
SESSION_REPLICA_FEATURES = ("home", "tools_waiting")  # per replica: this request's home; sessions homed here
SESSION_CANDIDATE_FEATURES = SESSION_STEP_FEATURES
# Prefill/decode disaggregation (only with disagg_features): whether the pending routing decision sends a
# prefilled request's KV cache to a decode replica, the KV caches waiting for a decode replica (the transfer
# backlog, held on prefill replicas) and those in transfer (norm.queue); the per-pool features give each
# role's load and KV headroom.
DISAGG_FEATURES = ("decode_decision", "transfer_waiting", "transfers_in_flight")
# Features with range [-1, 1]; everything else is in [0, 1].
SIGNED = {"slack", "slack_fraction", "session_slack", "time_of_day_sin", "time_of_day_cos"}


def feature_index(name: str, features: tuple[str, ...]) -> type[IntEnum]:
    """Named positions of one entity's features, derived from its name tuple: the kernels write
    ``obs[b + REPLICA.KV_FRAC]``, and numba reads IntEnum members as compile-time constants (no cost)."""
    return IntEnum(name, [(f.upper(), i) for i, f in enumerate(features)], module=__name__)


REQUEST = feature_index("REQUEST", REQUEST_FEATURES)
REPLICA = feature_index("REPLICA", REPLICA_FEATURES)
POOL = feature_index("POOL", POOL_FEATURES)
GLOBAL = feature_index("GLOBAL", GLOBAL_FEATURES)
CANDIDATE = feature_index("CANDIDATE", CANDIDATE_FEATURES)
FORMING = feature_index("FORMING", FORMING_FEATURES)
SESSION = feature_index("SESSION", SESSION_FEATURES)
SESSION_REPLICA = feature_index("SESSION_REPLICA", SESSION_REPLICA_FEATURES)
SESSION_STEP = feature_index("SESSION_STEP", SESSION_STEP_FEATURES)
DISAGG = feature_index("DISAGG", DISAGG_FEATURES)

GROUPS = ("decision", "request", "prefix_hits", "candidates", "forming", "replicas", "pools", "global")
SESSION_GROUPS = ("session", "session_replicas", "session_candidates")
MODE_GROUPS = {
    MODE_ROUTE: ("request", "prefix_hits", "replicas", "pools", "global"),
    MODE_BATCH: ("candidates", "forming", "replicas", "pools", "global"),
    MODE_SCALE: ("pools", "replicas", "global"),
    MODE_CLUSTER: GROUPS,
}
MODE_SESSION_GROUPS = {
    MODE_ROUTE: ("session", "session_replicas"),
    MODE_BATCH: ("session", "session_replicas", "session_candidates"),
    MODE_SCALE: ("session", "session_replicas"),
    MODE_CLUSTER: SESSION_GROUPS,
}


@dataclass(frozen=True)
class Layout:
    """Sizes and offsets shared by the Python side and the kernels (packed into the aux ``ai`` array)."""

    mode: int
    r_pad: int
    p_pad: int
    k: int
    scale_step: int
    rate_bins: int
    sessions: bool = False
    disagg: bool = False
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # feature names per obs key
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # [start, stop) in the flat buffer
    obs_size: int = 0
    nvec: tuple[int, ...] = ()  # action dims
    act_offsets: tuple[int, int, int] = (-1, -1, -1)  # action index of the route / batch / first scale dim
    mask_offsets: tuple[int, int, int] = (-1, -1, -1)

    @staticmethod
    def build(
        mode: int,
        r_pad: int,
        p_pad: int,
        k: int,
        scale_step: int,
        rate_bins: int,
        sessions: bool = False,
        disagg: bool = False,
    ) -> Layout:
        pool_onehot = tuple(f"pool_{p}" for p in range(p_pad))
        per = {
            "decision": ("route", "batch", "scale"),
            "request": REQUEST_FEATURES,
            "prefix_hits": tuple(f"replica_{r}" for r in range(r_pad)),
            "candidates": tuple(f"{j}/{f}" for j in range(k) for f in CANDIDATE_FEATURES),
            "forming": FORMING_FEATURES + pool_onehot,
            "replicas": tuple(f"{r}/{f}" for r in range(r_pad) for f in REPLICA_FEATURES + pool_onehot),
            "pools": tuple(f"{p}/{f}" for p in range(p_pad) for f in POOL_FEATURES),
            "global": GLOBAL_FEATURES
            + tuple(f"rate/{tier}/{b}" for tier in ("interactive", "batch") for b in range(rate_bins)),
            "session": SESSION_FEATURES,
            "session_replicas": tuple(f"{r}/{f}" for r in range(r_pad) for f in SESSION_REPLICA_FEATURES),
            "session_candidates": tuple(f"{j}/{f}" for j in range(k) for f in SESSION_CANDIDATE_FEATURES),
            "disagg": DISAGG_FEATURES,
        }
        names: dict[str, tuple[str, ...]] = {}
        offsets: dict[str, tuple[int, int]] = {}
        pos = 0
        groups = (
            MODE_GROUPS[mode]
            + (MODE_SESSION_GROUPS[mode] if sessions else ())
            + (("disagg",) if disagg else ())
        )
        for g in groups:
            names[g] = per[g]
            offsets[g] = (pos, pos + len(per[g]))
            pos += len(per[g])
        ns = 2 * scale_step + 1
        if mode == MODE_ROUTE:
            nvec, act, msk = (r_pad,), (0, -1, -1), (0, -1, -1)
        elif mode == MODE_BATCH:
            nvec, act, msk = (k + 1,), (-1, 0, -1), (-1, 0, -1)
        elif mode == MODE_SCALE:
            nvec, act, msk = (ns,) * p_pad, (-1, -1, 0), (-1, -1, 0)
        else:
            nvec, act, msk = (r_pad, k + 1) + (ns,) * p_pad, (0, 1, 2), (0, r_pad, r_pad + k + 1)
        return Layout(
            mode,
            r_pad,
            p_pad,
            k,
            scale_step,
            rate_bins,
            sessions,
            disagg,
            names,
            offsets,
            pos,
            nvec,
            act,
            msk,
        )

    def low(self, group: str) -> np.ndarray:
        """Lower Box bound per feature: -1 for signed features, else 0 (the upper bound is always 1)."""
        return np.array(
            [-1.0 if n.rsplit("/", 1)[-1] in SIGNED else 0.0 for n in self.names[group]], np.float32
        )

    def off(self, group: str) -> int:
        return self.offsets[group][0] if group in self.offsets else -1

    @property
    def mask_size(self) -> int:
        return int(sum(self.nvec))
