"""GPU and model spec tables for the performance model.

Every number cites its source. GPU peaks are dense (no 2:4 sparsity) bf16/fp16 tensor-core rates from the
vendor datasheets; model geometry is from each model's Hugging Face ``config.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: int  # nominal HBM/GDDR capacity (datasheet); nvidia-smi shows slightly less usable
    peak_flops: float  # dense bf16/fp16 tensor-core FLOP/s
    mem_bw: float  # bytes/s
    price_per_hour: float  # USD per GPU-hour (default cost model)
    compute_dir: str  # folder under vidur_profiling/profiling/compute
    network_dir: str | None  # folder under vidur_profiling/profiling/network with a one-node all_reduce.csv


GPUS: dict[str, GpuSpec] = {
    # NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB): BF16/FP16 tensor 312 TFLOPS dense (624 sparse),
    # HBM2e 2,039 GB/s, 80 GB. Price: Vidur's A100 $2.21/GPU-hour (data README).
    "a100-80gb": GpuSpec("a100-80gb", 80 * GIB, 312e12, 2.039e12, 2.21, "a100", "a100_dgx"),
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5 80GB): BF16 tensor 989.4 TFLOPS dense (1,979 sparse),
    # HBM3 3.35 TB/s, 80 GB. Vidur's and Splitwise's H100 are DGX (SXM) nodes. Price: Vidur $4.25 (README).
    "h100-80gb": GpuSpec("h100-80gb", 80 * GIB, 989.4e12, 3.35e12, 4.25, "h100", "h100_dgx"),
    # NVIDIA A40 datasheet: FP16/BF16 tensor 149.7 TFLOPS dense (299.4 sparse), GDDR6 696 GB/s, 48 GB.
    # Price: Vidur $1.28 (README). Vidur ships no A40 all-reduce profile, so only TP1 is supported.
    "a40": GpuSpec("a40", 48 * GIB, 149.7e12, 696e9, 1.28, "a40", None),
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hf_id: str  # Hugging Face id; also the Vidur profile folder <org>/<model>
    num_layers: int  # num_hidden_layers
    hidden: int  # hidden_size
    num_heads: int  # num_attention_heads
    num_kv_heads: int  # num_key_value_heads
    head_dim: int  # hidden_size / num_attention_heads
    intermediate: int  # intermediate_size (gated SiLU MLP: gate, up and down projections)
    vocab: int  # vocab_size
    num_params: int  # total parameters incl. untied embedding and lm_head (= param_count_from_geometry)
    # max_position_embeddings of config.json: prompt + output tokens one sequence may hold (timing v1 enforces it)
    max_context: int = 4096
    bytes_per_param: int = 2  # fp16/bf16 weights and KV cache

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.bytes_per_param


MODELS: dict[str, ModelSpec] = {
    # huggingface.co/meta-llama/Llama-2-7b-hf config.json; 6.74B params (model card, "7B").
    "llama-2-7b": ModelSpec(
        "llama-2-7b", "meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 128, 11008, 32000, 6_738_415_616
    ),
    # huggingface.co/meta-llama/Meta-Llama-3-8B config.json (GQA, 8 KV heads); 8.03B params (model card).
    "llama-3-8b": ModelSpec(
        "llama-3-8b", "meta-llama/Meta-Llama-3-8B", 32, 4096, 32, 8, 128, 14336, 128256, 8_030_261_248, 8192
    ),
    # huggingface.co/meta-llama/Llama-3.1-8B config.json: the Llama-3-8B geometry (same layers, vocab 128256)
    # with a 131,072-token context (max_position_embeddings, rope scaling "llama3").
    "llama-3.1-8b": ModelSpec(
        "llama-3.1-8b", "meta-llama/Llama-3.1-8B", 32, 4096, 32, 8, 128, 14336, 128256, 8_030_261_248, 131072
    ),
    # huggingface.co/meta-llama/Llama-2-70b-hf config.json (GQA, 8 KV heads); 68.98B params.
    "llama-2-70b": ModelSpec(
        "llama-2-70b", "meta-llama/Llama-2-70b-hf", 80, 8192, 64, 8, 128, 28672, 32000, 68_976_648_192
    ),
    # huggingface.co/meta-llama/Meta-Llama-3-70B config.json: the Llama-3.1-70B geometry below with an 8,192-token
    # context (max_position_embeddings); 70.55B params.
    "llama-3-70b": ModelSpec(
        "llama-3-70b",
        "meta-llama/Meta-Llama-3-70B",
        80,
        8192,
        64,
        8,
        128,
        28672,
        128256,
        70_553_706_496,
        8192,
    ),
    # huggingface.co/meta-llama/Llama-3.1-70B config.json: Llama-2-70B's layer shapes (80 layers, hidden 8192,
    # 64 q / 8 KV heads, intermediate 28672) with vocab 128256 and a 131,072-token context; 70.55B params.
    "llama-3.1-70b": ModelSpec(
        "llama-3.1-70b",
        "meta-llama/Llama-3.1-70B",
        80,
        8192,
        64,
        8,
        128,
        28672,
        128256,
        70_553_706_496,
        131072,
    ),
    # huggingface.co/codellama/CodeLlama-34b-Instruct-hf config.json (vocab 32000, GQA 8); 33.74B params.
    # Its per-GPU attention geometry at TP2 is the one of Vidur's legacy attention profile.
    "codellama-34b": ModelSpec(
        "codellama-34b",
        "codellama/CodeLlama-34b-Instruct-hf",
        48,
        8192,
        64,
        8,
        128,
        22016,
        32000,
        33_743_970_304,
        16384,
    ),
}


# Models whose decoder layers are identical to a profiled model's: they reuse its fitted linear-op table
# (envs/perf/model.py rescales the output layer by vocabulary size; attention and KV come from their own spec).
PROFILE_ALIASES: dict[str, str] = {
    "llama-3.1-8b": "llama-3-8b",
    "llama-3-70b": "llama-2-70b",
    "llama-3.1-70b": "llama-2-70b",
}


def param_count_from_geometry(m: ModelSpec) -> int:
    """Llama parameter count: untied embedding + lm_head, per layer q/k/v/o, gated MLP, two RMSNorms."""
    kv = m.num_kv_heads * m.head_dim
    attn = m.hidden * m.hidden * 2 + m.hidden * kv * 2
    mlp = 3 * m.hidden * m.intermediate
    return 2 * m.vocab * m.hidden + m.num_layers * (attn + mlp + 2 * m.hidden) + m.hidden


def get_gpu(name: str) -> GpuSpec:
    try:
        return GPUS[name]
    except KeyError:
        raise KeyError(f"unknown gpu {name!r}; known gpus: {sorted(GPUS)}") from None


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {sorted(MODELS)}") from None


def kv_heads_per_gpu(m: ModelSpec, tp: int) -> int:
    """KV heads stored on each GPU. With tp > num_kv_heads vLLM replicates heads, so each GPU keeps one."""
    if tp < 1 or m.num_heads % tp:
        raise ValueError(f"tp={tp} must be >= 1 and divide num_heads={m.num_heads} of {m.name!r}")
    return max(1, m.num_kv_heads // tp)
