"""Rich consoles for what Veritee prints: the terminal's width on a terminal, no wrapping in a
pipe, so a row or a measurement stays on one line for grep and for scripts."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

# Rich's width when its stream is not a terminal (it would wrap at 80 columns there).
# $COLUMNS, when set, still wins.
PIPE_WIDTH = 1000


def console(*, stderr: bool = False, **options: Any) -> Console:
    """A console on stdout (or stderr) that wraps at the terminal's width, or not at all."""
    from rich.console import Console  # here, not above: `veritee run` never loads Rich

    stream = sys.stderr if stderr else sys.stdout
    tty = stream is not None and stream.isatty()
    width = None if tty or os.environ.get("COLUMNS") else PIPE_WIDTH
    return Console(stderr=stderr, width=width, **options)


# A heading rule is as wide as the terminal, at most this (in a pipe, not PIPE_WIDTH).
RULE_WIDTH = 100


def rule(con: Console, title: str) -> None:
    """A heading: a rule with the title at its left."""
    from rich.rule import Rule

    con.print(Rule(title, align="left"), width=min(con.width, RULE_WIDTH))
