"""Learned agents: PPO training (``train``), its feature extractor and callbacks, and the pretrained agents.

``PRETRAINED_DIR`` holds one folder per pretrained agent (``model.zip``, the run's ``config.yaml``, observation
statistics, ``meta.json`` with the command that retrains it); it ships in the wheel, so
``make_policy(PRETRAINED_DIR / "route_chat_azure" / "model.zip")`` works from any installation.
"""

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
