"""Training and evaluation files under bad input (issue 14, item 13): agent YAMLs, seeds, non-finite
hyperparameters, truncated checkpoints and statistics, and a checkpoint on an env of other spaces."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from servegym.agents.checkpoints import checkpoints
from servegym.agents.config import AgentConfigError, load_agent_config
from servegym.agents.train import main
from servegym.baselines.env_runner import run_env_episode
from servegym.baselines.policy import PolicyError
from servegym.baselines.registry import make_policy
from tests.test_agents import write_config

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "content, match",
    [
        (b"- a\n- b\n", "must be a YAML mapping"),
        (b"just a string\n", "must be a YAML mapping"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", "not UTF-8"),
    ],
)
def test_an_agent_yaml_that_is_not_a_mapping_names_the_file(tmp_path, content, match):
    path = tmp_path / "agent.yaml"
    path.write_bytes(content)
    with pytest.raises(AgentConfigError, match=match) as ei:
        load_agent_config(path)
    assert str(path) in str(ei.value)


@pytest.mark.parametrize(
    "over, key",
    [
        ({"eval_seeds": []}, "eval_seeds"),
        ({"train_seeds": []}, "train_seeds"),
        ({"train_seeds": [-1]}, "train_seeds"),
        ({"ppo": {"learning_rate": float("inf")}}, "ppo.learning_rate"),
        ({"ppo": {"clip_range": float("nan")}}, "ppo.clip_range"),
    ],
)
def test_empty_seeds_and_non_finite_hyperparameters_are_rejected(tmp_path, over, key):
    path, _ = write_config(tmp_path, **over)
    with pytest.raises(AgentConfigError, match=key.replace(".", r"\.")):
        load_agent_config(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A tiny training run with two checkpoints (and their normalization statistics)."""
    tmp = tmp_path_factory.mktemp("run")
    cfg_path, sc = write_config(tmp, total_timesteps=512, checkpoint_freq=256, eval_freq=10_000)
    out = tmp / "run"
    args = ["--scenario", str(sc), "--config", str(cfg_path), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert [c.name for c in checkpoints(out)] == ["model_256_steps.zip", "model_512_steps.zip"]
    return out, args


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("damaged", ["model_512_steps.zip", "model_vecnormalize_512_steps.pkl"])
def test_resume_falls_back_past_a_truncated_newest_checkpoint(run, tmp_path, damaged, capsys):
    src, args = run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    truncate(out / "checkpoints" / damaged)
    args = [a if a != str(src) else str(out) for a in args]
    assert main([*args, "--resume", "--timesteps", "768"]) == 0
    meta = yaml.safe_load((out / "meta.json").read_text())
    assert meta["resumed_from"].endswith("model_256_steps.zip")
    assert "skipping model_512_steps.zip" in capsys.readouterr().err


def test_a_truncated_model_or_statistics_is_a_policy_error(run, tmp_path):
    src, _ = run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    truncate(out / "model.zip")
    with pytest.raises(PolicyError, match="damaged or truncated") as ei:
        make_policy(out / "model.zip")
    assert "model.zip" in str(ei.value)
    truncate(out / "checkpoints" / "model_vecnormalize_256_steps.pkl")
    with pytest.raises(PolicyError, match="normalization statistics"):
        make_policy(out / "checkpoints" / "model_256_steps.zip")


def test_evaluate_reports_a_truncated_model_without_a_traceback(run, tmp_path, capsys):
    src, _ = run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    truncate(out / "model.zip")
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "scripts" / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    rc = mod.main(["--policy", str(out / "model.zip"), "--scenario", "chat_azure", "--seeds", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.zip" in err and "Traceback" not in err


def test_a_checkpoint_on_an_env_of_other_spaces_names_both_shapes(run):
    src, _ = run
    # trained on 2 replicas; the Route env of chat_azure pads to more
    with pytest.raises(PolicyError) as ei:
        run_env_episode(src / "model.zip", "servegym/Route-v0", "chat_azure", 0, {"horizon_s": 5.0})
    msg = str(ei.value)
    assert "trained with observations" in msg and "this env gives observations" in msg
    assert "easy_route" in msg and "max_replicas" in msg
