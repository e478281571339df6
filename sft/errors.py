"""What counts as the user's mistake, and how it is said: a one-line `SftError` with the fix.

Only expected failures become an SftError (a missing file, a bad format, an unknown key);
anything else is a bug of sft's or a library's and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from safetensors import SafetensorError

T = TypeVar("T")

# What `from_pretrained` raises for a checkpoint that is missing, unreachable or corrupt: OSError
# (no such file or hub repo, invalid JSON), ValueError (unknown model type, no usable
# tokenizer), KeyError (a tokenizer.json missing its keys), SafetensorError (broken weights).
CHECKPOINT_ERRORS = (OSError, ValueError, KeyError, SafetensorError)


class SftError(Exception):
    """A problem with the user's input or config, stated in one line with the fix.

    The entry points print the message alone (no traceback) and exit with status 2.
    """


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint; the message says how to resume.
    `exit_status`: 0 after SIGTERM (a scheduler's preemption, to be requeued), 130 after Ctrl-C
    (as shells report an interrupted command)."""

    def __init__(self, message: str, exit_status: int = 0):
        super().__init__(message)
        self.exit_status = exit_status


def first_line(err: BaseException) -> str:
    """`Type: first line of the message`, for quoting a library's error inside ours."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def from_checkpoint(load: Callable[[], T], problem: str, fix: str) -> T:
    """`load()` (a `from_pretrained` call), or an SftError "<problem> (<cause>); <fix>"."""
    try:
        return load()
    except CHECKPOINT_ERRORS as err:
        raise SftError(f"{problem} ({first_line(err)}); {fix}") from err
