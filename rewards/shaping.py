"""Small shaping rewards to combine with an outcome reward through ``reward_weights``."""

from ssrl_trl.rewards import (
    AnswerF1Reward,
    LengthGuardReward,
    RetrievalHitReward,
    SearchCountReward,
    TagPresenceReward,
)

make_search_count = SearchCountReward
make_length_guard = LengthGuardReward
search_count = SearchCountReward()
length_guard = LengthGuardReward()
make_tag_presence = TagPresenceReward
tag_presence = TagPresenceReward()  # Search-R1 / SSRL tags; a recipe binds it to its own
tag_presence_r1_searcher = TagPresenceReward(tags="r1_searcher")  # the same, kept for recipes naming it
make_retrieval_hit = RetrievalHitReward
retrieval_hit = RetrievalHitReward()
make_answer_f1 = AnswerF1Reward
answer_f1 = AnswerF1Reward()
