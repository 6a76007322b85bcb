"""Search-R1 rewards: exact match (``em``) and the format-aware variant (``format_aware``)."""

from ssrl_trl.rewards import FormatReward, SearchR1EMReward, SearchR1FormatReward

make_em = SearchR1EMReward
make_format_aware = SearchR1FormatReward
em = SearchR1EMReward()
format_aware = SearchR1FormatReward()
format = FormatReward(tags="search_r1")  # noqa: A001 - the recipe-facing name
