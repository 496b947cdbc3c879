"""The two ways the simulator's kernels are compiled.

``hot``: inlined into its caller at the numba IR level. The per-event path (iteration bookkeeping,
admission, routing) is written as small functions but runs as one compiled loop.

``kernel``: a separately compiled function, without numba's reference counting. numba hands the state
namedtuple to a call as its flattened array descriptors and, with reference counting on, increments and
decrements every array's count around each call and inlined body: measured on the 16-replica benchmark,
that bookkeeping was ~85% of the time per event (570 ns -> 77 ns without it). The kernels allocate nothing
(a numba compile error says so if one ever does), and every array they touch is owned by the Python-side
``SimState``, which outlives each call, so counting references buys nothing. ``_nrt`` is a numba
compile option without a public spelling; if a numba release drops it we fall back to counted kernels,
which are slower but compute the same results.
"""

from __future__ import annotations

from numba import njit
from numba.core import cpu

_NO_REFCOUNT = {"_nrt": False} if hasattr(cpu.CPUTargetOptions, "_nrt") else {}

hot = njit(cache=True, inline="always")
kernel = njit(cache=True, **_NO_REFCOUNT)
