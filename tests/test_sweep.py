"""Training sweeps (agents/sweep.py): a sweep's runs equal direct runs of the same seeds, on either backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from servegym.agents import sweep  # noqa: E402
from servegym.agents.config import AgentConfigError, load_agent_config  # noqa: E402

SEEDS = [0, 1]


def tiny_config():
    cfg = load_agent_config("route_chat_azure_native")
    return sweep.with_settings(
        cfg,
        {
            "total_timesteps": 256,
            "n_envs": 8,
            "eval_freq": 128,
            "checkpoint_freq": 256,
            "eval_seeds": [1000],
            "env_config.horizon_s": 10.0,
            "ppo.n_steps": 16,
            "ppo.batch_size": 64,
            "ppo.n_epochs": 1,
        },
        "test",
    )


@pytest.fixture(scope="module")
def direct(tmp_path_factory) -> dict[int, Path]:
    """Each seed trained directly, as scripts/train.py --config ... --seed S does."""
    from servegym.agents.ppo import train

    root = tmp_path_factory.mktemp("direct")
    for s in SEEDS:
        train(tiny_config(), root / f"s{s}", s, "cpu", False, 1, None, "direct")
    return {s: root / f"s{s}" for s in SEEDS}


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("model.pt", "best/best_model.pt", "checkpoints/model_256_steps.pt"):
        x = torch.load(a / name, weights_only=False)
        y = torch.load(b / name, weights_only=False)
        assert x["model"].keys() == y["model"].keys()
        for k in x["model"]:
            assert torch.equal(x["model"][k], y["model"][k]), f"{name}: {k} differs"
    assert json.loads((a / "eval/history.json").read_text()) == json.loads(
        (b / "eval/history.json").read_text()
    )
    meta_a, meta_b = (json.loads((p / "meta.json").read_text()) for p in (a, b))
    assert meta_a["timesteps"] == meta_b["timesteps"] == 256
    assert meta_a["best_eval"] == meta_b["best_eval"]


@pytest.mark.slow
def test_local_sweep_equals_direct_runs(direct, tmp_path):
    rows = sweep.run_sweep(tiny_config(), [{}], SEEDS, tmp_path, backend="local", workers=2)
    assert [(r["setting"], r["seed"]) for r in rows] == [("base", 0), ("base", 1)]
    for s in SEEDS:
        assert_same_run(direct[s], tmp_path / "base" / f"s{s}")
    assert json.loads((tmp_path / sweep.SWEEP_FILE).read_text()) == rows
    # the seeds differ from each other (a sweep that ran one seed twice would pass the above only by luck)
    w0, w1 = (torch.load(tmp_path / f"base/s{s}/model.pt", weights_only=False)["model"] for s in SEEDS)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    # done runs are not trained again: a second sweep finds them and only summarises
    mtime = (tmp_path / "base/s0/model.pt").stat().st_mtime_ns
    assert sweep.run_sweep(tiny_config(), [{}], SEEDS, tmp_path, workers=1) == rows
    assert (tmp_path / "base/s0/model.pt").stat().st_mtime_ns == mtime
    # ... unless they trained something else (another config, seed or warm start): then they are redone
    (tmp_path / "base/s0" / sweep.RUN_KEY_FILE).write_text("a run of another config")
    mtime1 = (tmp_path / "base/s1/model.pt").stat().st_mtime_ns
    sweep.run_sweep(tiny_config(), [{}], SEEDS, tmp_path, workers=1)
    assert (tmp_path / "base/s0/model.pt").stat().st_mtime_ns != mtime
    assert (tmp_path / "base/s1/model.pt").stat().st_mtime_ns == mtime1
    assert_same_run(direct[0], tmp_path / "base" / "s0")


@pytest.mark.slow
def test_ray_sweep_equals_direct_runs(direct, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    sweep.run_sweep(tiny_config(), [{}], SEEDS, tmp_path, backend="ray", workers=2)
    for s in SEEDS:
        assert_same_run(direct[s], tmp_path / "base" / f"s{s}")


def test_settings_grid_and_bad_keys():
    grid = sweep.parse_sets(["ppo.learning_rate=0.001,0.0003", "n_envs=64"])
    assert grid == [{"ppo.learning_rate": 0.001, "n_envs": 64}, {"ppo.learning_rate": 0.0003, "n_envs": 64}]
    assert sweep.setting_label(grid[0]) == "ppo.learning_rate=0.001-n_envs=64"
    cfg = load_agent_config("route_chat_azure_native")
    assert sweep.with_settings(cfg, grid[1], "x").ppo.learning_rate == 0.0003
    with pytest.raises(AgentConfigError, match="ppo.learning_rate"):
        sweep.with_settings(cfg, {"ppo.learning_rate": -1.0}, "x")
    with pytest.raises(AgentConfigError, match="not a section"):
        sweep.with_settings(cfg, {"n_envs.x": 1}, "x")
    with pytest.raises(AgentConfigError, match="nope"):
        sweep.with_settings(cfg, {"ppo.nope": 1}, "x")
    with pytest.raises(SystemExit, match="key=value"):
        sweep.parse_sets(["n_envs"])
