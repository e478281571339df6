"""Exceptions the entry points turn into a one-line message instead of a traceback."""

import sys
from typing import NoReturn


class SftError(Exception):
    """A problem with the user's input or config, stated in one line with the fix.

    The entry points print the message alone (no traceback) and exit with status 2.
    """


class Preempted(Exception):
    """Training stopped on SIGTERM after writing a checkpoint; the message says how to resume."""


def exit_with(err: SftError) -> NoReturn:
    """How every command ends on bad input: `error: <message>` on stderr, status 2."""
    sys.stderr.write(f"error: {err}\n")
    sys.exit(2)
