"""Long texts as windows (data.long_text=chunks, sft/data/windows.py): windows cut with their
overlap and cap, every window carrying its own text's targets and number, split by split; the
windows' logits pooled into one output per text; and end to end on texts whose label is only
in their last window: truncation cannot see it, windows can, and training's scores, sft.evaluate
(run and bare model), sft.predict and report.html all count texts, not windows."""

from __future__ import annotations

import itertools
import json
import random

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from sft.data.splits import LABELS, Splits
from sft.data.windows import DOCUMENT, cut, pool
from sft.modalities.text import TextInputs
from sft.publishing.card import model_card
from sft.runs.directory import RunDir
from tests.conftest import CLASS_WORDS, FILLER, run_cli
from tests.helpers.browser import table_rows


def test_windows_overlap_by_the_stride_and_stop_at_the_cap(tiny_checkpoint):
    tokenizer = TextInputs(str(tiny_checkpoint), "text", 16).processor
    long, short = " ".join(FILLER * 5), "vote law"
    ids = tokenizer(long, add_special_tokens=False)["input_ids"]
    assert len(ids) == 50  # a word a token
    windows, text_of = cut(tokenizer, [long, short], max_length=16, stride=4, max_chunks=8)
    body = [w[1:-1] for w in windows["input_ids"]]  # without [CLS] and [SEP]
    # 14 tokens a window, 4 of them the previous window's: 10 new ones each, 14 + 4 * 10 >= 50
    assert text_of == [0] * 5 + [1]
    assert all(len(b) == 14 for b in body[:4]) and body[0] == ids[:14]
    for before, after in itertools.pairwise(body[:5]):
        assert after[:4] == before[-4:]  # consecutive windows share `stride` tokens
    assert body[4][-1] == ids[-1]  # the last window reaches the end
    capped, text_of = cut(tokenizer, [long, short], max_length=16, stride=4, max_chunks=2)
    assert text_of == [0, 0, 1] and capped["input_ids"][:2] == windows["input_ids"][:2]
    _, text_of = cut(tokenizer, [long], max_length=16, stride=None, max_chunks=8)
    assert len(text_of) == 5  # stride None: a quarter of max_length (4)


def test_pooling_gives_one_row_per_text_in_text_order():
    logits = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0], [2.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # multi-label
    documents = torch.tensor([7, 7, 3, 7])  # as gathered: in no particular order
    mean, first = pool(logits, targets, documents, "mean")
    assert mean.flatten().tolist() == pytest.approx([0.0, 5.0, 2.0, 4 / 3])
    assert first.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    biggest, _ = pool(logits, targets, documents, "max")
    assert biggest.tolist() == [[0.0, 5.0], [3.0, 2.0]]


@pytest.mark.parametrize("targets", [[0, 2], [[1.0, 0.0], [0.0, 1.0]], [[0.5], [2.5]]])
def test_every_window_carries_its_own_texts_targets_split_by_split(tiny_checkpoint, targets):
    """Single-label ids, multi-label rows and regression values alike, in their own type."""
    inputs = TextInputs(str(tiny_checkpoint), "text", 16, chunks=(4, 8))
    texts = [" ".join(FILLER * 3), "vote law"]

    def split(rows):
        ds = datasets.Dataset.from_dict({"text": texts, LABELS: rows})
        return ds.cast_column(LABELS, ds.features[LABELS])

    encoded = inputs.encode(Splits(split(targets), split(targets[::-1]), None, ["a", "b"]))
    for ds, rows in ((encoded.train, targets), (encoded.validation, targets[::-1])):
        numbers = ds[DOCUMENT]
        assert sorted(set(numbers)) == [0, 1] and numbers.count(0) == 3  # 30 tokens: 3 windows
        assert [ds[LABELS][i] for i in range(len(ds))] == [rows[n] for n in numbers]
        assert ds.features[LABELS] == split(rows).features[LABELS]


def last_word_rows(n: int, seed: int) -> list[dict]:
    """Texts of 40 filler words and then three of their class's: at 16 tokens a window, the
    label is in the last window only."""
    rng = random.Random(seed)
    rows = [
        {"text": " ".join([rng.choice(FILLER) for _ in range(40)] + rng.sample(words, 3)),
         "label": label}
        for label, words in CLASS_WORDS.items() for _ in range(n)
    ]  # fmt: skip
    rng.shuffle(rows)
    return rows


@pytest.fixture(scope="module")
def long_texts(tmp_path_factory, tiny_checkpoint):
    """(corpus, {long_text: run directory}), each trained once."""
    base = tmp_path_factory.mktemp("long")
    corpus = base / "corpus"
    corpus.mkdir()
    pd.DataFrame(last_word_rows(30, 1)).to_csv(corpus / "train.csv", index=False)
    pd.DataFrame(last_word_rows(10, 2)).to_csv(corpus / "test.csv", index=False)
    runs = {}
    settings = {
        "truncate": [],
        "chunks": ["data.stride=4"],
        "chunks_cached": ["data.stride=4", "finetune=head_only"],
    }
    for mode, extra in settings.items():
        long_text = "chunks" if mode.startswith("chunks") else "truncate"
        result = run_cli(
            "recipe=bert_news", f"model.checkpoint={tiny_checkpoint}", f"data.path={corpus}",
            f"output_dir={base / mode}", f"data.long_text={long_text}", "data.max_length=16",
            "trainer.epochs=10", "trainer.batch_size=16", "optimizer.lr=5e-3",
            "trainer.progress=false", *extra, cwd=base,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        runs[mode] = base / mode
    return corpus, runs


def metrics_of(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.slow
def test_windows_see_the_label_that_truncation_cuts_off(long_texts):
    _, runs = long_texts
    truncated, windowed = metrics_of(runs["truncate"]), metrics_of(runs["chunks"])
    assert truncated["accuracy"] <= 0.5  # three classes: about chance
    assert windowed["accuracy"] >= truncated["accuracy"] + 0.25
    assert windowed["num_examples"] == 30  # texts, not their 120 windows
    config = json.loads((runs["chunks"] / "model" / "config.json").read_text())
    assert config["long_text"] == {"max_length": 16, "stride": 4, "max_chunks": 8, "pool": "mean"}
    card = model_card(RunDir(runs["chunks"]), "me/long")
    assert "windows' logits mean-pooled into one prediction per text" in card
    assert "| `data.stride` | `4` |" in card
    assert "data.stride" not in model_card(RunDir(runs["truncate"]), "me/short")
    cached = metrics_of(runs["chunks_cached"])  # windows through the frozen-feature cache
    assert cached["feature_cache_seconds"] >= 0 and cached["num_examples"] == 30


@pytest.mark.slow
def test_evaluate_predict_and_the_report_count_texts(tmp_path, long_texts):
    corpus, runs = long_texts
    run = runs["chunks"]
    metrics = metrics_of(run)
    for source in (run, run / "model"):  # the run's config, or the model's own record of it
        out = tmp_path / source.name
        result = run_cli(str(source), f"data.path={corpus}", "--output-dir", str(out),
                         "--no-progress", cwd=tmp_path, module="sft.evaluate")  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        evaluated = json.loads((out / "metrics.json").read_text())
        assert evaluated["num_examples"] == 30
        assert evaluated["accuracy"] == pytest.approx(metrics["accuracy"])

    test = pd.read_csv(corpus / "test.csv")
    predictions = tmp_path / "predictions.json"
    result = run_cli(str(run), str(corpus / "test.csv"), "--output", str(predictions),
                     "--no-progress", cwd=tmp_path, module="sft.predict")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(predictions.read_text())
    assert len(rows) == len(test)
    accuracy = np.mean([r["label"] == label for r, label in zip(rows, test["label"], strict=True)])
    assert accuracy == pytest.approx(metrics["accuracy"])

    mistakes = table_rows(run / "report.html", "mistakes")
    assert len(mistakes) == round(len(test) * (1 - metrics["accuracy"]))
    truth = dict(zip(test["text"], test["label"], strict=True))
    assert all(truth[text] == true != predicted for _, text, true, predicted, _ in mistakes)
