"""Metrics of applications, their users and admission (FairServe; docs/metrics.md "Applications").

Pure functions of a ``SimOutcome`` with application fields (``tenant_application``): every user is a tenant,
and one application request is one session of the core (every request outside a session is its own
application request). ``compute_metrics`` adds these keys when the outcome has applications.
"""

from __future__ import annotations

import numpy as np

from servegym.envs.sim.outcome import (
    STATUS_DROPPED,
    STATUS_FINISHED,
    STATUS_IN_FLIGHT,
    STATUS_NOT_ARRIVED,
    SimOutcome,
)
from servegym.envs.slo import jain_index, met_finished

NAN = float("nan")


def request_met(o: SimOutcome) -> np.ndarray:
    """Per request: finished within its SLO (the rule of envs/slo.py)."""
    fin = o.status == STATUS_FINISHED
    out = np.zeros(o.n_requests, dtype=bool)
    out[fin] = met_finished(o, fin)
    return out


def application_requests(o: SimOutcome) -> tuple[np.ndarray, int]:
    """(id per request of its application request, how many): its session, or a new id outside sessions."""
    n = o.n_requests
    sid = o.session if o.session is not None else np.full(n, -1, dtype=np.int32)
    n_sess = int(sid.max(initial=-1)) + 1
    solo = sid < 0
    ids = sid.astype(np.int64).copy()
    ids[solo] = n_sess + np.arange(int(solo.sum()))
    return ids, n_sess + int(solo.sum())


def app_request_outcomes(o: SimOutcome) -> dict[str, np.ndarray]:
    """Per application request: user, started, met, judged.

    Met: every call that arrived met its SLO, its last call finished, and (with a session SLO) it completed
    within it. Judged: met, or it can no longer be met -- a call was dropped or rejected (the rest of the
    request is abandoned), a call finished past its SLO, a call in flight is past its deadline, or it runs
    past its session SLO. Requests still in progress on time are not judged.
    """
    ids, n_app = application_requests(o)
    arrived = o.status != STATUS_NOT_ARRIVED
    met_call = request_met(o)
    fin = o.status == STATUS_FINISHED
    user = np.zeros(n_app, dtype=np.intp)
    user[ids] = o.tenant
    started = np.zeros(n_app, dtype=bool)
    started[ids[arrived]] = True
    bad = np.zeros(n_app, dtype=bool)
    bad[ids[o.status == STATUS_DROPPED]] = True
    bad[ids[fin & ~met_call]] = True
    bad[ids[(o.status == STATUS_IN_FLIGHT) & (o.deadline_s < o.now_s)]] = True
    steps_left = (
        o.session_steps_left if o.session_steps_left is not None else np.zeros(o.n_requests, np.int32)
    )
    done = np.zeros(n_app, dtype=bool)
    done[ids[fin & (steps_left == 0)]] = True
    start = np.full(n_app, np.inf)
    np.minimum.at(start, ids[arrived], o.arrival_s[arrived])
    end = np.full(n_app, np.nan)
    last = fin & (steps_left == 0)
    end[ids[last]] = o.finish_s[last]
    slo = np.full(n_app, np.nan)
    if o.tenant_session_slo_s is not None:
        slo = o.tenant_session_slo_s[user]
    has_slo = ~np.isnan(slo)
    with np.errstate(invalid="ignore"):
        late = has_slo & ((done & (end - start > slo)) | (~done & (o.now_s - start > slo)))
    bad |= late & started
    met = started & done & ~bad
    judged = started & (met | bad)
    return {"user": user, "started": started, "met": met, "judged": judged}


def user_service(o: SimOutcome) -> np.ndarray:
    """VTC service per user (1 per prompt token once prefilled, 2 per generated token)."""
    n_t = len(o.tenant_names)
    arrived = o.status != STATUS_NOT_ARRIVED
    prefilled = arrived & ~np.isnan(o.first_token_s)
    t = o.tenant.astype(np.intp)
    # astype: numpy returns int64 for a weighted bincount of nothing
    s = np.bincount(t[prefilled], weights=o.prompt_tokens[prefilled], minlength=n_t).astype(np.float64)
    s += 2.0 * np.bincount(t[arrived], weights=o.generated_tokens[arrived], minlength=n_t)
    return s


def application_metrics(o: SimOutcome) -> dict[str, int | float]:
    """The ``app/*`` keys (docs/metrics.md "Applications")."""
    m: dict[str, int | float] = {}
    assert o.tenant_application is not None and o.tenant_abusive is not None
    n_t = len(o.tenant_names)
    app_of = o.tenant_application.astype(np.intp)
    abusive = o.tenant_abusive.astype(bool)
    arrived = o.status != STATUS_NOT_ARRIVED
    present = np.bincount(o.tenant[arrived].astype(np.intp), minlength=n_t) > 0

    r = app_request_outcomes(o)
    benign_req = ~abusive[r["user"]]
    for name, sel in (("benign", benign_req), ("abusive", ~benign_req)):
        met = int(np.count_nonzero(r["met"] & sel))
        judged = int(np.count_nonzero(r["judged"] & sel))
        m[f"app/slo_attainment/{name}"] = met / judged if judged else NAN
        m[f"app/requests/{name}"] = int(np.count_nonzero(r["started"] & sel))
    for a, name in enumerate(o.application_names):
        sel = (app_of[r["user"]] == a) & benign_req
        judged = int(np.count_nonzero(r["judged"] & sel))
        m[f"app/slo_attainment/benign/{name}"] = (
            int(np.count_nonzero(r["met"] & sel)) / judged if judged else NAN
        )

    # fairness: service per user over its weight (WSC's normalisation), users that sent something
    norm = user_service(o) / o.tenant_weights
    users = present & (app_of >= 0)
    x = norm[users]
    m["app/fairness/jain_users"] = jain_index(x)
    m["app/fairness/max_gap_users"] = float(x.max() - x.min()) if x.size else NAN
    xb = norm[users & ~abusive]
    m["app/fairness/jain_benign_users"] = jain_index(xb)
    m["app/fairness/max_gap_benign_users"] = float(xb.max() - xb.min()) if xb.size else NAN
    n_app = len(o.application_names)
    per_app = np.bincount(app_of[users], weights=norm[users], minlength=n_app)
    n_users = np.bincount(app_of[users], minlength=n_app)
    xa = per_app[n_users > 0] / n_users[n_users > 0]  # mean normalised service per user of each application
    m["app/fairness/jain_apps"] = jain_index(xa)
    m["app/fairness/max_gap_apps"] = float(xa.max() - xa.min()) if xa.size else NAN

    if o.admission is not None:
        _throttling_metrics(o, m, abusive, present)
    return m


def _throttling_metrics(o: SimOutcome, m: dict, abusive: np.ndarray, present: np.ndarray) -> None:
    """Who was throttled (a request rejected or deferred), against the ground truth, and what it cost."""
    n_t = len(o.tenant_names)
    t = o.tenant.astype(np.intp)
    rejected = (o.admission & 1) == 1
    throttled_req = o.admission > 0
    throttled = np.bincount(t[throttled_req], minlength=n_t) > 0
    tp = int(np.count_nonzero(throttled & abusive))
    m["app/throttle/users"] = int(np.count_nonzero(throttled))
    m["app/throttle/precision"] = tp / int(np.count_nonzero(throttled)) if throttled.any() else NAN
    n_abusive = int(np.count_nonzero(abusive & present))
    m["app/throttle/recall"] = tp / n_abusive if n_abusive else NAN
    rej_abusive = rejected & abusive[t]
    m["app/throttle/rejected"] = int(np.count_nonzero(rejected))
    m["app/throttle/rejected_benign"] = int(np.count_nonzero(rejected & ~abusive[t]))
    m["app/throttle/request_precision"] = (
        int(np.count_nonzero(rej_abusive)) / int(np.count_nonzero(rejected)) if rejected.any() else NAN
    )
    m["app/throttle/deferrals"] = int((o.admission >> 2).sum(dtype=np.int64))
    # over-throttling: benign requests turned away (rejected, or deferred) while the fleet was not overloaded
    spare = ((o.admission >> 1) & 1) == 1
    over = spare & ~abusive[t]
    m["app/throttle/overthrottled_benign"] = int(np.count_nonzero(over))
    m["app/throttle/overthrottle_gpu_s"] = wasted_capacity_gpu_s(o, over)


def wasted_capacity_gpu_s(o: SimOutcome, turned_away: np.ndarray) -> float:
    """Capacity wasted by over-throttling: GPU-seconds the requests ``turned_away`` (benign requests rejected
    or deferred while the fleet was not overloaded) would have used, capped at the GPU-seconds the fleet sat
    idle (up but not running an iteration) in the episode.

    "Not overloaded" is judged by the core at the moment of each rejection or deferral, with FairServe's
    signal (admission.overloaded: at most ``overload_load_per_replica`` requests outstanding per active
    replica), so a request turned away at the peak is never counted. A request's GPU-seconds are its VTC
    demand (prompt + 2 x output tokens) times the run's busy GPU-seconds per unit of service served, the
    fleet's own exchange rate. 0 when no such request exists.
    """
    if not turned_away.any():
        return 0.0
    tp = o.pool_gpus_per_replica[o.replica_pool].astype(np.float64)
    busy_gpu_s = float(np.dot(o.replica_busy_s, tp))
    idle_gpu_s = float(np.dot(np.maximum(o.replica_up_s - o.replica_busy_s, 0.0), tp))
    served = float(user_service(o).sum())
    if served <= 0:
        return idle_gpu_s
    need = o.prompt_tokens[turned_away].sum(dtype=np.float64) + 2.0 * o.output_tokens[turned_away].sum(
        dtype=np.float64
    )
    return float(min(idle_gpu_s, need * busy_gpu_s / served))
