"""The two ways the simulator's kernels are compiled.

``hot``: the per-event path (iteration bookkeeping, admission, routing), written as small functions.
``kernel``: the entry points the Python side calls.

Both are compiled without numba's reference counting. numba hands the state namedtuple to a call as its
flattened array descriptors and, with reference counting on, increments and decrements every array's count
around each call: measured on the 16-replica benchmark, that bookkeeping was ~85% of the time per event
(570 ns -> 77 ns without it). The kernels allocate nothing (a numba compile error says so if one ever does),
and every array they touch is owned by the Python-side ``SimState``, which outlives each call, so counting
references buys nothing. ``_nrt`` is a numba compile option without a public spelling; if a numba release
drops it we fall back to counted kernels, which are slower but compute the same results.

Why ``hot`` functions are separately compiled, not inlined at numba's IR level (``inline="always"``, as
before): IR inlining copied every helper's body into each caller and typed it again there, and the cold
compile of the first ``reset()`` took minutes. Compiled once each, LLVM still inlines them into the event
loop when it links the caller (numba optimises the linked module), so the hot path stays one loop.

One signature per function: numba compiles a separate specialisation for every distinct argument type at a
jitted call site, and a literal constant (``-1`` for the hold ring, ``0``, ``True``) or an ``int32`` read
from a request array is a type of its own. That doubled the compiled code (176 compiles of 114 functions).
Calls from jitted code therefore pass literals as their plain type and signed integers as int64, which
numba's arithmetic widens them to anyway, so results are unchanged.
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


class _CompileNotice(event.Listener):
    """Say on stderr what numba compiles, and how long it took, whenever it compiles servegym code.

    numba fires ``numba:compile`` only on a cache miss, so this is silent once the code is cached (the cache
    is keyed by the simulator's source, envs/__init__.py). Only the outermost compile is announced (the
    functions it calls compile inside it), and only when it is still running after a second, so the small
    kernels a run compiles later do not interrupt its output. ``SERVEGYM_QUIET_COMPILE=1`` silences it.
    """

    # Measured by scripts/bench_coldstart.py on a 2-core machine (README, "Measured figures").
    ESTIMATE = "about a minute on 2 cores"
    DELAY_S = 1.0  # announce only compiles still running after this long

    def __init__(self):
        self.depth = 0
        self.timer = None
        self.announced = False

    def _announce(self, name):
        self.announced = True
        print(
            f"servegym: compiling {name} and the simulator code it calls with numba ({self.ESTIMATE}, "
            f"once per code version; cached in {config.CACHE_DIR or 'the source folders'})",
            file=sys.stderr,
            flush=True,
        )

    def on_start(self, ev):
        self.depth += 1
        fn = getattr(ev.data.get("dispatcher"), "py_func", None)
        if self.depth != 1 or fn is None or not fn.__module__.startswith("servegym."):
            return
        if os.environ.get("SERVEGYM_QUIET_COMPILE"):
            return
        self.start = time.perf_counter()
        self.announced = False
        self.timer = threading.Timer(self.DELAY_S, self._announce, (f"{fn.__module__}.{fn.__qualname__}",))
        self.timer.daemon = True
        self.timer.start()

    def on_end(self, ev):
        self.depth -= 1
        if self.depth != 0 or self.timer is None:
            return
        self.timer.cancel()
        self.timer = None
        if self.announced:
            took = time.perf_counter() - self.start
            print(f"servegym: compiled in {took:.0f} s", file=sys.stderr, flush=True)


event.register("numba:compile", _CompileNotice())
