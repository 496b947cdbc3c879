"""Serving-engine profiles: the host-side terms of an iteration, and the interconnect of a tensor-parallel pool.

An iteration costs ``max(GPU kernels, launch floor) + fixed + per_seq * decode_seqs + [prefill] * prefill``
(envs/perf/model.py). The GPU part comes from per-model kernel profiles; what an engine adds is host work,
and each term here scales with what drives it:

- the launch floor with the number of layers (one group of kernel launches per layer), and only when the
  engine launches kernels one by one (eager PyTorch): CUDA graphs replay a whole forward pass in one launch,
  so the host no longer bounds the GPU;
- scheduling, input preparation, sampling and detokenisation per iteration and per sequence, whatever the
  model size; with tp > 1 the per-iteration broadcast of the inputs to the workers;
- nothing per layer for an engine with CUDA graphs, so a 32-layer model is not bounded by a floor fitted on
  an 80-layer one.

Profiles (``ENGINES``):

``vllm`` (default of timing v1)
    vLLM with CUDA graphs (vLLM V1 captures piecewise graphs for every batch, prefill included): no launch
    floor; CPU per iteration and per sequence from Vidur's measured vLLM-based engine (``overhead.vllm`` of
    perf_coefficients.json, fitted by envs/perf/fit.py on cpu_overheads.csv). Vidur's Ray broadcast to the
    TP workers is left out: vLLM's multiprocessing executor broadcasts through shared memory.
``vllm-eager``
    The same engine with ``--enforce-eager``: every iteration is bounded below by the eager launch floor per
    layer times the layers. The floor per layer is Vidur's measured model execution of CodeLlama-34B (48
    layers; flat in batch size, so host-bound) over its layers: 0.61 ms on A100. Splitwise's Llama2-70B
    engine (80 layers) gives 0.54 ms (overhead.splitwise), so the per-layer scaling holds across the two
    model sizes within 12%. No measurement at tp 1 exists in the data; the floor is assumed TP-independent
    (Splitwise's floor is the same at TP4 and TP8).
``splitwise``
    The Splitwise-era calibration (Llama2-70B, Splitwise's 2023 engine): floor per layer, fixed, per
    sequence, per prefill iteration, fitted per GPU. Timing v0 (suite v0, the ``-v0`` env ids) pins it.
``vidur``
    Vidur's CPU overheads applied as Vidur's simulator applies them (Ray broadcast included at every tp).
``none``
    GPU kernels only.
"""

from __future__ import annotations

import numpy as np

ENGINES = ("splitwise", "vidur", "none", "vllm", "vllm-eager")
DEFAULT_ENGINE = "vllm"
INTERCONNECTS = ("nvlink", "pcie")

# PCIe all-reduce (no Vidur profile exists for PCIe-only nodes). NCCL's ring moves 2(n-1)/n x bytes per GPU
# (nccl-tests PERFORMANCE.md, "bus bandwidth"), so the time over PCIe is the measured NVLink time (its
# latency, protocol and kernel costs kept) plus those bytes at the PCIe rate minus the same bytes at the
# NVLink rate: t_pcie = t_nvlink + 2(n-1)/n * bytes * (1/B_pcie - 1/B_nvlink). Rates per direction: PCIe 4.0
# x16 32 GB/s (A100 PCIe, A40), PCIe 5.0 x16 64 GB/s (H100 PCIe) (PCI-SIG specifications); NVLink 3 300 GB/s
# (A100 SXM), NVLink 4 450 GB/s (H100 SXM) (NVIDIA datasheets). NCCL reaches about 80% of the PCIe rate
# through the host bridge: an assumption of this model, as is reusing the SXM GPUs' kernels. Not validated.
PCIE_GBPS = {"a100-80gb": 32e9, "h100-80gb": 64e9, "a40": 32e9}
NVLINK_GBPS = {
    "a100-80gb": 300e9,
    "h100-80gb": 450e9,
    "a40": 56e9,
}  # A40: NVLink bridge of 2 GPUs, 112.5 GB/s bidir.
PCIE_EFFICIENCY = 0.8


def pcie_extra_allreduce_s(gpu: str, tp: int, nbytes: np.ndarray) -> np.ndarray:
    """Seconds one all-reduce of ``nbytes`` over ``tp`` GPUs takes over PCIe beyond its NVLink time."""
    ring_bytes = 2.0 * (tp - 1) / tp * np.asarray(nbytes, dtype=np.float64)
    return ring_bytes * (1.0 / (PCIE_GBPS[gpu] * PCIE_EFFICIENCY) - 1.0 / NVLINK_GBPS[gpu])


def engine_overheads(table: dict, engine: str, gpu: str, tp: int, layers: int) -> tuple[float, ...]:
    """(launch floor, fixed, per decode sequence, per prefill iteration), seconds, for the coefficient vector."""
    if engine == "none":
        return 0.0, 0.0, 0.0, 0.0
    if engine in ("splitwise", "vidur"):
        o = table["overhead"][engine]
        host = o["by_gpu"].get(gpu, o["by_gpu"][o["fallback_gpu"]])
        return (
            host["floor_s_per_layer"] * layers,
            host["fixed_s"],
            host["per_decode_seq_s"],
            host["prefill_s"],
        )
    o = table["overhead"]["vllm"]
    host = o["by_gpu"].get(gpu, o["by_gpu"][o["fallback_gpu"]])
    floor = host["eager_floor_s_per_layer"] * layers if engine == "vllm-eager" else 0.0
    return floor, host["fixed_s"], host["per_decode_seq_s"], 0.0
