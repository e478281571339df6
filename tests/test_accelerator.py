"""Precision: `trainer.precision=auto` decides only when nobody else did — not the launcher's
flag, not `accelerate config` — from what the hardware has: bf16 on a CPU with bf16 units, fp32
on one without, mixed on an accelerator; fp16 is refused on CPU only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sft.errors import SftError
from sft.training import accelerator as engine
from sft.training.accelerator import cpu_bf16_units, decide_precision, told_no


def precision(choice: str, device: str, launched_with: str | None) -> str | None:
    return decide_precision(choice, device, launched_with).mixed_precision


@pytest.mark.parametrize(
    ("capabilities", "units", "expected", "why"),
    [
        ({"amx_bf16": True, "avx512_bf16": True}, ["amx_bf16", "avx512_bf16"], "bf16", "amx_bf16"),
        # AVX-512 BF16 without AMX (Cooper Lake, AMD Zen 4): measured slower than fp32
        ({"amx_bf16": False, "avx512_bf16": True}, ["avx512_bf16"], "no", "no AMX"),
        ({"amx_bf16": False, "avx512_bf16": False, "avx2": True}, [], "no", "no bf16 units"),
    ],
)
def test_auto_on_cpu_is_bf16_only_with_amx(monkeypatch, capabilities, units, expected, why):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert cpu_bf16_units() == units
    chosen = decide_precision("auto", "cpu", None)
    assert chosen.mixed_precision == expected
    assert engine.cpu_name() in chosen.why  # the log and metrics.json name the CPU...
    assert why in chosen.why  # ...and the flag that decided


def test_older_torch_without_get_capabilities_asks_its_private_probes(monkeypatch):
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_bf16_units() == ["amx_bf16", "avx512_bf16"]
    assert precision("auto", "cpu", None) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert cpu_bf16_units() == ["avx512_bf16"]
    assert precision("auto", "cpu", None) == "no"


def test_mkldnns_bf16_claim_does_not_count(monkeypatch):
    """oneDNN says bf16 is supported on CPUs that only emulate it: auto must not believe it."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert precision("auto", "cpu", None) == "no"


def test_forced_choices_hold_whatever_the_cpu_has(monkeypatch):
    for capabilities in ({"amx_bf16": True}, {"avx2": True}):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda c=capabilities: c)
        assert precision("fp32", "cpu", None) == "no"
        assert precision("bf16", "cpu", None) == "bf16"
        assert decide_precision("bf16", "cpu", None).why == "trainer.precision=bf16"


def test_auto_is_mixed_on_an_accelerator():
    assert precision("auto", "cuda", None) in ("bf16", "fp16")


def test_auto_leaves_the_launchers_choice_to_accelerate(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    for device in ("cuda", "cpu"):
        for told in ("no", "fp16", "bf16"):
            chosen = decide_precision("auto", device, told)
            assert chosen.mixed_precision is None
            assert f"mixed_precision={told}" in chosen.why


def test_explicit_choices_and_what_is_refused():
    assert precision("fp32", "cuda", "bf16") == "no"
    assert precision("bf16", "cuda", None) == "bf16"
    assert precision("fp16", "mps", None) == "fp16"  # not only CUDA: Accelerate checks the rest
    with pytest.raises(SftError, match="fp16 needs an accelerator"):
        precision("fp16", "cpu", None)
    with pytest.raises(SftError, match="not one of"):
        precision("fp8", "cuda", None)


FAULTS_OF_REMADE_TENSORS = """
import resource, torch
from sft.training.accelerator import keep_freed_memory

def faults():  # page faults of six 64 MiB tensors, each freed before the next is made
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(6):
        torch.ones(2**24).add_(1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

print(faults())
keep_freed_memory()
print(faults())
"""


def test_freed_memory_is_kept_for_the_next_tensor_of_its_size():
    """Tensors of 64 MiB made and freed in turn: by default glibc's malloc unmaps each and the
    kernel zeroes every page of the next anew; after keep_freed_memory the pages are reused (the
    heap grows once, at times twice, to hold one). In a process of its own: malloc's state (what
    is free where in the heap) is the process's."""
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_REMADE_TENSORS], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    default, kept = (int(n) for n in result.stdout.split())
    pages = 2**26 // os.sysconf("SC_PAGE_SIZE")
    assert default > 5.5 * pages  # every one of the six
    assert kept < default / 2  # the first, at times a second; never half of them


def test_told_no_by_flag_or_config_file_not_by_default(tmp_path):
    config = tmp_path / "accelerate.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\nmixed_precision: 'no'\n")
    assert told_no(["accelerate", "launch", "--mixed_precision", "no", "-m", "sft.train"])
    assert told_no(["accelerate", "launch", "--mixed_precision=no", "train.py"])
    assert told_no(["accelerate", "launch", "--config_file", str(config), "train.py"])
    assert not told_no(["accelerate", "launch", "--config_file", str(tmp_path / "none.yaml")])


CHOICE = "from sft.training.accelerator import launcher_choice; print(launcher_choice())"


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
