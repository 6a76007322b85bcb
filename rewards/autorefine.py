"""AutoRefine rewards: the outcome with refine credit (``reward``: 1.0 right, else 0.1 when a
refine note holds the gold answer, else 0), and the AutoRefine format term alone (``format``)."""

from ssrl_trl.refine_reward import AutoRefineReward
from ssrl_trl.rewards import FormatReward

make = AutoRefineReward
reward = AutoRefineReward()
format = FormatReward(tags="autorefine")  # noqa: A001 - the recipe-facing name
