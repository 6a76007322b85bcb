"""Small shaping rewards to combine with an outcome reward through ``reward_weights``."""

from ssrl_trl.rewards import LengthGuardReward, SearchCountReward

make_search_count = SearchCountReward
make_length_guard = LengthGuardReward
search_count = SearchCountReward()
length_guard = LengthGuardReward()
