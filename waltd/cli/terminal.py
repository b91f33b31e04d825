"""Text for the user's terminal: escaping what a terminal would obey, and plain tables.

Whatever the client shows may come from the network (registry labels, DHCP options in log
events): every non-printable character is shown escaped, never sent to the terminal as is.
"""

from __future__ import annotations

from collections.abc import Sequence


def printable(text: str) -> str:
    """`text` with each non-printable character (controls, `\\u202e`, lone surrogates...)
    escaped (`\\x1b`, `\\u202e`, `\\ud800`)."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """A plain text table with a header line and a rule, columns padded, cells escaped."""
    cells = [[printable(str(c)) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
