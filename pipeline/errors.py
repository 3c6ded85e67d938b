"""The one base class of errors a user can fix (bad config, bad data, a run that is finished).

Jobs catch ``UserError`` and exit 2 with its one-line message (no traceback unless ``--debug``);
anything else is a bug and keeps its traceback. Each subclass also derives from the builtin
that callers already catch (``ValueError`` / ``RuntimeError``).
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An error whose message tells the user what to change; jobs print it and exit 2."""
