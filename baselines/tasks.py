"""Run independent tasks, one function over many argument tuples, on a local process pool or as Ray tasks.

The leaderboard's cells (baselines/leaderboard/cells.py) and the training sweeps (agents/sweep.py) both go
through ``run_tasks``: the same top-level, picklable function runs in either backend, so a task's result
does not depend on where it ran. Results are handed to ``on_done`` as they finish (in any order), a task
that raises is handed to ``on_error`` and the others still run.

- ``local``: in this process (``workers <= 1`` or one task), else a spawned process pool whose workers exit
  when this process dies (``exit_with_parent``).
- ``ray``: each task a Ray task of one CPU; ``address`` joins an existing cluster, else a local Ray instance
  of ``workers`` CPUs is started and shut down afterwards. Ray is an optional extra (``pip install -e .[ray]``)
  imported only here. A task's result travels back to this process (Ray's object store), so a task that
  writes files should return their contents rather than rely on a file system shared with the workers.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

# Workers start fresh rather than forked: a fork after torch or numba's threading layer has started can
# deadlock the child (seen with pretrained agents on the leaderboard).
SPAWN = multiprocessing.get_context("spawn")

BACKENDS = ("local", "ray")

Done = Callable[[int, Any], None]
Failed = Callable[[int, Exception], None]


def exit_with_parent(parent: int) -> None:
    """Pool worker initializer: exit as soon as the parent process is gone. A parent killed with
    ``kill -9`` cannot stop its pool, and spawned workers would otherwise live on as orphans."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_tasks(
    fn: Callable[..., Any],
    args: Sequence[tuple[Any, ...]],
    on_done: Done,
    on_error: Failed,
    backend: str = "local",
    workers: int = 2,
    address: str | None = None,
) -> None:
    """``fn(*args[i])`` for every i; ``on_done(i, result)`` or ``on_error(i, exception)`` as each finishes."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not args:
        return
    if backend == "ray":
        _run_ray(fn, args, on_done, on_error, workers, address)
    elif workers <= 1 or len(args) == 1:
        for i, a in enumerate(args):
            try:
                result = fn(*a)
            except Exception as e:
                on_error(i, e)
                continue
            on_done(i, result)
    else:
        with ProcessPoolExecutor(
            max_workers=min(workers, len(args)),
            mp_context=SPAWN,
            initializer=exit_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            futs = {pool.submit(fn, *a): i for i, a in enumerate(args)}
            for fut in as_completed(futs):
                try:
                    result = fut.result()
                except Exception as e:
                    on_error(futs[fut], e)
                    continue
                on_done(futs[fut], result)


def _run_ray(
    fn: Callable[..., Any],
    args: Sequence[tuple[Any, ...]],
    on_done: Done,
    on_error: Failed,
    workers: int,
    address: str | None,
) -> None:
    try:
        import ray
    except ImportError:
        raise SystemExit("--backend ray needs Ray: pip install -e '.[ray]'") from None
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            # local workers run this interpreter, so they import the installed servegym as the process pool does
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
        started = True
    try:
        task = ray.remote(num_cpus=1)(fn)
        pending = {task.remote(*a): i for i, a in enumerate(args)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # as the local pool: the task fails alone
                    on_error(i, e)
                    continue
                on_done(i, result)
    finally:
        if started and not address:
            ray.shutdown()
