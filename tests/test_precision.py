"""Precision end to end: a run, `sft.evaluate` and `sft.predict` say which precision ran and
why; where the CPU has AMX, the tiny model trains, evaluates and predicts in bf16 (auto) and
matches fp32 within bf16's rounding; saved weights are fp32 whichever ran. (Resuming across
precisions: test_resume.)"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from sft.publishing.card import model_card
from sft.runs.directory import RunDir
from sft.training.accelerator import cpu_bf16_units, cpu_name
from tests.conftest import FAST, run_cli, run_tiny_text

AMX = "amx_bf16" in cpu_bf16_units()
AUTO = "bf16" if AMX else "fp32"
needs_amx = pytest.mark.skipif(
    not AMX, reason="this CPU has no AMX: auto is fp32 here, and bf16 would be emulated"
)
TEXTS = ["the striker scored a late goal", "shares fell after the profit warning"]


def test_the_output_layer_computes_in_fp32_under_autocast(models):
    model = models("bert").eval()  # load_classifier: the head already computes in fp32
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    hidden = {}
    model.dropout.register_forward_hook(lambda m, args, out: hidden.update(x=out))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids).logits
    assert hidden["x"].dtype == torch.bfloat16  # the body ran in bf16...
    assert logits.dtype == torch.float32  # ...the head in fp32, on the body's output
    expected = torch.nn.functional.linear(hidden["x"].float(), *model.classifier.parameters())
    assert torch.equal(logits, expected)

    # A value of thousands (a year, with the target scale folded into the head) keeps its
    # decimals; computed in bf16 it would be a multiple of 8.
    with torch.no_grad():
        model.classifier.bias += 2016.37
        folded = model(input_ids=ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.allclose(model(input_ids=ids).logits, folded, atol=0.05)


def test_a_copy_of_the_head_computes_with_its_own_weights(models):
    """peft copies the head it trains (modules_to_save): the copy's fp32 forward is its own."""
    import copy

    model = models("bert")
    twin = copy.deepcopy(model.classifier)
    with torch.no_grad():
        twin.weight.zero_()
        twin.bias.fill_(1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = twin(torch.randn(2, model.config.hidden_size))
    assert out.dtype == torch.float32 and torch.equal(out, torch.ones(2, 3))


@pytest.mark.slow
def test_a_run_records_the_precision_that_ran_and_why(trained_text_run):
    run_dir = trained_text_run[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["precision"] == AUTO
    assert metrics["precision_reason"].startswith("auto: the CPU")
    assert cpu_name() in metrics["precision_reason"]
    assert (
        f"steps in {metrics['train_seconds']:.0f} s ({AUTO})" in (run_dir / "train.log").read_text()
    )
    card = model_card(RunDir(run_dir), "me/tiny")
    assert f"| precision | {AUTO} ({metrics['precision_reason']}) |" in card


@pytest.mark.slow
def test_saved_weights_are_fp32_whatever_ran(trained_text_run):
    with safe_open(trained_text_run[0] / "model" / "model.safetensors", "pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}  # noqa: SIM118
    assert dtypes == {"F32"}


@pytest.mark.slow
@needs_amx
def test_evaluate_follows_auto_and_can_be_told_fp32(tmp_path, trained_text_run):
    """auto: the model cast to bf16 (its output layer kept in fp32), scoring as fp32 does."""
    run_dir, corpus = trained_text_run
    reports = {}
    for choice in ("auto", "fp32"):
        out = tmp_path / choice
        result = run_cli(
            str(run_dir), f"data.path={corpus}", f"trainer.precision={choice}", "--output-dir",
            str(out), "--no-progress", cwd=tmp_path, module="sft.evaluate",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        reports[choice] = json.loads((out / "metrics.json").read_text())
    assert reports["auto"]["precision"] == "bf16" and reports["fp32"]["precision"] == "fp32"
    assert "amx_bf16" in reports["auto"]["precision_reason"]
    assert "weights cast to bf16" in reports["auto"]["precision_reason"]
    assert reports["auto"]["accuracy"] == pytest.approx(reports["fp32"]["accuracy"], abs=0.05)
    assert reports["auto"]["loss"] == pytest.approx(reports["fp32"]["loss"], rel=0.05)


@pytest.mark.slow
@needs_amx
def test_predict_in_bf16_scores_as_the_model_does_in_bf16(tmp_path, trained_text_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir = trained_text_run[0]
    rows = {}
    for choice in ("auto", "fp32"):
        out = tmp_path / f"{choice}.json"
        result = run_cli(
            str(run_dir), *TEXTS, "--precision", choice, "--output", str(out), "--no-progress",
            cwd=tmp_path, module="sft.predict",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"precision {'bf16 weights' if choice == 'auto' else 'fp32'} (" in result.stderr
        rows[choice] = json.loads(out.read_text())

    # The body's weights in bf16, the output layer's in fp32 on the body's output.
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        pooled = model.bert.to(torch.bfloat16)(**batch).pooler_output
        bf16 = model.classifier(pooled.float()).softmax(-1).max(-1).values
    assert [r["score"] for r in rows["auto"]] == pytest.approx(bf16.tolist(), abs=1e-3)
    for a, b in zip(rows["auto"], rows["fp32"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=0.02)  # bf16 keeps 8 bits of mantissa


@pytest.mark.slow
@needs_amx
def test_a_bf16_run_trains_as_well_as_fp32(tmp_path, trained_text_run, tiny_checkpoint):
    """The shared run trained in bf16 (auto); the same run in fp32 reaches the same accuracy."""
    run_dir, corpus = trained_text_run
    _, fp32_dir = run_tiny_text(tmp_path, tiny_checkpoint, corpus, *FAST, "trainer.precision=fp32")
    bf16_metrics = json.loads((run_dir / "metrics.json").read_text())
    fp32_metrics = json.loads((fp32_dir / "metrics.json").read_text())
    assert (bf16_metrics["precision"], fp32_metrics["precision"]) == ("bf16", "fp32")
    assert bf16_metrics["accuracy"] >= fp32_metrics["accuracy"] - 0.05


def test_a_depthwise_convolution_that_trains_computes_in_fp32_under_cpu_autocast(models):
    """oneDNN's bf16 backward of a depthwise convolution is slow: where one follows (gradients
    on), under CPU bf16 autocast, the convolution computes in fp32 on its bf16 input. Without
    gradients and outside autocast it is the plain convolution; the rest of the network stays
    in bf16, channels-last."""
    model = models("efficientnet")  # load_classifier: fast_convolutions
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convolutions)
    depthwise = [c for c in convolutions if c.groups > 1 and c.groups == c.in_channels]
    pointwise = next(c for c in convolutions if c.groups == 1 and c.in_channels > 3)
    conv = depthwise[0]
    x = torch.randn(2, conv.in_channels, 8, 8, dtype=torch.bfloat16)
    expected = torch.nn.Conv2d.forward(conv, x.float())  # outside autocast: fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
        with torch.no_grad():
            assert conv(x).dtype == torch.bfloat16
        assert pointwise(torch.randn(2, pointwise.in_channels, 8, 8)).dtype == torch.bfloat16
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert torch.equal(conv(x.float()), expected)

    # Its filter's gradient is the fp32 convolution's, on the bf16 input.
    out.sum().backward()
    weight = conv.weight.detach().clone().requires_grad_()
    args = conv.stride, conv.padding, conv.dilation, conv.groups
    torch.nn.functional.conv2d(x.float(), weight, conv.bias, *args).sum().backward()
    assert conv.weight.grad.abs().sum() > 0
    torch.testing.assert_close(conv.weight.grad, weight.grad, rtol=1e-6, atol=0)
