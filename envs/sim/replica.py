"""Per-replica kernels: waiting queue, prefix cache, vLLM-style continuous batching, and the replica lifecycle.

One iteration of a replica is formed in three steps, as in vLLM's scheduler with chunked prefill (Sarathi-Serve):
1. ``prepare_running``: every decoding sequence gets one token and, if its last KV block is full, a new block;
   when blocks run out the most recently admitted sequence is preempted by recompute (vLLM's default).
   Sequences still prefilling get the next chunk of the token budget.
2. admission of waiting requests in policy order while the sequence limit, the token budget and the KV cache
   (with vLLM's 1% watermark) allow; the first request that does not fit stops admission (head-of-line, as vLLM).
3. ``launch``: the iteration's duration comes from the fitted perf model of the replica's pool.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from envs.perf.model import iteration_time_s
from envs.sim.policies import batch_score
from envs.sim.state import (
    C_LAST_LEFT_COUNTER,
    C_MAX_GAP,
    C_MAX_WAIT,
    K_ADMIT_SEQ,
    K_BATCH_POLICY,
    K_DROPS,
    K_FINISHED,
    K_ITERATIONS,
    K_PC_STAMP,
    K_PREEMPTIONS,
    KV_BLOCK_TOKENS,
    PREFIX_BLOCK_TOKENS,
    PREFIX_WAYS,
    RS_ACTIVE,
    RS_DRAINING,
    RS_OFF,
    RS_STARTING,
    ST_DROPPED,
    ST_FINISHED,
    TIER_INTERACTIVE,
)

INF = np.inf
# vLLM keeps 1% of KV blocks free when admitting (BlockSpaceManager watermark=0.01) to avoid instant preemption.
KV_WATERMARK = 0.01


@njit(cache=True, inline="always")
def kv_touch(st, r, now):
    """Close the KV-usage integral up to ``now``; call before every change of rep_kv_used."""
    st.rep_kv_block_s[r] += st.rep_kv_used[r] * (now - st.rep_kv_t[r])
    st.rep_kv_t[r] = now


@njit(cache=True, inline="always")
def kv_watermark(st, r):
    return max(1, int(st.rep_kv_cap[r] * KV_WATERMARK))


@njit(cache=True, inline="always")
def blocks_for(tokens):
    return (tokens + KV_BLOCK_TOKENS - 1) // KV_BLOCK_TOKENS


@njit(cache=True)
def drop_request(st, i, t):
    st.r_status[i] = ST_DROPPED
    st.r_finish[i] = t
    st.cnt[K_DROPS] += 1


# ---------------------------------------------------------------- tenants (VTC bookkeeping)


@njit(cache=True)
def backlog_inc(st, u):
    """A tenant joining the backlog has its counter lifted (VTC, Sheng et al. OSDI'24, Algorithm 2)."""
    if st.t_waiting[u] == 0:
        lift = INF
        for v in range(st.t_waiting.shape[0]):
            if v != u and st.t_waiting[v] > 0 and st.t_counter[v] < lift:
                lift = st.t_counter[v]
        if lift == INF:
            lift = st.clock[C_LAST_LEFT_COUNTER]
        if st.t_counter[u] < lift:
            st.t_counter[u] = lift
    st.t_waiting[u] += 1


@njit(cache=True)
def backlog_dec(st, u):
    st.t_waiting[u] -= 1
    if st.t_waiting[u] == 0:
        st.clock[C_LAST_LEFT_COUNTER] = st.t_counter[u]


@njit(cache=True)
def sample_service_gap(st):
    lo = INF
    hi = -INF
    for v in range(st.t_waiting.shape[0]):
        if st.t_waiting[v] > 0:
            c = st.t_counter[v]
            lo = min(lo, c)
            hi = max(hi, c)
    if hi > lo and hi - lo > st.clock[C_MAX_GAP]:
        st.clock[C_MAX_GAP] = hi - lo


# ---------------------------------------------------------------- waiting queue


@njit(cache=True)
def queue_push(st, r, i):
    n = st.q_n[r]
    if n >= st.q_req.shape[1]:
        return False
    st.q_req[r, n] = i
    st.q_n[r] = n + 1
    backlog_inc(st, st.r_tenant[i])
    return True


@njit(cache=True)
def queue_remove_at(st, r, k):
    i = st.q_req[r, k]
    last = st.q_n[r] - 1
    st.q_req[r, k] = st.q_req[r, last]
    st.q_n[r] = last
    backlog_dec(st, st.r_tenant[i])
    return i


@njit(cache=True, inline="always")
def next_deadline(st, i):
    """The deadline admission order can still affect: first token for interactive, completion for batch."""
    if st.r_tier[i] == TIER_INTERACTIVE:
        return st.r_arrival[i] + st.r_ttft_slo[i]
    return st.r_deadline[i]


@njit(cache=True)
def expire_and_pick(st, r, now):
    """Drop requests that waited past max_wait, and return the queue index of the best visible request.

    Returns -1 when no visible request waits.
    """
    policy = st.cnt[K_BATCH_POLICY]
    max_wait = st.clock[C_MAX_WAIT]
    best = -1
    best_s = INF
    best_id = 0
    k = 0
    while k < st.q_n[r]:
        i = st.q_req[r, k]
        vis = st.r_visible[i]
        if vis > now:
            k += 1
            continue
        if now - vis > max_wait:
            queue_remove_at(st, r, k)
            drop_request(st, i, vis + max_wait)
            continue  # the swapped-in request now sits at k
        u = st.r_tenant[i]
        s = batch_score(
            policy,
            st.r_arrival[i],
            next_deadline(st, i),
            st.r_prompt[i],
            st.r_tier[i],
            st.t_counter[u],
            st.t_weight[u],
        )
        if s < best_s or (s == best_s and i < best_id):
            best_s = s
            best = k
            best_id = i
        k += 1
    return best


@njit(cache=True)
def next_visible_time(st, r, now):
    nxt = INF
    for k in range(st.q_n[r]):
        v = st.r_visible[st.q_req[r, k]]
        if now < v < nxt:
            nxt = v
    return nxt


# ---------------------------------------------------------------- prefix cache (8-way set-associative LRU)


@njit(cache=True, inline="always")
def _pc_set(h, sets):
    # Mooncake hash ids are small consecutive integers: mix them so that they spread over the sets.
    x = (h ^ (h >> 17)) * 0x5BD1E995
    x = x ^ (x >> 15)
    if x < 0:
        x = -x
    return x % sets


@njit(cache=True)
def prefix_hits(st, r, i, touch):
    """Leading 512-token prefix blocks of request i that replica r holds in its prefix cache."""
    sets = st.rep_pc_sets[r]
    if sets == 0:
        return 0
    hits = 0
    for j in range(st.r_pfx_off[i], st.r_pfx_off[i + 1]):
        h = st.pfx_hash[j]
        base = _pc_set(h, sets) * PREFIX_WAYS
        found = -1
        for w in range(PREFIX_WAYS):
            if st.pc_key[r, base + w] == h:
                found = base + w
                break
        if found < 0:
            break
        hits += 1
        if touch:
            st.cnt[K_PC_STAMP] += 1
            st.pc_stamp[r, found] = st.cnt[K_PC_STAMP]
    return hits


@njit(cache=True)
def prefix_insert(st, r, i):
    sets = st.rep_pc_sets[r]
    if sets == 0:
        return
    for j in range(st.r_pfx_off[i], st.r_pfx_off[i + 1]):
        h = st.pfx_hash[j]
        base = _pc_set(h, sets) * PREFIX_WAYS
        slot = base
        for w in range(PREFIX_WAYS):
            if st.pc_key[r, base + w] == h:
                slot = base + w
                break
            if st.pc_stamp[r, base + w] < st.pc_stamp[r, slot]:
                slot = base + w
        st.pc_key[r, slot] = h
        st.cnt[K_PC_STAMP] += 1
        st.pc_stamp[r, slot] = st.cnt[K_PC_STAMP]


# ---------------------------------------------------------------- running slots


@njit(cache=True)
def _remove_slot(st, r, k):
    last = st.s_n[r] - 1
    if k != last:
        st.s_req[r, k] = st.s_req[r, last]
        st.s_ctx[r, k] = st.s_ctx[r, last]
        st.s_prefill_left[r, k] = st.s_prefill_left[r, last]
        st.s_out_left[r, k] = st.s_out_left[r, last]
        st.s_blocks[r, k] = st.s_blocks[r, last]
        st.s_admit[r, k] = st.s_admit[r, last]
        st.s_chunk[r, k] = st.s_chunk[r, last]
    st.s_n[r] = last


@njit(cache=True)
def preempt_slot(st, r, k, now):
    """Preemption by recompute: free the KV blocks and put the request back in its replica's queue."""
    i = st.s_req[r, k]
    kv_touch(st, r, now)
    st.rep_kv_used[r] -= st.s_blocks[r, k]
    st.r_recomputed[i] += st.s_ctx[r, k]
    st.r_preempt[i] += 1
    st.cnt[K_PREEMPTIONS] += 1
    _remove_slot(st, r, k)
    st.r_visible[i] = now  # its wait for max_wait restarts
    if not queue_push(st, r, i):
        drop_request(st, i, now)


@njit(cache=True)
def prepare_running(st, r, now):
    """Schedule the running sequences' work for the next iteration; return the token budget left."""
    pool = st.rep_pool[r]
    need = 0
    for k in range(st.s_n[r]):
        st.s_chunk[r, k] = 0
        if st.s_prefill_left[r, k] == 0 and st.s_ctx[r, k] + 1 > st.s_blocks[r, k] * KV_BLOCK_TOKENS:
            need += 1
    while need > st.rep_kv_cap[r] - st.rep_kv_used[r]:
        v = 0
        for k in range(1, st.s_n[r]):
            if st.s_admit[r, k] > st.s_admit[r, v]:
                v = k
        if st.s_prefill_left[r, v] == 0 and st.s_ctx[r, v] + 1 > st.s_blocks[r, v] * KV_BLOCK_TOKENS:
            need -= 1
        preempt_slot(st, r, v, now)
    budget = st.p_max_tokens[pool]
    kv_touch(st, r, now)
    for k in range(st.s_n[r]):
        if st.s_prefill_left[r, k] == 0 and budget > 0:
            if st.s_ctx[r, k] + 1 > st.s_blocks[r, k] * KV_BLOCK_TOKENS:
                st.s_blocks[r, k] += 1
                st.rep_kv_used[r] += 1
            st.s_chunk[r, k] = 1
            budget -= 1
    for k in range(st.s_n[r]):
        left = st.s_prefill_left[r, k]
        if left > 0 and budget > 0:
            c = min(left, budget)
            st.s_chunk[r, k] = c
            budget -= c
    return budget


@njit(cache=True)
def has_prefill(st, r):
    for k in range(st.s_n[r]):
        if st.s_chunk[r, k] > 0 and st.s_prefill_left[r, k] > 0:
            return True
    return False


@njit(cache=True)
def admit_chunk(st, r, i, budget, prefill_scheduled):
    """Tokens request i would prefill this iteration if admitted now, or 0 if it does not fit."""
    pool = st.rep_pool[r]
    if st.s_n[r] >= st.p_max_seqs[pool] or budget <= 0:
        return 0
    total = st.r_prompt[i] + st.r_generated[i]
    if st.rep_kv_used[r] + blocks_for(total) > st.rep_kv_cap[r] - kv_watermark(st, r):
        return 0
    if st.p_chunked[pool]:
        return min(total, budget)
    if total <= budget or not prefill_scheduled:
        return total
    return 0


@njit(cache=True)
def admit(st, r, i, budget, now):
    """Move request i (already removed from the queue) into a running slot; return its prefill chunk."""
    pool = st.rep_pool[r]
    total = st.r_prompt[i] + st.r_generated[i]
    cached = 0
    if st.p_prefix[pool]:
        # vLLM always recomputes at least the last prompt token, so a full hit still prefills one token.
        cached = min(prefix_hits(st, r, i, True) * PREFIX_BLOCK_TOKENS, st.r_prompt[i] - 1)
    left = total - cached
    c = min(left, budget) if st.p_chunked[pool] else left
    if st.r_generated[i] == 0 and st.r_preempt[i] == 0:
        st.t_counter[st.r_tenant[i]] += st.r_prompt[i]  # VTC charges 1 per input token at admission
    st.r_cached[i] += cached
    k = st.s_n[r]
    st.s_n[r] = k + 1
    nb = blocks_for(total)
    kv_touch(st, r, now)
    st.rep_kv_used[r] += nb
    st.s_req[r, k] = i
    st.s_ctx[r, k] = cached
    st.s_prefill_left[r, k] = left
    st.s_out_left[r, k] = st.r_output[i] - st.r_generated[i]
    st.s_blocks[r, k] = nb
    st.cnt[K_ADMIT_SEQ] += 1
    st.s_admit[r, k] = st.cnt[K_ADMIT_SEQ]
    st.s_chunk[r, k] = c
    return c


@njit(cache=True)
def admit_builtin(st, r, budget, now):
    prefill_scheduled = has_prefill(st, r)
    while budget > 0:
        k = expire_and_pick(st, r, now)
        if k < 0:
            break
        i = st.q_req[r, k]
        if admit_chunk(st, r, i, budget, prefill_scheduled) == 0:
            break
        queue_remove_at(st, r, k)
        budget -= admit(st, r, i, budget, now)
        prefill_scheduled = True


@njit(cache=True)
def launch(st, r, now):
    """Start the formed iteration (its length from the perf model), or go idle until the next queued arrival."""
    pool = st.rep_pool[r]
    n_pf = 0
    pairs = 0.0
    n_dec = 0
    dctx = 0
    for k in range(st.s_n[r]):
        c = st.s_chunk[r, k]
        if c == 0:
            continue
        if st.s_prefill_left[r, k] > 0:
            n_pf += c
            pairs += c * (st.s_ctx[r, k] + (c + 1) * 0.5)
        else:
            n_dec += 1
            dctx += st.s_ctx[r, k]
    if n_pf + n_dec == 0:
        st.rep_busy[r] = 0
        if st.rep_state[r] == RS_DRAINING and st.s_n[r] == 0 and st.q_n[r] == 0:
            turn_off(st, r, now)
        else:
            st.rep_next[r] = next_visible_time(st, r, now)
        return
    dt = iteration_time_s(st.p_coef[pool], n_pf, pairs, n_dec, dctx)
    st.rep_busy[r] = 1
    st.rep_next[r] = now + dt
    st.rep_busy_s[r] += dt
    st.cnt[K_ITERATIONS] += 1


@njit(cache=True)
def complete_iteration(st, r, now):
    """Apply the finished iteration: prefill progress, one token per scheduled sequence, completions."""
    pool = st.rep_pool[r]
    pool_region = st.p_region[pool]
    prefix_on = st.p_prefix[pool]
    k = st.s_n[r] - 1
    while k >= 0:
        c = st.s_chunk[r, k]
        if c > 0:
            i = st.s_req[r, k]
            produced = False
            if st.s_prefill_left[r, k] > 0:
                st.s_prefill_left[r, k] -= c
                st.s_ctx[r, k] += c
                if st.s_prefill_left[r, k] == 0:
                    produced = True  # the last prefill chunk samples the next token
                    if prefix_on:
                        prefix_insert(st, r, i)
            else:
                st.s_ctx[r, k] += 1
                produced = True
            st.s_chunk[r, k] = 0
            if produced:
                g = st.r_generated[i] + 1
                st.r_generated[i] = g
                st.s_out_left[r, k] -= 1
                st.t_counter[st.r_tenant[i]] += 2.0  # VTC charges 2 per output token
                back = st.region_lat[pool_region, st.r_region[i]]
                if g == 1:
                    st.r_first[i] = now + back
                if st.s_out_left[r, k] == 0:
                    st.r_finish[i] = now + back
                    st.r_status[i] = ST_FINISHED
                    st.cnt[K_FINISHED] += 1
                    kv_touch(st, r, now)
                    st.rep_kv_used[r] -= st.s_blocks[r, k]
                    _remove_slot(st, r, k)
        k -= 1
    st.rep_busy[r] = 0


# ---------------------------------------------------------------- lifecycle and billing


@njit(cache=True)
def turn_on(st, r, now):
    p = st.rep_pool[r]
    st.rep_state[r] = RS_STARTING
    st.rep_on_since[r] = now
    st.rep_ready[r] = now + st.p_cold_start[p]
    st.rep_next[r] = st.rep_ready[r]


@njit(cache=True)
def activate(st, r, now):
    st.rep_state[r] = RS_ACTIVE
    st.rep_up_since[r] = now
    st.rep_next[r] = INF
    st.rep_kv_t[r] = now


@njit(cache=True)
def turn_off(st, r, now):
    p = st.rep_pool[r]
    if st.rep_state[r] == RS_ACTIVE or st.rep_state[r] == RS_DRAINING:
        st.rep_up_s[r] += now - st.rep_up_since[r]
        kv_touch(st, r, now)
    if st.rep_state[r] != RS_OFF:
        st.p_billed_gpu_s[p] += (now - st.rep_on_since[r]) * st.p_tp[p]
    st.rep_state[r] = RS_OFF
    st.rep_next[r] = INF
    st.rep_busy[r] = 0


@njit(cache=True)
def start_drain(st, r, now):
    if st.rep_state[r] == RS_STARTING:
        turn_off(st, r, now)
        return
    st.rep_state[r] = RS_DRAINING
    if st.rep_busy[r] == 0 and st.s_n[r] == 0 and st.q_n[r] == 0:
        turn_off(st, r, now)
