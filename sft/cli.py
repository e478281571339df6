"""What every command shares: its argument parser, logging to the terminal, and the rule for
ending — bad input prints `error: <message>` and exits 2, a SIGTERM stop exits 0 and a Ctrl-C
130 with how to resume, anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import errno
import io
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from safetensors import SafetensorError

from sft.errors import Preempted, SftError


def parser(module: str, description: str) -> argparse.ArgumentParser:
    """The parser of `python -m <module>`."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=description)


def evaluation_parser(module: str, description: str, model: str) -> argparse.ArgumentParser:
    """The arguments sft.evaluate and sft.report share: the model (`model` says what it may
    be), data.<key>=<value> overrides and a split (`data_overrides` reads them), the folder
    written, and the progress bar."""
    command = parser(module, description)
    command.add_argument("model", help=model)
    command.add_argument("args", nargs="*", help="data.<key>=<value> overrides, then a split name")
    command.add_argument("--output-dir", type=Path)
    command.add_argument("--no-progress", action="store_true")
    return command


def data_overrides(args: list[str]) -> tuple[list[str], str | None]:
    """sft.evaluate's and sft.report's trailing arguments: data.<key>=<value> overrides (each
    a key of the config schema), then at most one split name."""
    from sft import config as schema

    overrides = [a for a in args if "=" in a]
    splits = [a for a in args if "=" not in a]
    if len(splits) > 1:
        raise SftError(f"one split at most, got {splits}")
    keys = set(schema.schema_keys())
    for key in (o.split("=", 1)[0] for o in overrides):
        if key.lstrip("+~") not in keys:
            raise SftError(schema.not_a_key(key))
    return overrides, splits[0] if splits else None


def start_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")


@contextmanager
def exits_on_user_error() -> Iterator[None]:
    """Around a command's work: the one place an SftError, a full disk or a preemption ends
    the process."""
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
    except (OSError, SafetensorError) as err:
        full = disk_full(err)
        if full is None:
            raise  # any other failure to read or write is a bug, or bad input not yet named
        logging.getLogger("sft").debug("disk full", exc_info=True)
        exit_with(SftError(full))


# errno of a full disk, of a file past the size limit (ulimit -f), of a full quota
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def disk_full(err: BaseException) -> str | None:
    """The one-line message for a write that failed on a full disk (or a size limit or quota),
    or None for any other error. safetensors (Rust) says `os error 28` instead of an errno."""
    code = getattr(err, "errno", None)
    if code not in DISK_FULL:
        match = re.search(r"os error (\d+)", str(err))
        code = int(match.group(1)) if match else None
    if code not in DISK_FULL:
        return None
    path = getattr(err, "filename", None) or _file_being_written(err.__traceback__)
    return (
        f"could not write {path or 'a file'}: {os.strerror(code)} (no space left on the disk, "
        f"or a file-size limit or quota reached); free some space and run the same command "
        f"again (training continues from its last complete checkpoint, if it wrote one, "
        f"else starts over)"
    )


def _file_being_written(tb: TracebackType | None) -> str | None:
    """The failed write's own error names no file: the innermost frame holding an open file or
    a path (the writer's own frame: `save_file(tensors, filename)`, `f.write(...)`) says which.
    Only the names count: a half-written file may be cleaned up by the time this looks."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
            if isinstance(value, os.PathLike) or (isinstance(value, str) and os.sep in value):
                return os.fspath(value)
    return None


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


@contextmanager
def composes_config() -> Iterator[None]:
    """Around a Hydra entry point: a command line that does not compose (unknown recipe or
    option, misspelt key, wrong type, unparseable override) ends in one `error:` line naming it,
    not in Hydra's report and its advice to append the key with `+`."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra raises instead of printing its report
    try:
        yield
    except (HydraException, OmegaConfBaseException) as err:
        exit_with(SftError(composition_error(err)))


def composition_error(err: Exception) -> str:
    """What went wrong in composing the config, and the fix, in one line."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    from sft.config import not_a_key

    cause = err.__cause__
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        options = ", ".join(err.options or [])
        if group:
            return (
                f"unknown {group} '{name}'; choose one of: {options} — or put your own in "
                f"<dir>/{group}/{name}.yaml and pass --config-dir <dir>"
            )
    if isinstance(err, OverrideParseException):
        key, _, value = err.override.partition("=")
        return (
            f"could not parse the override {err.override!r} ({err.message.splitlines()[0]}); quote "
            f"a value with special characters: '{key}=\"{value}\"' (in a list: "
            f"'{key}=[\"{value}\"]')"
        )
    if isinstance(cause, ConfigAttributeError | ConfigKeyError):
        quoted = re.search(r"'([^']+)'", str(err))  # "Could not override '<key>'"
        return not_a_key(quoted.group(1) if quoted else str(cause.full_key))
    if isinstance(cause, ValidationError):
        override = str(err).rpartition(" ")[2]  # "Error merging override <key>=<value>"
        return f"{override}: {str(cause).splitlines()[0]}"
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
