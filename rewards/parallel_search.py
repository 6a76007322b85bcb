"""ParallelSearch rewards: EM plus a bonus when a correct answer came from a search of several
distinct queries (``reward``; ``make(bonus=..., min_queries=...)`` sets the terms)."""

from ssrl_trl.parallel_rewards import ParallelSearchReward

make = ParallelSearchReward
reward = ParallelSearchReward()
