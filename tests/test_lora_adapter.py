"""`finetune=lora finetune.merge=false`: the run's model/ keeps the LoRA adapter apart, beside the
model it adapts, and loads as it is with `pipeline()`, `sft.predict`, `sft.evaluate` and
`sft.export`, computing what the same adapter merged onto its base checkpoint computes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import make_rows, run_cli, run_tiny_text
from tests.test_push import TOKEN, hub, hub_env, push  # noqa: F401 (hub: a fixture)

pytestmark = pytest.mark.slow

TEXTS = ["goal match team today", "vote law party", "chip robot code news", "the big week"]


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, tiny_checkpoint) -> tuple[Path, Path]:
    """(run directory, corpus) of a few LoRA steps saved unmerged."""
    base = tmp_path_factory.mktemp("lora-adapter")
    corpus = base / "corpus"
    corpus.mkdir()
    pd.DataFrame(make_rows(10, seed=1)).to_csv(corpus / "train.csv", index=False)
    pd.DataFrame(make_rows(4, seed=2)).to_csv(corpus / "test.csv", index=False)
    _, run_dir = run_tiny_text(
        base,
        tiny_checkpoint,
        corpus,
        "finetune=lora",
        "finetune.merge=false",
        "finetune.r=4",
        "optimizer.lr=1e-2",
        "trainer.max_steps=6",
        "trainer.batch_size=8",
        "data.max_length=32",
        "trainer.progress=false",
    )
    return run_dir, corpus


def merged_reference(run_dir: Path, checkpoint: Path):
    """The run's adapter put on its base checkpoint by peft and merged: what the saved model
    must compute."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    labels = json.loads((run_dir / "metrics.json").read_text())["labels"]
    base = AutoModelForSequenceClassification.from_pretrained(
        checkpoint, num_labels=len(labels), ignore_mismatched_sizes=True
    )
    return PeftModel.from_pretrained(base, run_dir / "model").merge_and_unload().eval(), labels


def logits_of(model, texts: list[str], model_dir: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(model_dir)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def test_model_dir_holds_the_adapter_apart_with_its_base(adapter_run, tiny_checkpoint):
    model_dir = adapter_run[0] / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json"} <= names
    adapter = json.loads((model_dir / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_checkpoint)
    config = json.loads((model_dir / "config.json").read_text())
    labels = json.loads((adapter_run[0] / "metrics.json").read_text())["labels"]
    assert list(config["id2label"].values()) == labels


def test_pipeline_loads_the_model_dir_with_labels_head_and_lora_in_effect(
    adapter_run, tiny_checkpoint
):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, pipeline

    run_dir = adapter_run[0]
    reference, labels = merged_reference(run_dir, tiny_checkpoint)
    classify = pipeline("text-classification", model=str(run_dir / "model"))
    assert getattr(classify.model, "_hf_peft_config_loaded", False)  # the adapter, not merged
    expected = torch.softmax(logits_of(reference, TEXTS, run_dir / "model"), -1)
    for scores, probs in zip(classify(TEXTS, top_k=None), expected, strict=True):
        got = {s["label"]: s["score"] for s in scores}
        assert got == pytest.approx(dict(zip(labels, probs.tolist(), strict=True)), abs=1e-6)
    # The LoRA weights matter: the saved weights alone (the body and the trained head, no
    # LoRA) compute something else.
    without = AutoModelForSequenceClassification.from_config(classify.model.config).eval()
    without.load_state_dict(load_file(run_dir / "model" / "model.safetensors"))
    loaded = logits_of(classify.model, TEXTS, run_dir / "model")
    difference = (loaded - logits_of(without, TEXTS, run_dir / "model")).abs().max()
    assert difference > 1e-3 * loaded.abs().max()  # relative: calibration may shrink the logits


def test_predict_evaluate_and_export_the_adapter_run(tmp_path, adapter_run, tiny_checkpoint):
    import onnxruntime
    from transformers import AutoTokenizer

    run_dir = Path(shutil.copytree(adapter_run[0], tmp_path / "run"))  # the commands write here
    corpus = adapter_run[1]
    reference, labels = merged_reference(run_dir, tiny_checkpoint)
    expected = logits_of(reference, TEXTS, run_dir / "model")

    out = tmp_path / "predictions.json"
    result = run_cli(
        str(run_dir), *TEXTS, "--output", str(out), "--no-progress", cwd=tmp_path,
        module="sft.predict",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["label"] for r in rows] == [labels[i] for i in expected.argmax(-1).tolist()]

    result = run_cli(
        str(run_dir), f"data.path={corpus}", "--no-progress", cwd=tmp_path, module="sft.evaluate"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "evaluations" / "corpus-test" / "metrics.json").read_text())
    assert report["accuracy"] == pytest.approx(
        json.loads((run_dir / "metrics.json").read_text())["accuracy"]
    )

    result = run_cli(str(run_dir), "--onnx", cwd=tmp_path, module="sft.export")
    assert result.returncode == 0, result.stderr[-3000:]
    batch = AutoTokenizer.from_pretrained(run_dir / "onnx")(
        TEXTS, padding=True, return_tensors="np"
    )
    session = onnxruntime.InferenceSession(str(run_dir / "onnx" / "model.onnx"))
    onnx_logits = session.run(None, {i.name: batch[i.name] for i in session.get_inputs()})[0]
    torch.testing.assert_close(torch.from_numpy(onnx_logits), expected, rtol=1e-4, atol=1e-4)


def test_model_card_of_an_adapter_run_shows_code_that_loads_it_from_the_hub(
    tmp_path, adapter_run, tiny_checkpoint, request
):
    import subprocess
    import sys

    run_dir, server = adapter_run[0], request.getfixturevalue("hub")
    env = hub_env(server, tmp_path, HF_TOKEN=TOKEN)
    result = push(run_dir, "--repo-id", "me/adapter", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    card = server.repos["me/adapter"].files["README.md"].decode()
    code = card.split("```python\n")[1].split("```")[0]
    assert 'snapshot_download("me/adapter")' in code
    shown = f"{code}print(json.dumps(classify({TEXTS!r}, top_k=None)))\n"
    loaded = subprocess.run(
        [sys.executable, "-c", f"import json\n{shown}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    reference, labels = merged_reference(run_dir, tiny_checkpoint)
    expected = torch.softmax(logits_of(reference, TEXTS, run_dir / "model"), -1)
    outputs = json.loads(loaded.stdout.strip().splitlines()[-1])
    for scores, probs in zip(outputs, expected, strict=True):
        got = {s["label"]: s["score"] for s in scores}
        assert got == pytest.approx(dict(zip(labels, probs.tolist(), strict=True)), abs=1e-6)
