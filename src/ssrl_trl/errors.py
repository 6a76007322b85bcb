"""The one exception type the command line turns into an ``error:`` line instead of a traceback.

A :class:`UserError` is a problem the person running the command can fix (a bad path, a bad
option, a corrupt file they must delete), so a traceback would only hide the message. Bugs keep
raising their own exceptions and keep their tracebacks.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """Bad input from the user: reported as ``error: <message>`` with exit code 2 by ``ssrl-trl``.

    A ``ValueError`` so code that already catches ``ValueError`` for bad input keeps working.
    """
