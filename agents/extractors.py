"""Feature extractors for servegym's Dict observations.

The envs name each observation feature ``"<slot>/<feature>"`` for per-slot groups (replicas, pools, batch
candidates) and plainly for global groups. ``SetExtractor`` runs every slot of a group through one shared MLP,
so the parameters do not grow with the number of replicas, and hands the policy both the per-slot embeddings
(which replica is which matters for routing) and their mean and max (a summary that does not depend on slot
order). ``flat`` concatenation is kept for small cases and as a baseline.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


def slot_layout(names: tuple[str, ...]) -> tuple[int, int] | None:
    """(slots, features per slot) when every name is ``"<int>/<feature>"`` in slot-major order, else None."""
    slots: list[str] = []
    per: dict[str, int] = {}
    for n in names:
        head, sep, _ = n.partition("/")
        if not sep or not head.isdigit():
            return None
        if head not in per:
            slots.append(head)
            per[head] = 0
        per[head] += 1
    counts = set(per.values())
    if len(counts) != 1 or [int(s) for s in slots] != list(range(len(slots))):
        return None
    return len(slots), counts.pop()


class SetExtractor(BaseFeaturesExtractor):
    """Shared per-slot MLP with pooling for slot groups; a small MLP over everything else."""

    def __init__(
        self,
        observation_space: gym.spaces.Dict,
        feature_names: dict[str, tuple[str, ...]],
        slot_hidden: int = 64,
        global_hidden: int = 64,
    ) -> None:
        self.sets: dict[str, tuple[int, int]] = {}
        flat_dim = 0
        for key, space in observation_space.spaces.items():
            lay = slot_layout(tuple(feature_names.get(key, ())))
            if lay is not None and lay[0] * lay[1] == space.shape[0]:
                self.sets[key] = lay
            else:
                flat_dim += int(space.shape[0])
        out = sum(n * slot_hidden + 2 * slot_hidden for n, _ in self.sets.values())
        out += global_hidden if flat_dim else 0
        super().__init__(observation_space, features_dim=max(out, 1))
        self.flat_keys = [k for k in observation_space.spaces if k not in self.sets]
        self.slot_nets = nn.ModuleDict(
            {
                k: nn.Sequential(
                    nn.Linear(f, slot_hidden), nn.ReLU(), nn.Linear(slot_hidden, slot_hidden), nn.ReLU()
                )
                for k, (_, f) in self.sets.items()
            }
        )
        self.global_net = nn.Sequential(nn.Linear(flat_dim, global_hidden), nn.ReLU()) if flat_dim else None

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for key, (n, f) in self.sets.items():
            x = obs[key].reshape(obs[key].shape[0], n, f)
            h = self.slot_nets[key](x)
            parts += [h.flatten(1), h.mean(dim=1), h.amax(dim=1)]
        if self.global_net is not None:
            parts.append(self.global_net(torch.cat([obs[k] for k in self.flat_keys], dim=1)))
        return torch.cat(parts, dim=1)
