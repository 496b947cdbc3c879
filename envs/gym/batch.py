"""``servegym/Batch-v0``: one step per admission decision of a replica forming its next iteration."""

from __future__ import annotations

from servegym.envs.gym.base import ServeEnv
from servegym.envs.gym.config import MODE_BATCH


class BatchEnv(ServeEnv):
    """Admit one of the top-K waiting requests into the forming batch, or start the iteration now.

    ``Discrete(top_k + 1)``: action j < K admits the request in candidate slot j (slots ranked by the
    ``batch_order`` rule, best first; slots holding a request that does not fit are masked), action K starts
    the iteration. The step repeats at the same replica until the agent starts it or nothing more fits.
    Routing and scaling follow the scenario's built-in rules. Observation keys: ``candidates``, ``forming``,
    ``replicas``, ``pools``, ``global``.
    """

    MODE = MODE_BATCH
    DEFAULT_SCENARIO = "chat_azure"
