#!/usr/bin/env bash
# The wheel outside the checkout, as a user gets it: build it, install it (not editable) into a fresh venv, and
# use it from a folder that has its own envs/, agents/ and baselines/ packages (common in RL code), first
# without the learning stack (torch, SB3), then with the `train` extra for a pretrained agent.
# CI runs this after the test suite (the README's test command); run it by hand after any packaging change.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip_quiet() { "$@" 2>&1 | grep -v "^WARNING: Location" || true; }

echo "check_wheel: building the wheel"
python3 -m pip wheel -q --no-deps -w "$work/dist" "$repo" 2>&1 | grep -v "^WARNING: Location" || true
wheel=$(ls "$work"/dist/servegym-*.whl)
# one import root: nothing but servegym/ and the dist-info at the wheel's top level
python3 - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = {n.split("/")[0] for n in names}
bad = [t for t in tops if t != "servegym" and not t.endswith(".dist-info")]
assert not bad, f"the wheel installs top-level {bad}; everything must live under servegym/"
for need in ("servegym/configs/scenarios/chat_azure.yaml", "servegym/configs/suite/v0.yaml",
             "servegym/agents/pretrained/route_chat_azure/model.zip", "servegym/envs/perf/perf_coefficients.json",
             "servegym/configs/suite/v1/families/hetero_route.yaml", "servegym/envs/perf/validation/nemo_llama2_7b.csv",
             "servegym/configs/scenarios/disagg_splitwise_ha.yaml"):
    assert need in names, f"the wheel lacks {need}"
print(f"check_wheel: {len(names)} files, all under servegym/")
EOF

python3 -m venv "$work/venv"
py="$work/venv/bin/python"
pip_quiet "$py" -m pip install -q -c "$repo/constraints.txt" "$wheel"

# a user's project whose own envs/agents/baselines would shadow bare imports
mkdir -p "$work/user"
for pkg in envs agents baselines; do
  mkdir -p "$work/user/$pkg"
  echo "raise ImportError('the user project\'s own $pkg package was imported instead of servegym.$pkg')" \
    > "$work/user/$pkg/__init__.py"
done
cd "$work/user"

echo "check_wheel: servegym scenarios"
"$work/venv/bin/servegym" scenarios | tee "$work/scenarios.txt"
grep -q chat_azure "$work/scenarios.txt"
echo "check_wheel: servegym simulate (a 120 s horizon)"
"$work/venv/bin/servegym" simulate --set horizon_s=120

echo "check_wheel: every id without torch or stable-baselines3 installed"
"$py" - <<'EOF'
import importlib.util, sys
assert importlib.util.find_spec("torch") is None, "torch is installed, but the core must not need it"
import gymnasium as gym
import servegym.envs
from servegym.envs.gym import ENV_IDS
for env_id in ENV_IDS:
    env = gym.make(env_id, horizon_s=120.0)
    obs, info = env.reset(seed=0)
    for _ in range(20):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            break
    print(f"check_wheel: {env_id} ok ({env.unwrapped.scenario.name})")
EOF
# the module-qualified id imports the registering module itself
"$py" -c 'import gymnasium as gym; gym.make("servegym.envs:servegym/Route-v0").reset(seed=0); print("check_wheel: module-qualified id ok")'

echo "check_wheel: the train extra and a pretrained agent"
pip_quiet "$py" -m pip install -q -c "$repo/constraints.txt" "$wheel[train]"
"$py" - <<'EOF'
from servegym.agents import PRETRAINED_DIR
from servegym.baselines import make_policy
from servegym.baselines.env_runner import run_env_episode

model = PRETRAINED_DIR / "route_chat_azure" / "model.zip"
assert "site-packages" in str(model), model
metrics, actions = run_env_episode(make_policy(model), "servegym/Route-v0", "chat_azure", seed=0,
                                   env_config={"horizon_s": 60.0}, record=True)
print(f"check_wheel: pretrained router ran {len(actions)} decisions, SLO attainment {metrics['slo_attainment']:.3f}")
import minari  # the offline extra comes with train (demonstration datasets, agents/demos.py)
from servegym.agents.demos import dataset_id
print(f"check_wheel: minari {minari.__version__}, datasets like {dataset_id('chat_bursty', 'jsq')}")
EOF
echo "check_wheel: passed"
