"""The core's single random stream."""

from __future__ import annotations

import numpy as np

from servegym.envs.sim.jit import hot


@hot
def rng_uniform(st):
    """xorshift64* (Vigna 2016): the core's single random stream, seeded from the scenario's generator."""
    x = st.rng[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    st.rng[0] = x
    return float((x * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(11)) * (1.0 / 9007199254740992.0)
