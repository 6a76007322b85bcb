"""SSRL rewards: 0.9·EM + 0.1·format (``reward``), and the format term alone (``format``)."""

from ssrl_trl.rewards import FormatReward, SSRLReward

make = SSRLReward
reward = SSRLReward()
format = FormatReward(tags="ssrl")  # noqa: A001 - the recipe-facing name
