"""Precision: `trainer.precision=auto` decides only when nobody else did — not the launcher's
flag, not `accelerate config` — and fp16 is refused on CPU only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sft.accelerator import precision, told_no
from sft.errors import SftError


def test_auto_is_fp32_on_cpu_and_mixed_on_an_accelerator():
    assert precision("auto", "cpu", None) == "no"
    assert precision("auto", "cuda", None) in ("bf16", "fp16")


def test_auto_leaves_the_launchers_choice_to_accelerate():
    for told in ("no", "fp16", "bf16"):
        assert precision("auto", "cuda", told) is None


def test_explicit_choices_and_what_is_refused():
    assert precision("fp32", "cuda", "bf16") == "no"
    assert precision("bf16", "cuda", None) == "bf16"
    assert precision("fp16", "mps", None) == "fp16"  # not only CUDA: Accelerate checks the rest
    with pytest.raises(SftError, match="fp16 needs an accelerator"):
        precision("fp16", "cpu", None)
    with pytest.raises(SftError, match="not one of"):
        precision("fp8", "cuda", None)


def test_told_no_by_flag_or_config_file_not_by_default(tmp_path):
    config = tmp_path / "accelerate.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\nmixed_precision: 'no'\n")
    assert told_no(["accelerate", "launch", "--mixed_precision", "no", "-m", "sft.train"])
    assert told_no(["accelerate", "launch", "--mixed_precision=no", "train.py"])
    assert told_no(["accelerate", "launch", "--config_file", str(config), "train.py"])
    assert not told_no(["accelerate", "launch", "--config_file", str(tmp_path / "none.yaml")])


CHOICE = "from sft.accelerator import launcher_choice; print(launcher_choice())"


@pytest.mark.slow
@pytest.mark.parametrize(("flags", "expected"), [([], "None"), (["--mixed_precision", "no"], "no")])
def test_launcher_choice_through_a_real_accelerate_launch(tmp_path, flags, expected):
    script = tmp_path / "choice.py"
    script.write_text(CHOICE + "\n")
    env = {**os.environ, "HF_HOME": str(tmp_path)}  # no `accelerate config` file there
    env.pop("ACCELERATE_MIXED_PRECISION", None)
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
         *flags, str(script)],
        env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == expected
