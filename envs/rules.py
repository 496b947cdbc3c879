"""The built-in scheduling rules: one table per decision kind, the single list of what exists.

Each row is a rule's name (what a scenario's ``policies.batching/routing/scaling`` and the baseline registry
call it), its id (what the numba core dispatches on, ``cnt[K_*_POLICY]``), a one-line description (the
baseline registry's) and its flags. Everything else derives from these tables: the scenario schema's allowed
names (envs/scenario.py), the core's id constants (envs/sim/policies.py), the baseline agents and their
registry entries (baselines/batching.py, routing.py, scaling.py, registry.py).

Adding a rule: write its scoring function in envs/sim/policies.py (and its branch in the core's dispatch,
``batch_score``/``route_score`` or envs/sim/routing.py / scaling.py when it reads new state), then append one
row here; ids are the rows' positions, so append at the end and existing ids keep their meaning.

Pure Python on purpose: the config layer reads these tables and must not import the simulator.
"""

from __future__ import annotations

from typing import NamedTuple

# The decision kinds of the decision interface, in the order of the core's event codes (EV_ROUTE, EV_BATCH,
# EV_SCALE in envs/sim/state.py), and the scenario ``policies`` key naming each kind's built-in rule.
DECISION_KINDS = ("route", "batch", "scale")
POLICY_KEY = {"route": "routing", "batch": "batching", "scale": "scaling"}


class Rule(NamedTuple):
    name: str
    id: int
    description: str
    # scaling: sizes pools from the arrival rate against a per-replica capacity (policies.replica_capacity_rps)
    needs_capacity: bool = False
    # draws from a random stream: a baseline agent matches the built-in rule in distribution, not draw for draw
    randomised: bool = False
    # reads agentic-session state (a session's deadline, calls made, or home replica)
    sessions: bool = False


BATCHING: tuple[Rule, ...] = (
    Rule("fcfs", 0, "first come, first served (earliest arrival)"),
    Rule(
        "edf", 1, "earliest deadline first (first-token deadline, or completion deadline for the batch tier)"
    ),
    Rule("sjf", 2, "shortest job first by prompt length"),
    Rule("vtc", 3, "fair share by Virtual Token Counter (Sheng et al., OSDI'24): smallest tenant counter"),
    Rule("wfs", 4, "weighted fair share: smallest tenant counter / tenant weight"),
    Rule("tier_priority", 5, "interactive tier before batch tier, FCFS within a tier"),
    Rule(
        "session_edf",
        6,
        "least agentic-session slack: earliest session deadline (own deadline outside a session)",
        sessions=True,
    ),
    Rule(
        "session_las",
        7,
        "Autellix's least attained service: the session with the fewest calls made, then FCFS",
        sessions=True,
    ),
    Rule(
        "wsc",
        8,
        "FairServe's weighted service counter (Khan et al., 2024): a user's VTC service over all LLM calls of "
        "its application requests, per application request its application is expected to need",
    ),
)

ROUTING: tuple[Rule, ...] = (
    Rule("round_robin", 0, "round-robin over the replicas that can serve the request"),
    Rule("random", 1, "uniformly random replica", randomised=True),
    Rule("jsq", 2, "join the shortest waiting queue (then fewest running)"),
    Rule("lor", 3, "least outstanding requests (waiting + running)"),
    Rule("least_kv", 4, "least KV-cache utilization"),
    Rule("p2c", 5, "power of two choices: the less loaded of two random replicas", randomised=True),
    Rule("prefix_affinity", 6, "longest cached prompt prefix, then least outstanding requests"),
    Rule("cost_aware", 7, "cheapest replica (per request/s of capacity) predicted to meet the SLO, else LOR"),
    Rule(
        "session_affinity",
        8,
        "an agentic session's home replica (its context's prefix cache) unless overloaded, else LOR",
        sessions=True,
    ),
    Rule(
        "splitwise",
        9,
        "Splitwise: join the shortest queue among the replicas of each phase's role, mixed pool as overflow",
    ),
    Rule(
        "mooncake",
        10,
        "Mooncake: the replica with the fewest prompt tokens left to prefill, counting its prefix-cache hits",
    ),
)

SCALING: tuple[Rule, ...] = (
    Rule("static", 0, "fixed replica counts (never scales)"),
    Rule("reactive", 1, "SageServe: +1 replica above 50% mean KV utilization, -1 below 25% (per pool)"),
    Rule(
        "target_util",
        2,
        "size pools to last interval's arrival rate + backlog at a target utilization of capacity",
        needs_capacity=True,
    ),
    Rule(
        "forecast",
        3,
        "as target_util, on a Holt forecast of the arrival rate one interval + a cold start ahead",
        needs_capacity=True,
    ),
    Rule(
        "reactive_replace",
        4,
        "reactive, and every replica lost to a failure or spot reclaim is replaced at once",
    ),
    Rule(
        "spot_mix",
        5,
        "on-demand floor sized to the interactive forecast, the rest of the forecast on spot pools",
        needs_capacity=True,
    ),
)

# Admission of an arriving request (envs/sim/admission.py): admit it, defer it, or reject it. Kept out of
# DECISION_KINDS on purpose: those index the core's EV_* codes below EV_TIME and size Cluster-v0's action
# layout, which suite v0 replays; admission has its own event code (EV_ADMIT), scenario key
# (``policies.admission``) and env (servegym/Admit-v1). Every rule but admit_all rejects (HTTP 429 in a real
# service) and never defers; deferral is the agent's extra choice.
ADMISSION_KIND = "admit"
ADMISSION_POLICY_KEY = "admission"
ADMISSION: tuple[Rule, ...] = (
    Rule("admit_all", 0, "admit every request (no throttling)"),
    Rule("rpm", 1, "fixed per-user limit of LLM calls per minute (token bucket), applied at all loads"),
    Rule("tpm", 2, "fixed per-user limit of prompt + output tokens per minute (token bucket), at all loads"),
    Rule(
        "fairserve",
        3,
        "FairServe's application-characteristic-aware throttling (Khan et al., 2024): per-user limit of "
        "application requests from its application's expected rate, applied only under overload",
    ),
)

# decision kind -> its rule table (the kinds a scenario's ``policies`` names)
RULES: dict[str, tuple[Rule, ...]] = {"batch": BATCHING, "route": ROUTING, "scale": SCALING}
# every rule table, admission's included (the id checks below cover all of them)
ALL_RULES: dict[str, tuple[Rule, ...]] = {**RULES, ADMISSION_KIND: ADMISSION}


def names(table: tuple[Rule, ...]) -> tuple[str, ...]:
    return tuple(r.name for r in table)


def ids(table: tuple[Rule, ...]) -> dict[str, int]:
    """Name -> id, the core's dispatch constants."""
    return {r.name: r.id for r in table}


def by_name(table: tuple[Rule, ...], name: str) -> Rule:
    for r in table:
        if r.name == name:
            return r
    raise KeyError(name)


def _check(kind: str, table: tuple[Rule, ...]) -> None:
    # ids are positions (so a new rule appends and old ids keep their meaning); names are unique
    for pos, r in enumerate(table):
        if r.id != pos:
            raise AssertionError(f"envs/rules.py: {kind} rule {r.name!r} has id {r.id}, expected {pos}")
    if len(set(names(table))) != len(table):
        raise AssertionError(f"envs/rules.py: duplicate {kind} rule names")


for _kind, _table in ALL_RULES.items():
    _check(_kind, _table)
