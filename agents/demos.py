"""Demonstrations in Minari format: rollouts of the heuristics and of the clairvoyant oracle, one dataset per
scenario and policy, for offline RL and for behaviour cloning (agents/bc.py ``--dataset``).

    python scripts/make_demos.py --suite v1 --episodes 2 --out demos            # every suite scenario
    python scripts/make_demos.py --suite v1 --scenarios chat_bursty --policies jsq,oracle_route --out demos
    python scripts/make_demos.py --config route_chat_azure_native --policies jsq --episodes 8 --out demos
    MINARI_DATASETS_PATH=demos python -c "import minari; print(minari.load_dataset('servegym/chat_bursty/jsq-v0'))"

A dataset ``servegym/<scenario>/<policy>-v0`` (Minari's ``namespace/name-vN``; a Cluster combination's ``+``
becomes ``-``) holds one episode per seed, each exactly what an agent sees on the single env
(``baselines/env_runner.run_env_episode``, which also plays the leaderboard's episodes): ``observations``
(the env's Dict observation, reset observation first, so one more than steps), ``actions`` (the env's whole
action: Discrete, or MultiDiscrete with every dim, as the env took it), ``rewards`` (the env's reward as it
returned it: the requests a horizon cut leaves overdue are not charged here; agents/ppo.py charges them in
training), ``terminations``, ``truncations``, and ``infos/action_mask`` (the env's mask before each step and
after the last one). Each episode's seed is its workload seed (``reset(seed=s, options={"seed": s})``) and
its metadata holds the episode's leaderboard metrics (goodput, attainment, cost). The dataset's ``env_spec``
rebuilds the env the agent saw (``dataset.recover_environment()``), and its metadata's ``servegym`` entry
names the scenario file and its sha256, the env config, the seeds and the code that wrote it.

Seeds: a suite scenario's train seeds (never its validation or test seeds), from ``--seed`` on; an agent
config's ``train_seeds``. A trace scenario records its synthetic twin. Same arguments, same data: the env
and the policies are deterministic given the seed (tested).

minari (and h5py, its storage) is the ``offline`` extra, part of ``train``; imported only when writing or
reading a dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from servegym.agents.config import load_agent_config
from servegym.baselines.env_runner import make_env, needs_info_features, resolve_policy, run_env_episode
from servegym.baselines.harness import git_commit
from servegym.envs import __version__
from servegym.envs.scenario import load_scenario

NAMESPACE = "servegym"
VERSION = 0
# the episode metrics kept as Minari episode metadata (the rest stay in the leaderboard's entries)
EPISODE_METRICS = ("goodput/req_per_s", "slo_attainment", "cost/usd", "throughput/req_per_s")


class DemoError(ValueError):
    """A dataset that cannot be written or read as asked (the message names the dataset and the problem)."""


@dataclasses.dataclass(frozen=True)
class DemoSource:
    """An env to record on: a suite scenario, or an agent config's training env."""

    name: str  # the scenario's name, the middle of the dataset id
    env_id: str
    scenario: str  # a scenario name or file path
    env_config: dict[str, Any]
    seeds: tuple[int, ...]  # training seeds only

    def kind(self) -> str:
        return self.env_id.split("/")[-1].split("-")[0].lower()  # route, batch, scale, cluster


def oracle_for(src: DemoSource) -> str:
    """The clairvoyant planner of the env's decision (baselines/planning.py)."""
    kind = src.kind()
    if kind == "cluster":
        return "oracle_batch+oracle_route+oracle_scale"
    return f"oracle_{kind}"


def dataset_id(scenario: str, policy: str, version: int = VERSION) -> str:
    name = Path(policy).stem if Path(policy).suffix else policy  # a checkpoint: its file's stem
    return f"{NAMESPACE}/{scenario}/{name.replace('+', '-')}-v{version}"


def config_source(config: str) -> DemoSource:
    cfg = load_agent_config(config)
    name = Path(str(cfg.scenario)).stem
    return DemoSource(name, cfg.env_id, str(cfg.scenario), dict(cfg.env_config), tuple(cfg.train_seeds))


# ---------------------------------------------------------------- recording


class EpisodeRecorder:
    """The ``observer`` of ``run_env_episode``: keeps copies of what the env hands the agent."""

    def __init__(self) -> None:
        self.obs: dict[str, list[np.ndarray]] = {}
        self.masks: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.terms: list[bool] = []
        self.truncs: list[bool] = []

    def reset(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        self.obs = {k: [np.array(v, copy=True)] for k, v in obs.items()}
        self.masks = [np.array(info["action_mask"], dtype=bool, copy=True)]

    def step(
        self, action: Any, obs: dict[str, np.ndarray], reward: float, term: bool, trunc: bool, info
    ) -> None:
        self.actions.append(np.array(action, dtype=np.int64, copy=True))
        for k, v in obs.items():
            self.obs[k].append(np.array(v, copy=True))
        self.masks.append(np.array(info["action_mask"], dtype=bool, copy=True))
        self.rewards.append(float(reward))
        self.terms.append(bool(term))
        self.truncs.append(bool(trunc))

    def buffer(self, episode_id: int, seed: int) -> Any:
        from minari.data_collector import EpisodeBuffer

        return EpisodeBuffer(
            id=episode_id,
            seed=int(seed),
            options={"seed": int(seed)},
            observations={k: np.stack(v) for k, v in self.obs.items()},
            actions=np.stack(self.actions),
            rewards=np.asarray(self.rewards, np.float64),
            terminations=np.asarray(self.terms, bool),
            truncations=np.asarray(self.truncs, bool),
            infos={"action_mask": np.stack(self.masks)},
        )


def record(policy: str, src: DemoSource, seeds: Sequence[int]) -> tuple[list[Any], list[dict[str, Any]]]:
    """One episode of ``policy`` per seed: Minari episode buffers and the episodes' metrics."""
    pol = resolve_policy(policy, src.scenario)
    cfg = {**src.env_config, "info_features": needs_info_features(pol), "invalid_action": "raise"}
    env = make_env(src.env_id, src.scenario, cfg)
    buffers, metrics = [], []
    for i, seed in enumerate(seeds):
        rec = EpisodeRecorder()
        m, _ = run_env_episode(pol, src.env_id, src.scenario, int(seed), cfg, env=env, observer=rec)
        buffers.append(rec.buffer(i, seed))
        metrics.append({k: float(m[k]) for k in EPISODE_METRICS if k in m})
    env.close()
    return buffers, metrics


@contextlib.contextmanager
def datasets_root(root: str | Path | None) -> Iterator[None]:
    """Minari finds datasets under ``MINARI_DATASETS_PATH`` (default ~/.minari/datasets): point it at ``root``."""
    if root is None:
        yield
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def agent_env_spec(src: DemoSource) -> gym.envs.registration.EnvSpec:
    """The spec of the env the agent sees (no info features: a learned policy reads observation and mask)."""
    spec = gym.spec(src.env_id)
    kwargs = {**spec.kwargs, **src.env_config, "scenario": src.scenario, "info_features": False}
    return dataclasses.replace(spec, kwargs=kwargs)


def write_dataset(
    policy: str,
    src: DemoSource,
    seeds: Sequence[int],
    root: str | Path | None = None,
    overwrite: bool = False,
) -> Any:
    """Record ``policy`` on ``src`` for ``seeds`` and write the Minari dataset; returns it (a MinariDataset)."""
    import minari

    did = dataset_id(src.name, policy)
    buffers, metrics = record(policy, src, seeds)
    with datasets_root(root):
        if did in minari.list_local_datasets():
            if not overwrite:
                raise DemoError(
                    f"dataset {did} exists under {minari.storage.get_dataset_path()}; --overwrite"
                )
            minari.delete_dataset(did)
        with warnings.catch_warnings():  # author e-mail / eval env: not ours to give
            warnings.simplefilter("ignore", UserWarning)
            ds = minari.create_dataset_from_buffers(
                dataset_id=did,
                buffer=buffers,
                env=agent_env_spec(src),
                algorithm_name=policy,
                author="servegym",
                code_permalink=f"servegym {__version__} commit {git_commit() or 'unknown'}: agents/demos.py",
                description=(
                    f"{policy} on {src.name} ({src.env_id}), one episode per training seed {list(seeds)}; "
                    "infos/action_mask is the env's action mask (servegym agents/demos.py)."
                ),
                data_format="hdf5",
                jpeg_encoding=False,
            )
        sc_path = Path(src.scenario)
        ds.storage.update_metadata(
            {
                "servegym": {
                    "env_id": src.env_id,
                    "scenario": src.scenario,
                    "scenario_name": load_scenario(src.scenario).name,
                    "scenario_sha256": hashlib.sha256(sc_path.read_bytes()).hexdigest()
                    if sc_path.is_file()
                    else None,
                    "env_config": src.env_config,
                    "policy": policy,
                    "seeds": [int(s) for s in seeds],
                    "package_version": __version__,
                }
            }
        )
        ds.storage.update_episode_metadata(metrics)
    return ds


# ---------------------------------------------------------------- reading back (behaviour cloning)


def load_dataset(did: str, root: str | Path | None = None) -> Any:
    import minari

    with datasets_root(root):
        try:
            return minari.load_dataset(did)
        except FileNotFoundError:
            where = minari.storage.get_dataset_path()
            raise DemoError(
                f"dataset {did}: not under {where} (scripts/make_demos.py writes it; --datasets-root)"
            ) from None


def transitions(ds: Any, obs_keys: Sequence[str]) -> dict[str, np.ndarray]:
    """A dataset's decisions as behaviour cloning takes them: ``obs`` [T, 1, D] (the groups in ``obs_keys``
    order, the layout's), ``mask``, ``act`` [T, 1, dims], ``rew``, ``done``; episodes one after another."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "mask", "act", "rew", "done")}
    for ep in ds.iterate_episodes():
        missing = [k for k in obs_keys if k not in ep.observations]
        if missing:
            raise DemoError(f"dataset {ds.id}: observations lack {missing} (another env's layout?)")
        x = np.concatenate([np.asarray(ep.observations[k])[:-1] for k in obs_keys], axis=-1)
        n = len(ep)
        out["obs"].append(x.astype(np.float32))
        out["mask"].append(np.asarray(ep.infos["action_mask"])[:-1].astype(bool))
        out["act"].append(np.asarray(ep.actions, np.int64).reshape(n, -1))
        out["rew"].append(np.asarray(ep.rewards, np.float64))
        out["done"].append(np.asarray(ep.terminations) | np.asarray(ep.truncations))
    if not out["obs"]:
        raise DemoError(f"dataset {ds.id}: no episodes")
    return {k: np.concatenate(v)[:, None] for k, v in out.items()}
