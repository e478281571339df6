"""`python -m sft.export <run> --onnx`: the ONNX model computes PyTorch's logits (checked here
again, on inputs of a batch size and length the export never saw), for text, image and audio."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_cli, run_process
from tests.test_audio import tiny_wav2vec2  # noqa: F401 (fixture)
from tests.test_image import tiny_vit  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def export(*args, cwd, process: bool = False) -> subprocess.CompletedProcess:
    """The command in this process, or (`process`) in its own, as a user starts it."""
    run = run_process if process else run_cli
    return run(*map(str, args), cwd=cwd, module="sft.export")


@pytest.fixture
def text_run(tmp_path, trained_text_run):
    """A copy of the shared finished run: this command writes into the run directory."""
    return Path(shutil.copytree(trained_text_run[0], tmp_path / "run"))


def test_text_run_exports_to_onnx_with_pytorchs_logits(tmp_path, text_run):
    import onnxruntime
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result = export(text_run, "--onnx", cwd=tmp_path, process=True)  # `python -m sft.export`, once
    assert result.returncode == 0, result.stderr[-3000:]
    out = text_run / "onnx"
    report = json.loads((out / "export.json").read_text())
    assert report["max_abs_difference"] <= 1e-4
    assert {"model.onnx", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}

    texts = ["one", "a somewhat longer text about markets and goals", "two words", "x y z w"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    onnx_logits = session.run(None, {n: batch[n].numpy() for n in names})[0]
    model = AutoModelForSequenceClassification.from_pretrained(text_run / "model").eval()
    with torch.no_grad():
        torch_logits = model(**batch).logits.numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)


def test_int8_export_passes_its_accuracy_gate_and_loads_as_the_fp32_one(tmp_path, text_run):
    import onnxruntime
    from transformers import AutoTokenizer

    result = export(text_run, "--onnx", "--quantize", "int8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = text_run / "onnx"
    gate = json.loads((out / "export.json").read_text())["int8"]
    assert gate["kept"] and gate["metric"] == "f1" and gate["max_drop"] == 0.01
    assert gate["drop"] == pytest.approx(gate["fp32"]["validation"] - gate["int8"]["validation"])
    assert gate["drop"] <= 0.01
    assert all(gate[k]["bytes"] > 0 and gate[k]["examples_per_s"] > 0 for k in ("fp32", "int8"))
    # The validation score of the fp32 ONNX model is the run's own (its best checkpoint's).
    metrics = json.loads((text_run / "metrics.json").read_text())
    assert gate["fp32"]["validation"] == pytest.approx(metrics["validation"]["f1"], abs=1e-6)
    tokenizer = AutoTokenizer.from_pretrained(out)  # the folder loads as the fp32 one does
    batch = tokenizer(["vote law senate", "match goal"], padding=True, return_tensors="np")
    session = onnxruntime.InferenceSession(str(out / "model.int8.onnx"))
    logits = session.run(None, {i.name: batch[i.name] for i in session.get_inputs()})[0]
    assert logits.shape == (2, 3)


def test_an_int8_model_that_fails_the_gate_is_not_kept(tmp_path, text_run):
    """Forced: --max-drop -1 asks int8 to gain a whole point of F1 over fp32."""
    result = export(text_run, "--onnx", "--quantize", "int8", "--max-drop", "-1", cwd=tmp_path)
    assert result.returncode == 2
    assert "more than --max-drop -1.0: it was not kept" in result.stderr
    out = text_run / "onnx"
    assert not (out / "model.int8.onnx").exists() and not list(out.glob("*partial*"))
    gate = json.loads((out / "export.json").read_text())["int8"]
    assert not gate["kept"] and "int8" in gate  # the numbers it was refused on


def test_int8_needs_the_runs_validation_split(tmp_path, text_run):
    result = export(text_run / "model", "--onnx", "--quantize", "int8", cwd=tmp_path)
    assert result.returncode == 2 and "needs a run directory" in result.stderr
    assert not (tmp_path / "onnx").exists()  # refused before any work


@pytest.mark.parametrize("fixture", ["tiny_vit", "tiny_wav2vec2"])
def test_image_and_audio_models_export(tmp_path, request, fixture):
    model_dir = request.getfixturevalue(fixture)
    out = tmp_path / "onnx"
    result = export(model_dir, "--onnx", "--output", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "export.json").read_text())
    assert report["max_abs_difference"] <= 1e-4
    assert report["inputs"][0] in ("pixel_values", "input_values")


def test_a_directory_without_a_model_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    result = export(tmp_path / "empty", "--onnx", cwd=tmp_path)
    assert result.returncode == 2
    assert "is neither a run directory" in result.stderr
