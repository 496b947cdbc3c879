"""Package data: scenario, suite and agent-config YAML files, installed with the wheel as ``servegym.configs``.

Code finds them through these paths, never through the checkout's layout, so a regular (non-editable) install
sees the same files as a development checkout.
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
SCENARIO_DIR = CONFIG_DIR / "scenarios"
AGENT_CONFIG_DIR = CONFIG_DIR / "agents"
SUITE_DIR = CONFIG_DIR / "suite"
