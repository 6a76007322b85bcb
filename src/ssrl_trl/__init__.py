"""ssrl-trl: train language models to search (SSRL, Search-R1, R1-Searcher) on stock TRL.

Import the pieces from their modules (``ssrl_trl.protocol``, ``ssrl_trl.rewards``,
``ssrl_trl.rollout``, ``ssrl_trl.retrieval``); this top level stays cheap to import.
"""

__version__ = "0.1.0"
