"""Agent hyperparameters: one YAML file per (env id, scenario) under ``configs/agents/``, rl-zoo style.

Validated like the scenarios: an unknown key or a bad value names the file and key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from servegym.configs import AGENT_CONFIG_DIR


class AgentConfigError(ValueError):
    """An agent config that does not validate; the message names the file and key path."""


class _Strict(BaseModel):
    # no inf/NaN: an infinite learning rate passes a `gt=0` bound and only fails in torch, on NaN logits
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PPOParams(_Strict):
    """stable-baselines3 PPO arguments (defaults are SB3's unless a comment says otherwise)."""

    learning_rate: Annotated[float, Field(gt=0)] = 3e-4
    n_steps: Annotated[int, Field(ge=8)] = 256  # per env; SB3's 2048 is slow feedback for short episodes
    batch_size: Annotated[int, Field(ge=8)] = 256
    n_epochs: Annotated[int, Field(ge=1)] = 10
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.99
    gae_lambda: Annotated[float, Field(gt=0, le=1)] = 0.95
    clip_range: Annotated[float, Field(gt=0)] = 0.2
    ent_coef: Annotated[float, Field(ge=0)] = 0.01  # some exploration: masked discrete actions collapse early
    vf_coef: Annotated[float, Field(ge=0)] = 0.5
    max_grad_norm: Annotated[float, Field(gt=0)] = 0.5


class NetworkConfig(_Strict):
    extractor: Literal["set", "flat"] = "set"  # set: shared MLP over slots + pooling; flat: concatenation
    slot_hidden: Annotated[int, Field(ge=4)] = 64
    global_hidden: Annotated[int, Field(ge=4)] = 64
    net_arch: list[Annotated[int, Field(ge=4)]] = [64, 64]


class CurriculumStage(_Strict):
    """Train at ``load`` times the scenario's offered load until ``until`` of the total timesteps."""

    until: Annotated[float, Field(gt=0, le=1)]
    load: Annotated[float, Field(gt=0, le=10)]


class AgentConfig(_Strict):
    env_id: str
    scenario: str
    env_config: dict[str, Any] = {}  # keyword overrides of the env's default_config()
    algo: Literal["ppo", "maskable_ppo", "native_ppo"] = "maskable_ppo"  # native_ppo: agents/ppo.py
    total_timesteps: Annotated[int, Field(ge=1)] = 50_000
    n_envs: Annotated[int, Field(ge=1)] = 4
    normalize_obs: bool = False
    normalize_reward: bool = True
    train_seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = list(range(0, 100))
    # held out: never used for training
    eval_seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = list(range(1000, 1005))
    eval_freq: Annotated[int, Field(ge=1)] = 10_000  # total env steps between evaluations
    checkpoint_freq: Annotated[int, Field(ge=1)] = 10_000
    ppo: PPOParams = PPOParams()
    network: NetworkConfig = NetworkConfig()
    # Curriculum over load: stages in order of ``until``; after the last one (and with none) the scenario's
    # own load. A stage takes effect at each training episode's next reset; evaluation always runs at 1x.
    curriculum: list[CurriculumStage] = []

    @model_validator(mode="after")
    def _stages_in_order(self) -> AgentConfig:
        ends = [c.until for c in self.curriculum]
        if any(b <= a for a, b in zip(ends, ends[1:], strict=False)):
            raise ValueError(f"curriculum stages must have increasing 'until', got {ends}")
        return self

    def load_at(self, timestep: int) -> float:
        """The load factor of the curriculum stage that covers ``timestep``."""
        frac = timestep / self.total_timesteps
        for stage in self.curriculum:
            if frac < stage.until:
                return stage.load
        return 1.0


def agent_config_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return AGENT_CONFIG_DIR / f"{name_or_path}.yaml"


def load_agent_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> AgentConfig:
    path = agent_config_path(name_or_path)
    if not path.exists():
        known = sorted(p.stem for p in AGENT_CONFIG_DIR.glob("*.yaml"))
        raise AgentConfigError(f"{path}: no such agent config; known: {known}")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as e:
        raise AgentConfigError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); is it a YAML file?"
        ) from None
    except yaml.YAMLError as e:
        raise AgentConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise AgentConfigError(
            f"{path}: an agent config must be a YAML mapping of keys, got {type(raw).__name__}"
        )
    raw.update(overrides or {})
    return validated_config(raw, f"{path}: invalid agent config")


def validated_config(raw: dict[str, Any], headline: str) -> AgentConfig:
    """``raw`` as an AgentConfig, or an AgentConfigError: ``headline``, then one line per bad key."""
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as e:
        lines = [headline]
        lines += [f"  {'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise AgentConfigError("\n".join(lines)) from None
