"""Shared test helpers: tiny scenarios built in code, and the data directory CI points at ../shared/data."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from servegym.envs.scenario import Scenario, scenario_from_dict

# Hypothesis profiles (docs/testing.md). CI explores a fixed set of examples (derandomized), so a landing never
# depends on a lucky draw; local runs keep exploring new ones (and hypothesis replays any failure it found from
# its database). `long` is the maintainers' deep fuzz: HYPOTHESIS_PROFILE=long scales every property test's
# example count by HYPOTHESIS_MAX_EXAMPLES / 100 (default 20000 / 100 = 200x, tens of thousands in all).
settings.register_profile("ci", derandomize=True)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "20000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else None)
if _PROFILE:
    settings.load_profile(_PROFILE)


def examples(n: int) -> int:
    """A property test's example count: ``n`` under the default and ci profiles (100 examples), scaled by the
    active profile's ``max_examples / 100`` otherwise. Tests pass ``max_examples=examples(n)`` instead of a bare
    number, which would override every profile."""
    return max(1, n * settings.default.max_examples // 100)


REPO = Path(__file__).resolve().parent.parent

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "horizon_s": 60.0,
    "control_interval_s": 10.0,
    "max_wait_s": 30.0,
    "queue_capacity": 256,
    "pools": [
        {
            "name": "a100",
            "gpu": "a100-80gb",
            "model": "llama-2-7b",
            "tp": 1,
            "min_replicas": 1,
            "max_replicas": 3,
            "initial_replicas": 2,
            "cold_start_s": 5.0,
        }
    ],
    "tenants": [{"name": "chat", "tier": "interactive", "ttft_slo_s": 0.5, "tpot_slo_s": 0.1}],
    "sources": [
        {
            "kind": "synthetic",
            "tenant": "chat",
            "arrival": {"process": "poisson", "rate_per_s": 4.0},
            "lengths": {"dist": "lognormal", "prompt_mean": 600, "output_mean": 120, "prompt_max": 3000},
        }
    ],
}


def deep_update(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def tiny_scenario(**overrides: Any) -> Scenario:
    return scenario_from_dict(deep_update(TINY, overrides), source="tests/tiny")


def tiny_dict(**overrides: Any) -> dict[str, Any]:
    return deep_update(TINY, overrides)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = os.environ.get("SERVEGYM_DATA_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("SERVEGYM_DATA_DIR is not set to the shared reference data (CI sets ../shared/data)")
    return Path(d)
