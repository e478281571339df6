"""report.html, the error-analysis page: what each problem type calls a mistake and how it ranks
them, the per-label table worst first, a page that shows the user's text as text; and, opened in
headless Chromium, the page a finished text run writes and `sft.report` on new data (images and
speech: tests/test_problems_media.py)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from sft.modalities import get
from sft.problems import PROBLEMS
from sft.reporting.page import Evaluated, write_report
from sft.training.state import Evaluation
from tests.conftest import make_rows, run_cli
from tests.helpers.browser import needs_chromium, render, screenshot

LABELS = ["cat", "dog", "fox"]


def single_label_outputs() -> Evaluation:
    logits = np.log(
        np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.05, 0.9, 0.05]])
    )
    predictions, references = logits.argmax(-1), np.array([0, 0, 1, 2])  # rows 1-3 wrong
    return Evaluation(0.0, predictions, references, {}, logits)


def test_single_label_mistakes_are_the_wrong_predictions_surest_first():
    found = PROBLEMS["single_label"].mistakes(single_label_outputs(), LABELS)
    assert [(m.row, m.truth, m.predicted) for m in found] == [
        (3, "fox", "dog"),
        (1, "cat", "dog"),
        (2, "dog", "fox"),
    ]
    assert [m.score for m in found] == pytest.approx([0.9, 0.7, 0.6])  # the softmax


def test_single_label_table_puts_the_worst_class_first_with_what_it_is_taken_for():
    problem = PROBLEMS["single_label"]
    references = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    predictions = np.array([0, 0, 0, 1, 1, 1, 1, 2])  # fox is taken for dog twice
    header, rows = problem.worst_first(problem.report(predictions, references, LABELS))
    assert header[-1] == "most confused with"
    assert [row[0] for row in rows] == ["fox", "dog", "cat"]
    assert rows[0][-1] == "dog (2)" and rows[1][-1] == rows[2][-1] == ""


def test_multi_label_mistakes_rank_by_the_surest_wrong_decision():
    problem = PROBLEMS["multi_label"]
    p = np.array([[0.9, 0.1, 0.2], [0.6, 0.8, 0.3], [0.1, 0.1, 0.95]])
    references = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 1]], dtype=np.float32)
    logits = np.log(p / (1 - p))
    evaluation = Evaluation(0.0, (p > 0.5).astype(np.int64), references, {}, logits)
    found = problem.mistakes(evaluation, LABELS)
    # Row 1: dog given at 0.8 (wrong, 0.8) and fox missed at 0.3 (wrong, 0.7): 0.8 counts.
    assert [(m.row, m.truth, m.predicted) for m in found] == [(1, "cat, fox", "cat, dog")]
    assert found[0].score == pytest.approx(0.8)


def test_regression_lists_every_example_by_its_residual():
    problem = PROBLEMS["regression"]
    predictions = np.array([[1.0], [5.0], [2.5]])
    references = np.array([[1.5], [2.0], [2.5]])
    found = problem.mistakes(Evaluation(0.0, predictions, references, {}), ["price"])
    assert [(m.row, m.truth, m.predicted) for m in found] == [
        (1, "2", "5"),
        (0, "1.5", "1"),
        (2, "2.5", "2.5"),
    ]
    assert [m.score for m in found] == pytest.approx([3.0, 0.5, 0.0])


def test_the_page_shows_the_users_text_as_text_and_the_worst_first(tmp_path):
    texts = ["fine", "<script>alert(1)</script> & more", "a very long text " * 60, "ok"]
    examples = datasets.Dataset.from_dict({"text": texts})
    evaluated = Evaluated(single_label_outputs(), examples, [0, 1, 2, 3], "text")
    problem = PROBLEMS["single_label"]
    evaluation = evaluated.evaluation
    result = problem.report(evaluation.predictions, evaluation.references, LABELS)
    page = write_report(
        tmp_path / "report.html", result, evaluated, get("text-classification"), problem, [],
        "a test",
    )  # fmt: skip
    html = page.read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html
    assert "a very long text" in html and "a very long text " * 60 not in html  # an excerpt
    assert html.index("&lt;script&gt;") < html.index("a very long text")  # 0.9 before 0.6
    assert "3 of 4 examples" in html
    assert not list(tmp_path.glob("*.partial"))


@pytest.fixture
def text_run(tmp_path, trained_text_run):
    """A copy of the shared finished run: sft.report writes into the run directory."""
    return Path(shutil.copytree(trained_text_run[0], tmp_path / "run"))


@pytest.mark.slow
@needs_chromium
def test_a_finished_run_and_sft_report_on_new_data_render_in_chromium(tmp_path, text_run):
    """The run's own page renders whole; `sft.report` on the same texts with every label
    moved on by one lists each of them as a mistake, its text shown, and leaves the run's page."""
    shown = render(text_run / "report.html", tmp_path / "browser")
    assert shown["sections"] == ["scores", "training", "labels", "calibration", "mistakes"]
    assert shown["images"] and all(i["decoded"] and i["shown"] for i in shown["images"])
    before = (text_run / "report.html").read_bytes()

    rows = make_rows(3, seed=9)
    moved = {"politics": "sport", "sport": "tech", "tech": "politics"}
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    pd.DataFrame([{**r, "label": moved[r["label"]]} for r in rows]).to_csv(
        wrong / "test.csv", index=False
    )
    result = run_cli(str(text_run), f"data.path={wrong}", "--no-progress", cwd=tmp_path,
                     module="sft.report")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    page = text_run / "evaluations" / "wrong-test" / "report.html"
    assert result.stdout.strip() == str(page)
    assert (text_run / "report.html").read_bytes() == before
    shown = render(page, tmp_path / "browser")
    accuracy = pd.read_json(page.parent / "metrics.json", typ="series")["accuracy"]
    assert len(shown["mistakes"]) == round(len(rows) * (1 - accuracy)) > 0
    texts = {r["text"]: r for r in rows}
    for _, text, truth, predicted, probability in shown["mistakes"]:
        assert moved[texts[text]["label"]] == truth != predicted
        assert 0 < float(probability) <= 1
    screenshot(page, tmp_path / "shot.png")
    assert (tmp_path / "shot.png").stat().st_size > 10_000


@pytest.mark.slow
def test_sft_report_rewrites_a_runs_page_with_the_same_mistakes(tmp_path, text_run):
    """`sft.report RUN_DIR` evaluates the saved model on the run's own final split again: the
    page is the one training wrote (its time of writing aside)."""

    def unstamped(page: Path) -> str:
        return re.sub(r"written [\d-]+ [\d:]+", "", page.read_text())

    trained = unstamped(text_run / "report.html")
    (text_run / "report.html").unlink()
    result = run_cli(str(text_run), "--no-progress", cwd=tmp_path, module="sft.report")
    assert result.returncode == 0, result.stderr[-3000:]
    assert unstamped(text_run / "report.html") == trained


def test_sft_report_names_what_it_needs(tmp_path):
    result = run_cli(str(tmp_path), cwd=tmp_path, module="sft.report")
    assert result.returncode == 2
    assert "not a run directory" in result.stderr and "data.path=" in result.stderr
    result = run_cli(str(tmp_path), "data.nope=1", cwd=tmp_path, module="sft.report")
    assert result.returncode == 2 and "data.nope" in result.stderr


def test_the_per_label_plot_of_many_labels_shows_the_worst_thirty(tmp_path):
    from PIL import Image

    from sft.problems.plots import plot_per_label

    scores = {f"tag{i}": {"precision": 0.5, "recall": 0.5, "f1": i / 111, "support": 3}
              for i in range(111)}  # fmt: skip
    few = plot_per_label(dict(list(scores.items())[:30]), "30 labels", tmp_path / "few.png")
    many = plot_per_label(scores, "111 labels", tmp_path / "many.png")
    assert Image.open(many).size == Image.open(few).size  # 30 rows either way, not 111
