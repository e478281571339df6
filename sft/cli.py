"""What every command shares: its argument parser, logging to the terminal, and the rule for
ending — bad input prints `error: <message>` and exits 2, a SIGTERM stop exits 0 and a Ctrl-C
130 with how to resume, anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from sft.errors import Preempted, SftError


def parser(module: str, description: str) -> argparse.ArgumentParser:
    """The parser of `python -m <module>`."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=description)


def start_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")


@contextmanager
def exits_on_user_error() -> Iterator[None]:
    """Around a command's work: the one place an SftError or a preemption ends the process."""
    try:
        yield
    except SftError as err:
        logging.getLogger("sft").debug("input error", exc_info=True)
        exit_with(err)
    except Preempted as stop:
        sys.stderr.write(f"{stop}\n")
        sys.exit(stop.exit_status)  # a clean stop: the checkpoint is complete
    except KeyboardInterrupt:  # Ctrl-C outside the training steps (or a second one)
        sys.stderr.write(
            "interrupted (Ctrl-C); nothing half-written is kept. Run the same command again to "
            "continue from the last checkpoint, if there is one\n"
        )
        sys.exit(130)


def exit_with(err: SftError) -> NoReturn:
    """How every command ends on bad input: `error: <message>` on stderr, status 2."""
    sys.stderr.write(f"error: {err}\n")
    sys.exit(2)


def run(
    parser: argparse.ArgumentParser, work: Callable[[argparse.Namespace], Any], argv=None
) -> None:
    """A command's whole life: parse `argv`, log to the terminal, `work(args)` under the
    error-to-exit rule, then print its answer (when it has one) on stdout."""
    args = parser.parse_args(argv)
    start_logging()
    with exits_on_user_error():
        answer = work(args)
    if answer is not None:
        print(answer)  # noqa: T201 (the command's answer)
