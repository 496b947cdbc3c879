"""Property fuzzing with the wider knobs of the adversarial pass (issue 14, item 14), and example counts that a
profile can turn up (docs/testing.md).

The knobs: 1-sequence batches, 16-token budgets, queue capacity 1, 0.05 s max wait, tiny KV and prefix caches,
60k-token prompts without chunking, and a random answer to every decision. Whatever happens, no request is
lost and every incremental aggregate matches its recomputation (``check_invariants`` at every stop).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from servegym.envs.sim.simulator import Simulator
from tests.conftest import REPO, examples, tiny_scenario
from tests.test_sim_core import drive


@settings(max_examples=examples(20), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=hs.integers(0, 2**31 - 1),
    rate=hs.sampled_from([0.5, 4.0, 20.0]),
    max_seqs=hs.sampled_from([1, 2, 16]),
    budget=hs.sampled_from([16, 64, 2048]),
    queue_capacity=hs.sampled_from([1, 2, 64]),
    max_wait_s=hs.sampled_from([0.05, 1.0, 8.0]),
    mem_util=hs.sampled_from([0.9, 0.19, 0.172]),  # 0.172 leaves ~1k KV tokens above Llama-2-7B's weights
    prefix_blocks=hs.sampled_from([None, 1, 2]),
    long_prompts=hs.booleans(),
    chunked=hs.booleans(),
)
def test_conservation_under_extreme_knobs(
    seed, rate, max_seqs, budget, queue_capacity, max_wait_s, mem_util, prefix_blocks, long_prompts, chunked
):
    budget = max(budget, max_seqs)  # vLLM (and the schema) need budget >= max_num_seqs
    lengths = (
        {"prompt_mean": 30000, "prompt_cv": 1.0, "prompt_max": 60000, "output_mean": 20, "output_max": 200}
        if long_prompts
        else {"dist": "empirical", "table": "mooncake_synthetic"}
    )
    sc = tiny_scenario(
        horizon_s=15.0,
        max_wait_s=max_wait_s,
        queue_capacity=queue_capacity,
        control_interval_s=2.0,
        pools=[
            {
                "name": "a",
                "gpu": "a100-80gb",
                "model": "llama-2-7b",
                "min_replicas": 0,
                "max_replicas": 2,
                "initial_replicas": 1,
                "cold_start_s": 1.0,
                "max_num_seqs": max_seqs,
                "max_batched_tokens": budget,
                "chunked_prefill": chunked,
                "prefix_cache": prefix_blocks is not None,
                "prefix_cache_blocks": prefix_blocks,
                "gpu_memory_utilization": mem_util,
            }
        ],
        sources=[
            {
                "kind": "synthetic",
                "tenant": "chat",
                "arrival": {"process": "gamma", "rate_per_s": rate, "cv": 3.0},
                "lengths": lengths,
            }
        ],
    )
    sim = Simulator(sc, seed=seed, control=("batch", "route", "scale"))
    drive(sim, np.random.default_rng(seed), step_s=0.9)
    c = sim.outcome(final=True).summary_counts()
    assert c["arrived"] == c["finished"] + c["dropped"] + c["in_flight"]


def _profile(env: dict[str, str]) -> str:
    code = (
        "from hypothesis import settings; from tests.conftest import examples; "
        "print(examples(25), settings.default.derandomize)"
    )
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CI", "HYPOTHESIS_PROFILE", "HYPOTHESIS_MAX_EXAMPLES")
    }
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_example_counts_follow_the_profile():
    assert _profile({"CI": "1"}) == "25 True"  # CI: the test's own count, derandomized
    assert _profile({"HYPOTHESIS_PROFILE": "long"}) == "5000 False"
    assert _profile({"HYPOTHESIS_PROFILE": "long", "HYPOTHESIS_MAX_EXAMPLES": "400"}) == "100 False"
