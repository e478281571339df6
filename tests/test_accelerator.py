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


def test_autocast_outside_an_accelerator_follows_the_precision_it_is_given():
    linear = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with engine.autocast(decide_precision("bf16", "cpu", None), "cpu"):
        assert linear(x).dtype == torch.bfloat16
    with engine.autocast(decide_precision("fp32", "cpu", None), "cpu"):
        assert linear(x).dtype == torch.float32


@pytest.mark.parametrize("amx", [True, False])
def test_a_model_that_only_infers_runs_on_bf16_weights_where_bf16_runs(monkeypatch, models, amx):
    """sft.evaluate's and sft.predict's model: cast once, its output layer kept in fp32 with its
    decimals, inputs cast on the way in; the reason says so. Without AMX, untouched fp32."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": amx})
    model = models("bert").eval()
    with torch.no_grad():
        model.classifier.bias += 2016.37  # a year, as a regression head with its scale folded in
        before = model(input_ids=torch.tensor([[2, 5, 6, 7, 3]])).logits
    bias = model.classifier.bias.clone()
    chosen = engine.inference_precision(model, "auto", "cpu")
    assert chosen.mixed_precision == "no"  # no autocast around it: nothing left to cast
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    head = {n: d for n, d in dtypes.items() if n.startswith("classifier.")}
    body = {d for n, d in dtypes.items() if n not in head}
    if not amx:
        assert set(dtypes.values()) == {torch.float32} and chosen.label == "fp32"
        return
    assert body == {torch.bfloat16} and set(head.values()) == {torch.float32}
    assert torch.equal(model.classifier.bias, bias)  # not cast to bf16 and back
    with torch.no_grad():
        # The embeddings take floats too: given fp32, they are cast to the weights' bf16.
        embeds = model.get_input_embeddings()(torch.tensor([[2, 5, 6, 7, 3]])).float()
        after = model(inputs_embeds=embeds).logits
    assert after.dtype == torch.float32
    assert after == pytest.approx(before, abs=0.1)  # bf16's rounding, not a multiple of 8
    assert chosen.label == "bf16 weights"
    report = chosen.report(engine.fresh_accelerator(mixed_precision="no"))
    assert report["precision"] == "bf16"
    assert report["precision_reason"].endswith(
        "weights cast to bf16, the output layer kept in fp32"
    )


def test_a_model_with_batch_norm_keeps_fp32_weights_and_autocast(monkeypatch, models):
    """Batch norm on bf16 weights changed 12 of 1,000 EfficientNet predictions: autocast there.
    A convolutional network's filters go channels-last; the outputs stay what they were."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    model = models("resnet").eval()
    pixels = torch.randn(2, model.config.num_channels, 32, 32)
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
    chosen = engine.inference_precision(model, "auto", "cpu")
    assert chosen.mixed_precision == "bf16" and chosen.label == "bf16"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    filters = [p for p in model.parameters() if p.dim() == 4]
    assert filters and all(p.is_contiguous(memory_format=torch.channels_last) for p in filters)
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=pixels).logits, before, atol=1e-5)


def test_a_vit_keeps_its_layout(monkeypatch, models):
    """ViT's one convolution (the patch embedding) is not a convolutional network."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": False})
    model = models("vit").eval()
    engine.inference_precision(model, "auto", "cpu")
    assert all(p.is_contiguous() for p in model.parameters())


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
