"""Calibrated probabilities (sft/problems/calibration.py): the temperature fitted on validation
undoes a known over-confidence, lowers ECE and NLL without changing any prediction, and is
folded into the saved output layer, so the saved model itself gives the calibrated scores.
Regression's counterpart: split-conformal intervals from the validation residuals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sft.problems import PROBLEMS, calibration
from sft.training.state import Evaluation
from tests.conftest import FAST, make_rows, run_cli, run_tiny_text


def overconfident(n: int = 4000, classes: int = 4, sharpen: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(z), and the logits a model `sharpen` times too sure gives."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, classes))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return z * sharpen, labels


def evaluation_of(logits, labels) -> Evaluation:
    problem = PROBLEMS["single_label"]
    import torch

    predictions = problem.predict(torch.as_tensor(logits))
    return Evaluation(0.0, predictions, labels, {}, logits)


def test_the_fitted_temperature_undoes_a_known_overconfidence():
    logits, labels = overconfident()
    single = PROBLEMS["single_label"]
    calibrated, temperature = single.calibrated(evaluation_of(logits, labels))
    assert temperature == pytest.approx(3.0, rel=0.1)
    before, after = calibrated.calibration["before"], calibrated.calibration["after"]
    assert after["ece"] < before["ece"] / 3 and after["nll"] < before["nll"]
    assert after["brier"] < before["brier"]
    assert (calibrated.predictions == evaluation_of(logits, labels).predictions).all()


def test_multi_label_calibration_lowers_nll_and_keeps_every_ranking():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, size=(3000, 5))
    labels = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.float32)
    multi = PROBLEMS["multi_label"]
    calibrated, temperature = multi.calibrated(Evaluation(0.0, None, labels, {}, z * 2.5))
    assert temperature == pytest.approx(2.5, rel=0.1)
    assert calibrated.calibration["after"]["nll"] < calibrated.calibration["before"]["nll"]
    assert (np.argsort(calibrated.logits, 1) == np.argsort(z, 1)).all()


def test_regression_interval_is_the_conformal_quantile_of_validation_residuals():
    regression = PROBLEMS["regression"]
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(999, 2))
    noise = rng.normal(size=(999, 2)) * [1.0, 3.0]
    tuned = regression.interval(Evaluation(0.0, truth + noise, truth, {}))
    assert tuned["interval_coverage"] == 0.9
    # (999 + 1) * 0.9 = 900: the 900th smallest |residual| of each target
    expected = np.sort(np.abs(noise), axis=0)[899]
    assert tuned["interval_half_width"] == pytest.approx(expected.tolist())
    assert expected[1] / expected[0] == pytest.approx(3.0, rel=0.15)  # ~1.645 sigma each

    # On new examples of the same kind the interval holds about 90% of the targets.
    fresh_truth = rng.normal(size=(5000, 2))
    fresh = Evaluation(0.0, fresh_truth + rng.normal(size=(5000, 2)) * [1.0, 3.0], fresh_truth, {})
    report = regression.final_report(fresh, fresh, ["a", "b"], "test", tuned)
    assert report["interval_covered"] == pytest.approx(0.9, abs=0.015)
    assert "90% interval, ± " in regression.describes(report)

    from types import SimpleNamespace

    Config = SimpleNamespace(id2label={0: "a", 1: "b"}, **tuned)
    row = regression.prediction([{"label": "a", "score": 1.0}, {"label": "b", "score": 2.0}],
                                Config, 1)  # fmt: skip
    assert row["b_low"] == pytest.approx(2.0 - expected[1])
    assert row["a_high"] == pytest.approx(1.0 + expected[0])


def test_too_few_validation_examples_give_no_interval():
    evaluation = Evaluation(0.0, np.zeros((8, 1)), np.ones((8, 1)), {})
    assert PROBLEMS["regression"].interval(evaluation) == {}  # 9 * 0.9 = 8.1: the 9th of 8


def test_ece_of_known_bins():
    # 10 predictions at 0.9 of which 6 right, 10 at 0.3 of which 3 right: |0.6-0.9|/2 + 0
    confidence = np.r_[np.full(10, 0.9), np.full(10, 0.3)]
    correct = np.r_[np.ones(6), np.zeros(4), np.ones(3), np.zeros(7)]
    assert calibration.ece(confidence, correct) == pytest.approx(0.15)
    bins = calibration.reliability(confidence, correct)
    assert [(round(c, 2), round(a, 2), n) for c, a, n in bins] == [(0.3, 0.3, 10), (0.9, 0.6, 10)]


def test_a_perfectly_separated_validation_keeps_the_temperature_at_one(caplog):
    labels = np.arange(40) % 4
    logits = np.eye(4)[labels] * 5.0  # every prediction right and sure
    calibrated, temperature = PROBLEMS["single_label"].calibrated(evaluation_of(logits, labels))
    assert temperature == 1.0 and (calibrated.logits == logits).all()
    assert "validation is separated perfectly; temperature kept at 1" in caplog.text


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory, tiny_checkpoint):
    """A run on the keyword corpus with a fifth of its labels flipped: validation has mistakes
    to calibrate on, as real data does. (run directory, corpus)."""
    base = tmp_path_factory.mktemp("noisy")
    corpus = base / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    for split, (n, seed) in {"train": (40, 1), "test": (15, 2)}.items():
        rows = pd.DataFrame(make_rows(n, seed=seed))
        flip = rng.random(len(rows)) < 0.2
        rows.loc[flip, "label"] = rng.permutation(rows.loc[flip, "label"].to_numpy())
        rows.to_csv(corpus / f"{split}.csv", index=False)
    return run_tiny_text(base, tiny_checkpoint, corpus, *FAST, "trainer.epochs=4")[1], corpus


@pytest.mark.slow
def test_the_saved_model_gives_the_calibrated_scores(tmp_path, noisy_run):
    run_dir, corpus = noisy_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    temperature = metrics["calibration_temperature"]
    assert temperature != 1.0
    saved = json.loads((run_dir / "model" / "config.json").read_text())
    assert saved["calibration_temperature"] == temperature
    validation = metrics["calibration"]["validation"]
    assert validation["after"]["nll"] < validation["before"]["nll"]  # fitted there
    test = metrics["calibration"]["test"]
    assert test["after"]["nll"] == pytest.approx(metrics["loss"], rel=1e-4, abs=1e-6)
    # The saved model, evaluated afresh: its loss is the calibrated NLL, its accuracy the run's.
    out = tmp_path / "evaluated"
    again = run_cli(str(run_dir), f"data.path={corpus}", "test", "--output-dir", str(out),
                    cwd=tmp_path, module="sft.evaluate")  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    judged = json.loads((out / "metrics.json").read_text())
    assert judged["loss"] == pytest.approx(test["after"]["nll"], rel=1e-3, abs=1e-6)
    assert judged["accuracy"] == metrics["accuracy"]
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    row = rows[-1]  # the history's last row says what calibrating did
    assert row["kind"] == "calibration" and row["temperature"] == temperature
    assert row["test"]["after"]["ece"] == test["after"]["ece"]


@pytest.mark.slow
def test_the_reliability_diagram_and_the_card_show_the_calibration(noisy_run):
    from sft.publishing.card import model_card
    from sft.runs.directory import RunDir

    run_dir, _ = noisy_run
    assert (run_dir / "plots" / "reliability.png").stat().st_size > 10_000
    card = model_card(RunDir(run_dir), "me/noisy")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["calibration"]["test"]
    assert "### Calibration" in card
    assert f"{test['before']['ece']:.4f} → {test['after']['ece']:.4f}" in card
    assert "![Reliability before and after calibration](plots/reliability.png)" in card


@pytest.mark.slow
def test_the_calibration_benchmark_refits_the_runs_temperature(noisy_run):
    """bench/calibration.py undoes the saved temperature and fits it again on validation: the
    same T, the saved model's test NLL, and no prediction moved."""
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location(
        "bench_calibration", ROOT / "bench" / "calibration.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run_dir, _ = noisy_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    measured = bench.measure(run_dir)
    one, none = measured["methods"]["one temperature"], measured["methods"]["none"]
    assert one["temperature"] == pytest.approx(metrics["calibration_temperature"], rel=1e-3)
    assert one["nll"] == pytest.approx(metrics["calibration"]["test"]["after"]["nll"], rel=1e-3)
    assert none["nll"] == pytest.approx(metrics["calibration"]["test"]["before"]["nll"], rel=1e-3)
    assert one["score"] == none["score"] == metrics["accuracy"]
