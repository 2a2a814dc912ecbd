"""The one exception type users see.

Anything wrong with *input* (a missing or corrupt file, a router of the wrong size, an unknown
model or sampler, an NFE mismatch) raises :class:`L2CError` with a message that fits on one line
and names the problem. The CLI prints it to stderr and exits with status 2; library callers can
catch it. Bugs stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations


class L2CError(Exception):
    """A user-facing error: one line, names the problem, no traceback needed."""


def suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ' (did you mean X?)' for the closest of ``choices``, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
