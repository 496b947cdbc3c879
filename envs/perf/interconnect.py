"""Links between pools and the time a KV-cache transfer takes over them (prefill/decode disaggregation).

Under disaggregation (Splitwise, Patel et al. ISCA'24; DistServe, Zhong et al. OSDI'24; Mooncake, Qin et al.
FAST'25) a request's KV cache moves from the replica that ran its prefill to the replica that will decode it.
Its size is fixed by the model: per token, K and V of every layer for every KV head, at 2 bytes (fp16/bf16).
A tp-sharded replica holds ``kv_heads_per_gpu(tp)`` heads on each GPU (vLLM replicates heads when tp exceeds
the model's KV heads), and each GPU sends its own shard, so a transfer moves ``tp x per-GPU bytes``.

Interconnect classes. Bandwidths are per direction, as the datasheets give them; ``per_gpu`` classes give
every GPU of a replica its own link (NVLink within a node; the rail-optimised InfiniBand of DGX nodes, one
NIC per GPU), so a tp-way replica moves its shards in parallel; the Ethernet classes are one NIC per node,
shared by the replica's GPUs.

- ``nvlink-a100``: NVLink 3, 12 links x 25 GB/s = 300 GB/s per direction per A100 SXM GPU (NVIDIA A100
  datasheet: 600 GB/s bidirectional). Both pools on one DGX A100 node (DistServe's placement for clusters
  with slow cross-node links keeps a prefill and its decode instance on one node for this reason).
- ``nvlink-h100``: NVLink 4, 18 links = 450 GB/s per direction per H100 SXM GPU (NVIDIA H100 datasheet:
  900 GB/s bidirectional).
- ``infiniband-hdr``: 200 Gb/s HDR per GPU = 25 GB/s (DGX A100: eight ConnectX-6 200 Gb/s compute-fabric
  ports, one per GPU). Splitwise's A100 machines transfer KV over this fabric.
- ``infiniband-ndr``: 400 Gb/s NDR per GPU = 50 GB/s (DGX H100: eight ConnectX-7 400 Gb/s ports, one per
  GPU). Splitwise's H100 machines.
- ``ethernet-100g``: one 100 Gb/s Ethernet NIC per node = 12.5 GB/s, shared (a common cloud VM network).
- ``ethernet-25g``: one 25 Gb/s link per node = 3.125 GB/s, shared: DistServe's testbed's cross-node
  bandwidth (4 nodes x 8 A100, NVLink inside a node, 25 Gbps between nodes).

Latency is the fixed start of one transfer, a datasheet-level figure: ~2 us for an NVLink peer copy (our
assumption: a CUDA peer-to-peer copy launch; NVLink's wire latency itself is sub-microsecond), ~2 us for an
RDMA write over InfiniBand (ConnectX port-to-port latency is sub-microsecond; we add a switch hop and the
verbs post), and ~25 us for TCP over Ethernet (a kernel network stack round). At megabytes per transfer the
bandwidth term dominates by three orders of magnitude, so these choices barely matter; they are documented
so that a tiny transfer is not free. Achieved bandwidth is taken as the nominal rate; Splitwise and Mooncake
report their transfer engines near line rate for large transfers. The simulator sends one transfer at a
time per source replica (envs/sim/disagg.py); it does not model contention on the receiving side.

Layer-wise overlap (Splitwise section IV-C): the KV of layer l is sent while layer l+1 is computed, so once
the prompt computation ends at most the last layer's share remains when the link keeps up. With a prefill
iteration of ``D`` seconds over ``L`` layers and a serial transfer of ``T`` seconds, the per-layer sends
start at ``l D / L`` and each takes ``T / L`` on the one link, so the transfer ends ``max(T / L, T - D + D / L)``
after the computation (the first term when the link keeps up, the second when it is the bottleneck).
Without overlap (or when the request waited for a decode slot and its KV is complete) the whole ``T``
remains. We overlap with the request's last prefill iteration only: chunked prefill could also send earlier
chunks' KV during later chunks, which Splitwise (no chunking) does not describe; ours is the conservative
side of that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba

from servegym.envs.perf.specs import get_model, kv_heads_per_gpu

GB = 1e9


@dataclass(frozen=True)
class LinkClass:
    name: str
    bandwidth: float  # bytes/s per direction, per GPU (per_gpu) or per node
    latency_s: float  # fixed start of one transfer
    per_gpu: bool  # every GPU of a replica has its own link of this bandwidth
    source: str


LINKS: dict[str, LinkClass] = {
    "nvlink-a100": LinkClass(
        "nvlink-a100", 300 * GB, 2e-6, True, "NVIDIA A100 datasheet: NVLink 3, 600 GB/s bidir"
    ),
    "nvlink-h100": LinkClass(
        "nvlink-h100", 450 * GB, 2e-6, True, "NVIDIA H100 datasheet: NVLink 4, 900 GB/s bidir"
    ),
    "infiniband-hdr": LinkClass(
        "infiniband-hdr", 25 * GB, 2e-6, True, "DGX A100 user guide: 8x ConnectX-6 HDR 200 Gb/s, one per GPU"
    ),
    "infiniband-ndr": LinkClass(
        "infiniband-ndr", 50 * GB, 2e-6, True, "DGX H100 user guide: 8x ConnectX-7 NDR 400 Gb/s, one per GPU"
    ),
    "ethernet-100g": LinkClass("ethernet-100g", 12.5 * GB, 25e-6, False, "one 100 GbE NIC per node"),
    "ethernet-25g": LinkClass(
        "ethernet-25g", 3.125 * GB, 25e-6, False, "DistServe testbed: 25 Gbps cross-node"
    ),
}


def get_link(name: str) -> LinkClass:
    try:
        return LINKS[name]
    except KeyError:
        raise KeyError(f"unknown interconnect class {name!r}; known: {sorted(LINKS)}") from None


def kv_bytes_per_token_per_gpu(model: str, tp: int) -> float:
    """KV-cache bytes one token occupies on each GPU of a tp-way replica: K and V, every layer."""
    m = get_model(model)
    return 2.0 * m.num_layers * kv_heads_per_gpu(m, tp) * m.head_dim * m.bytes_per_param


def kv_bytes_per_token(model: str, tp: int) -> float:
    """KV-cache bytes one token occupies on a whole tp-way replica (what a transfer moves per token)."""
    return tp * kv_bytes_per_token_per_gpu(model, tp)


def link_bandwidth(link: str, src_tp: int, dst_tp: int) -> float:
    """Bytes/s between a src_tp-way and a dst_tp-way replica: per-GPU links run in parallel over the
    narrower side's GPUs (its shards are the larger ones); a per-node link is shared."""
    c = get_link(link)
    return c.bandwidth * min(src_tp, dst_tp) if c.per_gpu else c.bandwidth


@numba.njit(cache=True)
def transfer_time_s(
    tokens: int, bytes_per_token: float, bandwidth: float, latency_s: float, layers: int, overlap_s: float
) -> float:
    """Seconds from the end of the prefill to the KV being usable on the decode side (module docstring).

    ``overlap_s`` is the prefill computation the transfer could overlap layer by layer (0: none). Compiled
    once and called by the simulator core as well, so both sides use one formula."""
    t = tokens * bytes_per_token / bandwidth
    if overlap_s > 0.0:
        t = max(t / layers, t - overlap_s + overlap_s / layers)
    return latency_s + t
