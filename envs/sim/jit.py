"""The two ways the simulator's kernels are compiled.

``hot``: inlined into its caller at numba's IR level. The per-event path (iteration bookkeeping,
admission, routing) is written as small functions but runs as one compiled loop. Measured on this code:
compiling them separately instead (each its own library, reached by a call) made the event loop 4-12x
slower, because a call passes the state as ~60 flattened arguments and LLVM does not inline the larger ones.

``kernel``: a separately compiled function, without numba's reference counting. numba hands the state
namedtuple to a call as its flattened array descriptors and, with reference counting on, increments and
decrements every array's count around each call and inlined body: measured on the 16-replica benchmark,
that bookkeeping was ~85% of the time per event (570 ns -> 77 ns without it). The kernels allocate nothing
(a numba compile error says so if one ever does), and every array they touch is owned by the Python-side
``SimState``, which outlives each call, so counting references buys nothing. ``_nrt`` is a numba
compile option without a public spelling; if a numba release drops it we fall back to counted kernels,
which are slower but compute the same results.

What a cold compile costs (scripts/bench_coldstart.py): numba types and lowers every inlined copy of a
``hot`` body again, and optimises and emits a kernel's code again in every library that calls it. So a
``hot`` function called from several places on a path that runs once per request (not per iteration) is
better a ``kernel`` (``builtin_route``), and an entry point should call the event loop once (``env_core``).

One signature per kernel: numba compiles a separate specialisation for every distinct argument type at a
jitted call site, and a literal constant (``-1`` for the hold ring, ``0``, ``True``) or an ``int32`` read
from a request array is a type of its own. That compiled whole call trees twice (176 compiles of 114
functions). Jitted calls to a kernel therefore pass literals as their plain type and signed integers as
int64, which numba's arithmetic widens them to anyway, so results are unchanged. (Plain ``@njit`` helpers,
e.g. in policies.py and perf/, are small and keep numba's default.)
"""

from __future__ import annotations

import os
import sys
import threading
import time

from numba import config, njit, types
from numba.core import cpu, event

_NO_REFCOUNT = {"_nrt": False} if hasattr(cpu.CPUTargetOptions, "_nrt") else {}


def _plain(t):
    t = types.unliteral(t)
    if isinstance(t, types.Integer) and t.signed:
        return types.int64
    return t


def _one_signature(dispatcher):
    """Resolve jitted calls to ``dispatcher`` with literal-free, int64-widened argument types."""
    resolve = dispatcher.get_call_template

    def get_call_template(args, kws):
        return resolve(tuple(_plain(a) for a in args), {k: _plain(v) for k, v in kws.items()})

    dispatcher.get_call_template = get_call_template
    return dispatcher


hot = njit(cache=True, inline="always")


def kernel(fn):
    return _one_signature(njit(cache=True, **_NO_REFCOUNT)(fn))


def _quiet() -> bool:
    return os.environ.get("SERVEGYM_QUIET_COMPILE", "") not in ("", "0")


class _CompileNotice(event.Listener):
    """Say on stderr what numba compiles, and how long it took, whenever it compiles servegym code.

    numba fires ``numba:compile`` only on a cache miss, so this is silent once the code is cached (the cache
    is keyed by the simulator's source, envs/__init__.py). Only the outermost compile is announced (the
    functions it calls compile inside it), and only when it is still running after a second, so the small
    kernels a run compiles later do not interrupt its output. ``SERVEGYM_QUIET_COMPILE=1`` silences it.
    numba compiles under its global compiler lock, so depth updates never race; ``lock`` orders the timer
    thread's announcement against the end of the compile.
    """

    # Measured by scripts/bench_coldstart.py on a 2-core machine (README, "Measured figures").
    ESTIMATE = "about a minute on a 2-core machine"
    DELAY_S = 1.0  # announce only compiles still running after this long

    def __init__(self):
        self.depth = 0
        self.timer = None
        self.announced = False
        self.lock = threading.Lock()

    def _announce(self, name):
        with self.lock:
            if self.timer is None:  # the compile ended while this timer fired
                return
            self.announced = True
            print(
                f"servegym: compiling {name} and the simulator code it calls with numba ({self.ESTIMATE}, "
                f"once per code version; cached in {config.CACHE_DIR or 'the source folders'})",
                file=sys.stderr,
                flush=True,
            )

    def on_start(self, ev):
        # numba runs listeners inside every compile in the process: this one must never make one fail
        self.depth += 1
        try:
            fn = getattr(ev.data.get("dispatcher"), "py_func", None)
            module = getattr(fn, "__module__", None) or ""  # None for a function made by exec()
            if self.depth != 1 or not module.startswith("servegym.") or _quiet():
                return
            self.start = time.perf_counter()
            self.announced = False
            self.timer = threading.Timer(self.DELAY_S, self._announce, (f"{module}.{fn.__qualname__}",))
            self.timer.daemon = True
            self.timer.start()
        except Exception:  # noqa: BLE001  (a notice is not worth a failed compile)
            self.timer = None

    def on_end(self, ev):
        self.depth -= 1
        if self.depth != 0 or self.timer is None:
            return
        try:
            with self.lock:  # an announcement already under way finishes before the verdict below
                self.timer.cancel()
                self.timer = None
                announced, self.announced = self.announced, False
            if announced:
                took = time.perf_counter() - self.start
                # (numba's Event.is_failed cannot tell: it reads True for compiles that succeed)
                print(f"servegym: compile finished in {took:.0f} s", file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001
            pass


event.register("numba:compile", _CompileNotice())
