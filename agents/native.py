"""The native PPO checkpoint file (``.pt``), both ways: ``save`` writes it, ``load_policy`` reads it back
as a policy (the registered loader for ``.pt``, agents/checkpoints.py), and the network it holds.

Where the files go in a run folder is agents/checkpoints.py; the trainer that writes them is agents/ppo.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from servegym.agents.config import AgentConfig
from servegym.agents.slot_policy import MaskedMultiCategorical, SlotActorCritic
from servegym.baselines.policy import PolicyError
from servegym.envs.gym import config as C

FORMAT = "servegym-native-ppo/1"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA device here (torch {torch.__version__})")
    return torch.device(name)


def flat_obs(obs: dict[str, np.ndarray]) -> np.ndarray:
    """The observation groups side by side, in layout order (what ``SlotActorCritic`` indexes)."""
    return np.concatenate(list(obs.values()), axis=-1)


def layout_args(lay: C.Layout) -> dict[str, Any]:
    keys = ("mode", "r_pad", "p_pad", "k", "scale_step", "rate_bins", "sessions")
    return {k: getattr(lay, k) for k in keys}


def build_net(lay: C.Layout, cfg: AgentConfig) -> SlotActorCritic:
    return SlotActorCritic(lay, cfg.network.slot_hidden, cfg.network.global_hidden)


# ---------------------------------------------------------------- the policy, for evaluation and the registry


class NativePolicy:
    """A trained ``SlotActorCritic`` behind the policy protocol (``baselines/policy.py``)."""

    needs_info_features = False

    def __init__(self, name: str, net: SlotActorCritic, env_id: str | None, deterministic: bool = True):
        self.name = name
        self.net = net.eval()
        self.env_id = env_id
        self.deterministic = deterministic
        self.nvec = tuple(net.layout.nvec)
        self.discrete = len(self.nvec) == 1 and net.layout.mode != C.MODE_SCALE
        self.device = next(net.parameters()).device
        self.gen: torch.Generator | None = None

    def reset(self, seed: int | None = None) -> None:
        if not self.deterministic:
            self.gen = torch.Generator(device=self.device)
            self.gen.manual_seed(0 if seed is None else int(seed))

    @torch.no_grad()
    def _actions(self, obs: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(flat_obs(obs), dtype=torch.float32, device=self.device)
        m = torch.as_tensor(np.asarray(mask), device=self.device).bool()
        logits, _ = self.net(x)
        dist = MaskedMultiCategorical(logits, m, self.nvec)
        a = dist.mode() if self.deterministic else dist.sample(self.gen)
        return a.cpu().numpy()

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> Any:
        a = self._actions({k: v[None] for k, v in obs.items()}, np.asarray(info["action_mask"])[None])[0]
        return int(a[0]) if self.discrete else a

    def act_batch(self, obs: dict[str, np.ndarray], infos: Any) -> np.ndarray:
        mask = (
            infos["action_mask"] if isinstance(infos, dict) else np.stack([i["action_mask"] for i in infos])
        )
        a = self._actions(obs, mask)
        return a[:, 0] if self.discrete else a


def load_policy(path: str | Path, device: str = "cpu", deterministic: bool = True, **_: Any) -> NativePolicy:
    """A ``.pt`` written by this trainer as a policy (the registry's loader for ``.pt``)."""

    if not Path(path).is_file():
        raise PolicyError(f"checkpoint {str(path)!r}: no such file (agents/ppo.py writes model.pt)")
    ck = torch.load(str(path), map_location=pick_device(device), weights_only=False)
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise PolicyError(f"checkpoint {str(path)!r} is not a servegym native PPO checkpoint ({FORMAT})")
    cfg = AgentConfig.model_validate(ck["config"])
    net = build_net(C.Layout.build(**ck["layout"]), cfg).to(pick_device(device))
    net.load_state_dict(ck["model"])
    return NativePolicy(str(path), net, cfg.env_id, deterministic)


# ---------------------------------------------------------------- checkpoints


def save(path: Path, net, opt, cfg: AgentConfig, lay: C.Layout, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    ck = {
        "format": FORMAT,
        "config": cfg.model_dump(),
        "layout": layout_args(lay),
        "model": net.state_dict(),
        "optimizer": opt.state_dict() if opt is not None else None,
        **state,
    }
    torch.save(ck, str(tmp))
    tmp.replace(path)  # never leave a half-written checkpoint behind
