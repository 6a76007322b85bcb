"""Recipe-facing reward entry points, named by dotted path in a recipe's ``rewards:`` list.

Each module exposes ready-made rewards (``rewards.ssrl.reward``) and a ``make`` factory that a
recipe can call with keyword arguments (``{path: rewards.search_r1.make_format_aware, kwargs:
{...}}``). A recipe binds every one of them to its own tag set. The implementations live in
:mod:`ssrl_trl.rewards`.
"""
