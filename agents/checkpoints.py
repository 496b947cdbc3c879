"""The folder a training run writes, both ways: where each file goes, and the loaders that read it back.

A run folder (``--out`` of scripts/train.py) holds::

    config.yaml                         the resolved training config (algo, env id, normalization, ...)
    meta.json                           versions, git commit, command, wall time
    model.zip | model.pt                the final model (Stable-Baselines3 | native PPO, agents/ppo.py)
    vecnormalize.pkl                    observation statistics of the final model (SB3, when normalizing)
    best/best_model.zip | .pt           the best model on the held-out evaluation seeds
    best/vecnormalize.pkl               its observation statistics (SB3)
    checkpoints/model_<n>_steps.zip|.pt periodic checkpoints (SB3's CheckpointCallback names them so)
    checkpoints/model_vecnormalize_<n>_steps.pkl   their statistics (SB3)

The trainers (agents/train.py, agents/callbacks.py, agents/ppo.py, agents/bc.py) write through the path
functions here and the loaders below read through them; importing this module registers the loaders with the
policy registry, which imports it by name the first time it meets a checkpoint path
(``baselines/registry.py: make_policy``). torch and Stable-Baselines3 load only inside the loaders.
"""

from __future__ import annotations

import contextlib
import importlib
import pickle
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from servegym.baselines.policy import Policy, PolicyError
from servegym.baselines.registry import SB3Policy, register_checkpoint_loader

RUN_CONFIG = "config.yaml"
VECNORMALIZE = "vecnormalize.pkl"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "model"  # SB3's CheckpointCallback(name_prefix=...) and the native trainer's files
_STEP = re.compile(rf"{CHECKPOINT_PREFIX}_(\d+)_steps\.(zip|pt)$")


def final_model(out: Path, suffix: str = ".zip") -> Path:
    """The final model: ``.zip`` for SB3, ``.pt`` for native PPO."""
    return out / f"model{suffix}"


def best_model(out: Path, suffix: str = ".zip") -> Path:
    return out / "best" / f"best_model{suffix}"


def best_vecnormalize(out: Path) -> Path:
    return out / "best" / VECNORMALIZE


def step_checkpoint(out: Path, step: int, suffix: str = ".zip") -> Path:
    return out / CHECKPOINT_DIR / f"{CHECKPOINT_PREFIX}_{step}_steps{suffix}"


def step_vecnormalize(checkpoint: Path) -> Path:
    """The observation statistics SB3's CheckpointCallback saves beside a step checkpoint."""
    step = _STEP.match(checkpoint.name).group(1)  # type: ignore[union-attr]
    return checkpoint.with_name(f"{CHECKPOINT_PREFIX}_vecnormalize_{step}_steps.pkl")


def checkpoints(out: Path, suffix: str = ".zip") -> list[Path]:
    """The run's step checkpoints, oldest first."""
    found = [
        p for p in (out / CHECKPOINT_DIR).glob(f"{CHECKPOINT_PREFIX}_*_steps{suffix}") if _STEP.match(p.name)
    ]
    return sorted(found, key=lambda p: int(_STEP.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(out: Path, suffix: str = ".zip") -> Path | None:
    ckpts = checkpoints(out, suffix)
    return ckpts[-1] if ckpts else None


# ---------------------------------------------------------------- reading a run back


def run_files(path: Path) -> dict[str, Path]:
    """The files scripts/train.py writes beside a model: its run folder holds config.yaml and vecnormalize.pkl.

    A model may be the run's model.zip, best/best_model.zip or checkpoints/model_<n>_steps.zip.
    """
    out: dict[str, Path] = {}
    for folder in (path.parent, path.parent.parent):
        if "config" not in out and (folder / RUN_CONFIG).exists():
            out["config"] = folder / RUN_CONFIG
    stats = [step_vecnormalize(path)] if _STEP.match(path.name) else []
    stats += [path.parent / VECNORMALIZE, path.parent.parent / VECNORMALIZE]
    for s in stats:
        if s.exists():
            out["vecnormalize"] = s
            break
    return out


@contextlib.contextmanager
def _pre_rename_modules() -> Iterator[None]:
    """Checkpoints saved before the packages moved under ``servegym`` pickle ``agents.extractors.SetExtractor``.

    For the load only, the old module names point at ours; whatever a user had under those names (their own
    ``agents`` package, say) is put back afterwards, so nothing outside the load sees the alias.
    """
    aliases = {"agents": "servegym.agents", "agents.extractors": "servegym.agents.extractors"}
    saved = {old: sys.modules.get(old) for old in aliases}
    try:
        for old, new in aliases.items():
            sys.modules[old] = importlib.import_module(new)
        yield
    finally:
        for old, mod in saved.items():
            if mod is None:
                sys.modules.pop(old, None)
            else:
                sys.modules[old] = mod


def load_sb3(path: Path, algo: str | None = None, **kwargs: Any) -> Policy:
    """A Stable-Baselines3 (or sb3-contrib) checkpoint; ``algo`` names its class (``PPO``, ``MaskablePPO``).

    Without ``algo``, the run's config.yaml says which (scripts/train.py writes it); observation
    normalization statistics saved beside the model are applied before ``predict``.
    """
    files = run_files(Path(path))
    try:
        run_cfg = yaml.safe_load(files["config"].read_text()) if "config" in files else {}
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise PolicyError(
            f"checkpoint {str(path)!r}: cannot read its run config {files['config']}: {e}"
        ) from None
    if not isinstance(run_cfg, dict):
        raise PolicyError(f"checkpoint {str(path)!r}: its run config {files['config']} is not a mapping")
    if algo is None:
        algo = {"maskable_ppo": "MaskablePPO", "ppo": "PPO"}.get(run_cfg.get("algo", "ppo"), "PPO")
    obs_norm = None
    if "vecnormalize" in files and run_cfg.get("normalize_obs", False):
        try:
            with open(files["vecnormalize"], "rb") as f:
                obs_norm = pickle.load(f)
        except Exception as e:  # a truncated pickle raises UnpicklingError, EOFError, ...
            raise PolicyError(
                f"checkpoint {str(path)!r}: cannot load its normalization statistics {files['vecnormalize']} "
                f"({type(e).__name__}: {e}); the file is damaged or truncated"
            ) from None
    for module in ("stable_baselines3", "sb3_contrib"):
        cls = getattr(importlib.import_module(module), algo, None)
        if cls is not None:
            try:
                with _pre_rename_modules():
                    model = cls.load(str(path), device="cpu", **kwargs)
            except Exception as e:  # zipfile.BadZipFile, EOFError, KeyError, ...: a damaged model.zip
                raise PolicyError(
                    f"checkpoint {str(path)!r}: cannot load it as {algo} ({type(e).__name__}: {e}); the file "
                    "is damaged or truncated"
                ) from None
            policy = SB3Policy(str(path), model, obs_norm)
            policy.env_id = run_cfg.get("env_id")
            policy.run_config = run_cfg
            return policy
    raise PolicyError(
        f"checkpoint {str(path)!r}: no algorithm class {algo!r} in stable_baselines3/sb3_contrib"
    )


def load_native(path: Path, **kwargs: Any) -> Policy:
    """A native PPO checkpoint (agents/native.py; agents/ppo.py writes ``model.pt``, ``best/best_model.pt``
    and the step checkpoints)."""
    from servegym.agents.native import load_policy  # torch

    return load_policy(path, **kwargs)


register_checkpoint_loader(".zip", load_sb3)
register_checkpoint_loader(".pt", load_native)
