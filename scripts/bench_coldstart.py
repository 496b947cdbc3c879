"""Cold-start benchmark: ``gymnasium.make`` + ``reset`` + one ``step`` from an empty numba cache.

Each measurement runs in a fresh Python process whose ``XDG_CACHE_HOME`` is a new temporary folder, so
numba compiles everything the env needs, as on a user's first run; a second process on the same folder
then measures the warm start (loading the cache). Prints one JSON line: wall seconds per phase (import,
make, reset, step) and the process's CPU seconds, for each cold and warm run.

The compile is single-threaded, so on a shared machine compare CPU seconds (or runs side by side);
wall time is what a user waits on an idle machine.

    python scripts/bench_coldstart.py                        # Route-v0, one cold and one warm run
    python scripts/bench_coldstart.py --id servegym/Cluster-v1 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

PROBE = r"""
import json, sys, time
t0 = time.perf_counter(); c0 = time.process_time()
import gymnasium as gym
import servegym.envs  # noqa: F401
t1 = time.perf_counter()
env = gym.make(sys.argv[1])
t2 = time.perf_counter()
env.reset(seed=0)
t3 = time.perf_counter()
env.step(env.action_space.sample())
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "make_s": t2 - t1, "reset_s": t3 - t2, "step_s": t4 - t3,
                  "total_s": t4 - t0, "cpu_s": time.process_time() - c0}))
"""


def probe(env_id: str, cache_home: str) -> dict:
    env = dict(os.environ, XDG_CACHE_HOME=cache_home, SERVEGYM_QUIET_COMPILE="1")
    env.pop("NUMBA_CACHE_DIR", None)  # an explicit cache folder would bypass the fresh one
    out = subprocess.run(
        [sys.executable, "-c", PROBE, env_id], env=env, capture_output=True, text=True, check=True
    )
    return {k: round(v, 2) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--id", default="servegym/Route-v0", help="env id (default servegym/Route-v0)")
    ap.add_argument("--repeat", type=int, default=1, help="cold runs, each on its own empty cache")
    args = ap.parse_args()
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="servegym-coldstart-") as home:
            runs.append({"cold": probe(args.id, home), "warm": probe(args.id, home)})
    print(json.dumps({"id": args.id, "cpus": os.cpu_count(), "runs": runs}))


if __name__ == "__main__":
    main()
