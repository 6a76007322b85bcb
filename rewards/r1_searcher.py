"""R1-Searcher rewards: stage 1 (learn to call retrieval) and stage 2 (F1, format penalty)."""

from ssrl_trl.rewards import FormatReward, R1SearcherStage1Reward, R1SearcherStage2Reward

make_stage1 = R1SearcherStage1Reward
make_stage2 = R1SearcherStage2Reward
stage1 = R1SearcherStage1Reward()
stage2 = R1SearcherStage2Reward()
format = FormatReward(tags="r1_searcher")  # noqa: A001 - the recipe-facing name
