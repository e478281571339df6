"""`python -m sft.predict`: text strings, text files, directories, tables, image and audio files,
from a run directory, a model directory or (in test_push) a hub id; printed or written as
CSV / JSON; scores equal the model's own softmax; bad inputs named."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import torch

from tests.conftest import run_cli
from tests.test_audio import audio_tree, tiny_wav2vec2  # noqa: F401 (fixture)
from tests.test_image import image_tree, tiny_vit  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

TEXTS = ["the striker scored a late goal", "shares fell after the profit warning"]


@pytest.fixture
def text_run(trained_text_run):
    return trained_text_run[0]  # read only here


def predict(*args, cwd) -> subprocess.CompletedProcess:
    return run_cli(*map(str, args), "--no-progress", cwd=cwd, module="sft.predict")


def test_texts_get_the_models_own_top_labels_and_scores(tmp_path, text_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "predictions.json"
    # fp32, as the model below: test_precision compares bf16 (auto on a CPU with AMX)
    args = (*TEXTS, "--top-k", "2", "--output", out, "--precision", "fp32")
    result = predict(text_run, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())

    model = AutoModelForSequenceClassification.from_pretrained(text_run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(text_run / "model")
    with torch.no_grad():
        probs = model(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits.softmax(-1)
    for row, text, p in zip(rows, TEXTS, probs, strict=True):
        top = p.topk(2)
        assert row["input"] == text
        assert [t["label"] for t in row["top_k"]] == [
            model.config.id2label[int(i)] for i in top.indices
        ]
        assert [t["score"] for t in row["top_k"]] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert (row["label"], row["score"]) == (row["top_k"][0]["label"], row["top_k"][0]["score"])


def test_text_files_directories_and_tables(tmp_path, text_run):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, text in enumerate(TEXTS):
        (docs / f"{i}.txt").write_text(text)
    table = tmp_path / "inputs.csv"
    pd.DataFrame({"body": TEXTS * 3}).to_csv(table, index=False)
    out = tmp_path / "predictions.csv"
    args = (text_run / "model", docs, docs / "0.txt", table, "--column", "body", "--output", out)
    result = predict(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = pd.read_csv(out)
    assert len(rows) == 2 + 1 + 6
    assert rows["input"].iloc[0].endswith("0.txt")
    assert rows["label"].iloc[0] == rows["label"].iloc[2]  # the same file, the same answer
    assert all(len(json.loads(t)) == 3 for t in rows["top_k"])


def test_printed_table_has_a_row_per_input(tmp_path, text_run):
    result = predict(text_run, *TEXTS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["input", "label", "score"]
    assert [line[: len(t)] for line, t in zip(lines[1:], TEXTS, strict=True)] == TEXTS


def test_a_table_without_the_column_is_named(tmp_path, text_run):
    table = tmp_path / "inputs.csv"
    pd.DataFrame({"body": TEXTS}).to_csv(table, index=False)
    result = predict(text_run, table, cwd=tmp_path)
    assert result.returncode == 2
    assert f"{table} has no column 'text' (columns: body); name the input column with --column" in (
        result.stderr
    )


def test_images_from_files_and_directories(tmp_path, tiny_vit):  # noqa: F811
    images = image_tree(tmp_path / "images", per_class=2)
    out = tmp_path / "predictions.json"
    result = predict(tiny_vit, images, "--output", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 6  # every colour mode and format decoded
    assert {r["label"] for r in rows} <= {"LABEL_0", "LABEL_1"}


def test_audio_at_any_rate_from_files(tmp_path, tiny_wav2vec2):  # noqa: F811
    clips = audio_tree(tmp_path / "audio", per_class=2)
    files = sorted(clips.rglob("*.*"))
    out = tmp_path / "predictions.json"
    result = predict(tiny_wav2vec2, *files, "--output", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(json.loads(out.read_text())) == len(files) == 6


def test_a_missing_image_file_is_named(tmp_path, tiny_vit):  # noqa: F811
    result = predict(tiny_vit, tmp_path / "nope.png", cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.png does not exist; give image files or directories" in result.stderr


def test_inputs_reach_the_model_in_batches(text_run):
    from sft.predict import classify, load_pipeline
    from sft.training.model import resolve

    model = resolve(str(text_run))
    classifier = load_pipeline(model)
    sizes: list[int] = []
    classifier.model.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    items = [(t, t) for t in TEXTS * 5]
    rows = classify(classifier, model.modality, items, top_k=1, batch_size=4, progress=False)
    assert len(rows) == 10
    assert sizes == [4, 4, 2]  # not ten forward passes of one


def test_texts_are_batched_by_length_and_rows_keep_the_input_order(text_run):
    from sft.predict import classify, load_pipeline
    from sft.training.model import resolve

    model = resolve(str(text_run))
    classifier = load_pipeline(model)
    widths: list[int] = []
    classifier.model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    texts = [" ".join(["goal"] * n) for n in (1, 30, 2, 29, 3, 28)]  # short, long, short, ...
    items = [(t, t) for t in texts]
    rows = classify(classifier, model.modality, items, top_k=1, batch_size=3, progress=False)
    assert widths == [32, 5]  # the three longest together (in input order: 32, then 31)
    assert [r["input"] for r in rows] == texts
    alone = [classifier(t)[0]["label"] for t in texts]
    assert [r["label"] for r in rows] == alone


def test_a_missing_file_is_named_not_classified_as_text(tmp_path, text_run):
    result = predict(text_run, "notes/missing.txt", cwd=tmp_path)
    assert result.returncode == 2
    assert "notes/missing.txt does not exist" in result.stderr.strip().splitlines()[-1]
