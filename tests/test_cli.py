"""The rule every command ends by: bad input is one `error:` line and exit 2, a preemption exits
0 with its message, and anything else is a bug that keeps its traceback."""

from __future__ import annotations

import pytest

from sft import cli
from sft.errors import Preempted, SftError


def test_user_error_is_one_line_and_exit_status_2(capsys):
    with pytest.raises(SystemExit) as stop, cli.exits_on_user_error():
        raise SftError("data.path 'x' does not exist; point data.path at a file")
    assert stop.value.code == 2
    assert (
        capsys.readouterr().err
        == "error: data.path 'x' does not exist; point data.path at a file\n"
    )


def test_preemption_exits_cleanly_with_its_message(capsys):
    with pytest.raises(SystemExit) as stop, cli.exits_on_user_error():
        raise Preempted("stopped by SIGTERM at step 4; run the same command again")
    assert stop.value.code == 0
    assert "run the same command again" in capsys.readouterr().err


def test_ctrl_c_outside_the_steps_exits_130_without_a_traceback(capsys):
    with pytest.raises(SystemExit) as stop, cli.exits_on_user_error():
        raise KeyboardInterrupt
    assert stop.value.code == 130
    assert "Run the same command again" in capsys.readouterr().err


def test_a_bug_is_not_turned_into_a_user_error():
    with pytest.raises(ZeroDivisionError), cli.exits_on_user_error():
        _ = 1 / 0


def test_run_prints_the_answer_and_logs(capsys):
    parser = cli.parser("sft.example", "An example.")
    parser.add_argument("name")
    cli.run(parser, lambda args: f"hello {args.name}", ["world"])
    assert capsys.readouterr().out == "hello world\n"


def test_run_turns_bad_input_into_exit_2(capsys):
    def work(args):
        raise SftError("no such run")

    with pytest.raises(SystemExit) as stop:
        cli.run(cli.parser("sft.example", "An example."), work, [])
    assert stop.value.code == 2 and "error: no such run" in capsys.readouterr().err


def test_a_full_disk_is_one_line_naming_the_file_and_exit_status_2(tmp_path, capsys):
    """A write that fails with ENOSPC ends as bad input does (the disk, not sft, is at fault),
    naming the file being written even when the error itself names none (safetensors' Rust
    writer says `os error 28`). The real full disk, in a child process, is in
    test_bad_input_env.py."""
    import errno

    target = tmp_path / "model.safetensors"
    with pytest.raises(SystemExit) as stop, cli.exits_on_user_error():
        raise OSError(errno.ENOSPC, "No space left on device", str(target))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: could not write {target}: No space left on device")
    assert "run the same command again" in err

    def save_file(tensors, filename):  # the innermost frame holding the path names the file
        raise OSError("I/O error: No space left on device (os error 28)")

    message = None
    try:
        save_file({}, str(target))
    except OSError as error:
        message = cli.disk_full(error)
    assert message is not None and f"could not write {target}" in message


def test_any_other_os_error_keeps_its_traceback():
    with pytest.raises(PermissionError), cli.exits_on_user_error():
        raise PermissionError(13, "Permission denied", "/somewhere")
