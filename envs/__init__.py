"""servegym: Gymnasium environments over a numba simulator of LLM-inference clusters."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import warnings
from pathlib import Path

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"


def source_sha256(files: list[Path], root: Path) -> str:
    """One hash of the files' paths (relative to ``root``) and contents, in sorted order: how servegym keys
    what depends on its code (numba's cache folder below; the leaderboard's cached cells)."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _numba_cache_dir() -> None:
    """Key numba's on-disk cache by the simulator's source.

    numba invalidates a cached function only when its own file changes, not when a function it inlines,
    calls or reads a global from in another module does; a stale kernel would silently run old rules. A
    cache folder per hash of every module that defines a compiled function and every module those import
    (transitively, within servegym.envs)
    avoids that, while editing pure-Python modules (the env classes, metrics) keeps the compiled kernels.
    An explicit NUMBA_CACHE_DIR is left alone. numba reads the variable once, when it is first imported, so
    when a caller imported numba before servegym its config is set too (otherwise the kernels would be cached
    beside their sources, keyed by their own file only).
    """
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    here = Path(__file__).resolve().parent
    sources = {f: f.read_text() for f in here.rglob("*.py")}
    # modules that define compiled functions (decorated @hot, @kernel or @njit)
    todo = [f for f, text in sources.items() if re.search(r"^@(hot|kernel|njit)\b", text, re.M)]
    seen: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for mod, name in re.findall(
            r"^\s*from servegym\.envs\.([\w.]+) import \(?\s*(\w+)", sources[f], re.M
        ):
            folder = here / mod.replace(".", "/")
            # `from servegym.envs.sim import state as S` reads the submodule, `from ...sim.core import x` the module
            for cand in (folder / f"{name}.py", folder.with_suffix(".py"), folder / "__init__.py"):
                if cand in sources:
                    todo.append(cand)
                    break
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "servegym" / "numba"
    os.environ["NUMBA_CACHE_DIR"] = str(base / source_sha256(list(seen), here)[:16])
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]


_numba_cache_dir()


# ---------------------------------------------------------------- Gymnasium registration (envs/gym)
def register_envs() -> None:
    """Register the servegym envs; ``import envs`` does it, so ``gymnasium.make("servegym/Route-v0")`` works.

    No ``max_episode_steps``: every env truncates itself at the scenario's simulated horizon, and the number
    of steps until then is random for the event-driven envs (and follows horizon_s for Scale), so a fixed
    step limit would silently cut episodes short when a user changes horizon_s.
    """

    # gymnasium calls an id "out of date" when a higher version is registered; -v0 is kept on purpose (it pins
    # the timing that suite v0 replays), so that warning would only be noise.
    warnings.filterwarnings("ignore", message=r".*The environment servegym/\w+-v0 is out of date")

    # The version of an id pins the timing of the dynamics (envs/sim/timing.py): -v0 the Splitwise-era
    # overheads without context limits (suite v0 and its leaderboard entries replay bit for bit), -v1 the
    # engine profiles (default vllm) with context limits. Same classes; a scenario's own ``timing:`` wins.
    for version in ("v0", "v1"):
        for name, module, cls in (
            ("Route", "route", "RouteEnv"),
            ("Batch", "batch", "BatchEnv"),
            ("Scale", "scale", "ScaleEnv"),
            ("Cluster", "cluster", "ClusterEnv"),
        ):
            env_id = f"servegym/{name}-{version}"
            if env_id in registry:
                continue
            register(
                id=env_id,
                entry_point=f"servegym.envs.gym.{module}:{cls}",
                vector_entry_point=f"servegym.envs.gym.vector:{name}VectorEnv",
                kwargs={
                    "scenario": "chat_azure" if name in ("Route", "Batch") else "hetero_a100_h100",
                    "timing": version,
                },
            )
    # Admission (envs/gym/admit.py): a -v1 id only, since it came after suite v0; no native vector env.
    if "servegym/Admit-v1" not in registry:
        register(
            id="servegym/Admit-v1", entry_point="servegym.envs.gym.admit:AdmitEnv", kwargs={"timing": "v1"}
        )


register_envs()
