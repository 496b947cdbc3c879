"""A permutation-equivariant actor-critic over the envs' replica, pool and candidate slots.

Every slot of a kind (replica, pool, batch candidate) goes through one shared MLP, so the parameters do not
depend on how many slots there are, and each action dimension that picks a slot gets its logit from that
slot's own embedding next to a context vector: permuting the replicas permutes the routing logits the same
way, and a padded slot is just a slot whose ``exists`` is 0 (and whose action the mask disables). A replica
sees its pool through the pool's embedding (the one-hot in its features selects it), not through the pool's
index, so pools are interchangeable too. The context pools the slot embeddings with a mean over the slots
that exist and a max, and adds the non-slot features (the request, the global rates, the forming batch).

Consequences: a network built for one padding runs on any scenario that fits that padding (a 3-replica
training scenario and a 4-replica test scenario with ``max_replicas=8``), and, because no weight is sized
by the slot count, it also loads at another replica padding as long as the pool padding and the non-slot
features keep their sizes.

The network reads the flat observation (the groups concatenated in layout order, as the envs store them)
and writes one logit vector per action dimension, concatenated in the order of the action mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from servegym.envs.gym import config as C

NEG = -1e8  # logit of a masked action


def mlp(sizes: list[int], last_act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class SlotIndex:
    """Where each slot kind's features sit in the flat observation (built from ``Layout.names``)."""

    replica: np.ndarray  # [R, Fr]: replica features without the pool one-hot, + prefix hit, + session ones
    replica_pool: np.ndarray  # [R, P]: the replica's pool one-hot
    pool: np.ndarray  # [P, Fp]
    candidate: np.ndarray  # [K, Fc] (empty when the env has no batch decision)
    context: np.ndarray  # [G]: everything else
    replica_exists: int  # column of "exists" inside a replica row
    pool_exists: int
    candidate_present: int

    @staticmethod
    def build(layout: C.Layout) -> SlotIndex:
        pos = {}
        for g, names in layout.names.items():
            a = layout.offsets[g][0]
            for i, n in enumerate(names):
                pos[(g, n)] = a + i
        used: set[int] = set()

        def take(cols: list[int]) -> list[int]:
            used.update(cols)
            return cols

        r, p, k = layout.r_pad, layout.p_pad, layout.k
        has = layout.names.keys()
        rep, rep_pool, pools, cands = [], [], [], []
        if "replicas" in has:
            for j in range(r):
                row = [pos[("replicas", f"{j}/{f}")] for f in C.REPLICA_FEATURES]
                if "prefix_hits" in has:
                    row.append(pos[("prefix_hits", f"replica_{j}")])
                if "session_replicas" in has:
                    row += [pos[("session_replicas", f"{j}/{f}")] for f in C.SESSION_REPLICA_FEATURES]
                rep.append(take(row))
                rep_pool.append(take([pos[("replicas", f"{j}/pool_{q}")] for q in range(p)]))
        if "pools" in has:
            pools = [take([pos[("pools", f"{q}/{f}")] for f in C.POOL_FEATURES]) for q in range(p)]
        if "candidates" in has:
            for j in range(k):
                row = [pos[("candidates", f"{j}/{f}")] for f in C.CANDIDATE_FEATURES]
                if "session_candidates" in has:
                    row += [pos[("session_candidates", f"{j}/{f}")] for f in C.SESSION_CANDIDATE_FEATURES]
                cands.append(take(row))
        context = [i for i in range(layout.obs_size) if i not in used]

        def arr(rows: list[list[int]], width: int) -> np.ndarray:
            return np.asarray(rows, np.int64) if rows else np.zeros((0, width), np.int64)

        return SlotIndex(
            arr(rep, 0),
            arr(rep_pool, p),
            arr(pools, len(C.POOL_FEATURES)),
            arr(cands, 0),
            np.asarray(context, np.int64),
            C.REPLICA_FEATURES.index("exists"),
            C.POOL_FEATURES.index("exists"),
            C.CANDIDATE_FEATURES.index("present"),
        )


def masked_pool(h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean over the slots with ``m`` = 1 ([B, S, H] -> [B, H]); zeros when there are none.

    Only a mean: a max pool's backward pass cost a fifth of an update on CPU for no gain we could measure.
    """
    m = m.unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class SlotActorCritic(nn.Module):
    """Logits per action dimension and a value, from the flat observation; see the module docstring.

    Kept lean on purpose (one layer per slot embedding, one for the context): on a 2-core CPU the update's
    matrix products are most of a training step, so width and depth trade directly against steps per second.
    A slot's logit is ``w . relu(slot embedding + U context)``: the context shifts every slot alike, and the
    slot's own features decide the ranking.
    """

    def __init__(self, layout: C.Layout, hidden: int = 32, context_hidden: int = 32) -> None:
        super().__init__()
        self.layout = layout
        ix = SlotIndex.build(layout)
        for name in ("replica", "replica_pool", "pool", "candidate", "context"):
            self.register_buffer(f"ix_{name}", torch.as_tensor(getattr(ix, name)), persistent=False)
        self.ix = ix
        # Observation normalization (set_normalizer): features are scaled to [0, 1] by fixed norms, so the
        # differences a router must see (one more queued request = 1/64) are tiny until standardized.
        self.register_buffer("obs_mean", torch.zeros(layout.obs_size))
        self.register_buffer("obs_std", torch.ones(layout.obs_size))
        h, hc = hidden, context_hidden
        self.route = layout.act_offsets[0] >= 0
        self.batch = layout.act_offsets[1] >= 0
        self.scale = layout.act_offsets[2] >= 0
        self.has_rep = ix.replica.shape[0] > 0
        self.has_pool = ix.pool.shape[0] > 0
        self.has_cand = ix.candidate.shape[0] > 0
        pooled = 0
        if self.has_pool:
            self.pool_net = mlp([ix.pool.shape[1], h])
            pooled += h
        if self.has_rep:
            self.rep_net = nn.Linear(ix.replica.shape[1], h)
            if self.has_pool:  # a replica's pool enters through its pool's embedding
                self.rep_pool = nn.Linear(h, h, bias=False)
            pooled += h
        if self.has_cand:
            self.cand_net = mlp([ix.candidate.shape[1], h])
            pooled += h
        self.ctx_net = mlp([len(ix.context) + pooled, hc])
        if self.route:
            self.route_ctx, self.route_out = nn.Linear(hc, h), nn.Linear(h, 1)
        if self.batch:
            self.cand_ctx, self.cand_out = nn.Linear(hc, h), nn.Linear(h, 1)
            self.start_head = mlp([hc, h, 1], last_act=False)
        if self.scale:
            self.scale_ctx, self.scale_out = nn.Linear(hc, h), nn.Linear(h, 2 * layout.scale_step + 1)
        self.value_head = mlp([hc, hc, 1], last_act=False)
        # small output layers: a near-uniform policy at the start (CleanRL's orthogonal init, gain 0.01)
        for out in ("route_out", "cand_out", "scale_out"):
            if hasattr(self, out):
                nn.init.orthogonal_(getattr(self, out).weight, 0.01)
                nn.init.zeros_(getattr(self, out).bias)
        if self.batch:
            nn.init.orthogonal_(self.start_head[-1].weight, 0.01)
            nn.init.zeros_(self.start_head[-1].bias)

    @torch.no_grad()
    def set_normalizer(self, mean: np.ndarray, var: np.ndarray) -> None:
        """Standardize the observation with these per-feature statistics, tied across the slots of a kind
        (every replica slot gets the same scaling, or the policy would stop being equivariant): a slot
        feature's mean and variance are those of the feature pooled over the slots."""
        mean, var = np.asarray(mean, np.float64).copy(), np.asarray(var, np.float64).copy()
        for ix in (self.ix.replica, self.ix.pool, self.ix.candidate):
            if ix.size:
                m = mean[ix].mean(0)
                v = (var[ix] + mean[ix] ** 2).mean(0) - m**2
                mean[ix], var[ix] = m, v
        std = np.sqrt(np.maximum(var, 0.0))
        std[std < 1e-3] = 1.0  # a (nearly) constant feature is left as it is
        self.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, obs_size] -> (logits [B, mask_size], value [B])."""
        xn = ((x - self.obs_mean) / self.obs_std).clamp(-5.0, 5.0)  # masks and one-hots come from raw x
        parts = [xn[:, self.ix_context]]
        pool_h = rep_h = cand_h = None
        if self.has_pool:
            pool_h = self.pool_net(xn[:, self.ix_pool])  # [B, P, H]
            parts.append(masked_pool(pool_h, x[:, self.ix_pool[:, self.ix.pool_exists]]))
        if self.has_rep:
            z = self.rep_net(xn[:, self.ix_replica])
            if pool_h is not None:
                # sum over pools of one-hot [B, R, P, 1] x projected embeddings [B, 1, P, H] (a broadcast
                # product, not bmm: bmm on [R, P] x [P, H] matrices this small is 10x slower)
                onehot = x[:, self.ix_replica_pool].unsqueeze(-1)
                z = z + (onehot * self.rep_pool(pool_h).unsqueeze(1)).sum(2)
            rep_h = torch.relu(z)
            parts.append(masked_pool(rep_h, x[:, self.ix_replica[:, self.ix.replica_exists]]))
        if self.has_cand:
            cand_h = self.cand_net(xn[:, self.ix_candidate])
            parts.append(masked_pool(cand_h, x[:, self.ix_candidate[:, self.ix.candidate_present]]))
        ctx = self.ctx_net(torch.cat(parts, dim=1))

        def slot_logits(slots: torch.Tensor, proj: nn.Linear, out: nn.Linear) -> torch.Tensor:
            return out(torch.relu(slots + proj(ctx).unsqueeze(1)))  # [B, S, out]

        logits = []
        if self.route:
            logits.append(slot_logits(rep_h, self.route_ctx, self.route_out).squeeze(-1))
        if self.batch:
            logits.append(slot_logits(cand_h, self.cand_ctx, self.cand_out).squeeze(-1))
            logits.append(self.start_head(ctx))
        if self.scale:
            logits.append(slot_logits(pool_h, self.scale_ctx, self.scale_out).flatten(1))
        return torch.cat(logits, dim=1), self.value_head(ctx).squeeze(-1)


class MaskedMultiCategorical:
    """Independent categoricals, one per action dimension, over masked logits (``nvec`` sizes)."""

    def __init__(self, logits: torch.Tensor, mask: torch.Tensor, nvec: tuple[int, ...]) -> None:
        self.nvec = nvec
        z = torch.where(mask, logits, torch.full_like(logits, NEG))
        self.logp = [t.log_softmax(dim=1) for t in torch.split(z, list(nvec), dim=1)]

    def sample(self, gen: torch.Generator | None = None) -> torch.Tensor:
        # Gumbel-max: one exponential draw per logit, from ``gen`` or torch's (seeded) global generator
        return torch.stack(
            [(lp - torch.empty_like(lp).exponential_(generator=gen).log()).argmax(1) for lp in self.logp], 1
        )

    def mode(self) -> torch.Tensor:
        return torch.stack([lp.argmax(1) for lp in self.logp], 1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        return sum(lp.gather(1, actions[:, i : i + 1]).squeeze(1) for i, lp in enumerate(self.logp))

    def entropy(self) -> torch.Tensor:
        # masked entries have p = 0 exactly (exp(-1e8)), so they add nothing
        return sum(-(lp.exp() * lp).sum(1) for lp in self.logp)
