"""KV-cache block accounting of a replica: blocks a context needs, the admission limit, and the usage
integral (for the KV utilization metric)."""

from __future__ import annotations

from servegym.envs.sim.jit import hot
from servegym.envs.sim.state import KV_BLOCK_TOKENS, XF_KV_BLOCK_S, XF_KV_T, XI_KV_CAP, XI_KV_USED

# vLLM keeps 1% of KV blocks free when admitting (BlockSpaceManager watermark=0.01) to avoid instant preemption.
KV_WATERMARK = 0.01
B = KV_BLOCK_TOKENS


@hot
def kv_touch(st, r, now):
    """Close the KV-usage integral up to ``now``; call before every change of the used blocks."""
    st.repf[XF_KV_BLOCK_S, r] += st.repi[XI_KV_USED, r] * (now - st.repf[XF_KV_T, r])
    st.repf[XF_KV_T, r] = now


@hot
def kv_limit(st, r):
    """Blocks admission may fill: capacity less vLLM's watermark."""
    cap = st.repi[XI_KV_CAP, r]
    return cap - max(1, int(cap * KV_WATERMARK))


@hot
def blocks_for(tokens):
    return (tokens + B - 1) // B
