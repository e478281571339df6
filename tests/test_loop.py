"""The training loop in-process on the tiny BERT: step counting, gradient accumulation, early
stopping, best-model tracking, determinism, and the precision and optimizer choices."""

from __future__ import annotations

import datasets
import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import get_scheduler

from sft.config import OptimizerConfig, TrainerConfig
from sft.data import build_splits
from sft.errors import SftError
from sft.modalities.text import TextInputs
from sft.problems import PROBLEMS
from sft.training import loop, scoring
from sft.training.model import load_classifier
from sft.training.optim import make_optimizer, param_groups
from tests.conftest import make_rows


@pytest.fixture(scope="module")
def encoded(tiny_checkpoint):
    raw = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(make_rows(16, seed=1)),
            "test": datasets.Dataset.from_list(make_rows(4, seed=2)),
        }
    )
    splits = build_splits(
        raw,
        source="mem",
        input_column="text",
        label_column="label",
        problem=PROBLEMS["single_label"],
    )
    inputs = TextInputs(str(tiny_checkpoint), "text", max_length=32)
    return inputs.encode(splits), inputs


def run_fit(tiny_checkpoint, encoded, total_steps: int, stops=None, loss_fn=None, **settings):
    """Fit from a fixed seed; returns (outcome, history rows, model). `stops`: (should_stop,
    checkpoint) for loop.fit."""
    data, inputs = encoded
    set_seed(0)
    settings = TrainerConfig(progress=False, log_every=1, **settings)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=settings.grad_accum_steps)
    model = load_classifier(str(tiny_checkpoint), data.labels)
    collate = inputs.collator(train=False)
    train = DataLoader(
        data.train,
        batch_size=settings.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
    )
    val = DataLoader(data.validation, batch_size=8, collate_fn=collate)
    optimizer = make_optimizer(param_groups(model, lr=5e-3, weight_decay=0.01), OptimizerConfig())
    model, optimizer, train, val = accelerator.prepare(model, optimizer, train, val)
    scheduler = get_scheduler("linear", optimizer, 0, total_steps)
    rows: list[dict] = []
    single = PROBLEMS["single_label"]
    parts = loop.Parts(accelerator, model, optimizer, scheduler, train, val, single)
    parts.loss_fn = loss_fn or parts.loss_fn
    should_stop, checkpoint = stops or (None, None)
    outcome = loop.fit(
        parts, settings, total_steps, rows.append, checkpoint=checkpoint, should_stop=should_stop
    )
    return outcome, rows, accelerator.unwrap_model(model)


def test_fit_runs_exactly_max_steps_and_evaluates_at_the_end(tiny_checkpoint, encoded):
    outcome, rows, _ = run_fit(tiny_checkpoint, encoded, total_steps=5, batch_size=8)
    assert outcome.steps == 5
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert rows[-1]["kind"] == "eval" and rows[-1]["step"] == 5


def test_a_stop_asked_for_during_the_last_step_is_kept(tiny_checkpoint, encoded):
    # Ctrl-C while the last step evaluates: the loop ends there too, so the stop is kept (a
    # checkpoint, then a preempted outcome) instead of running on to the final evaluation.
    saved, asked = [], []

    def should_stop() -> bool:  # asked after each of the first 5 steps, then once more
        asked.append(True)
        return len(asked) > 5

    checkpoint = saved.append
    outcome, _, _ = run_fit(tiny_checkpoint, encoded, total_steps=6, batch_size=8,
                            stops=(should_stop, lambda p: checkpoint(p.step)))  # fmt: skip
    assert outcome.preempted and outcome.steps == 6
    assert saved and saved[-1] == 6  # the checkpoint holds every step


def test_a_diverged_run_stops_with_the_step_and_the_fix(tiny_checkpoint, encoded):
    def diverging(logits, labels):  # finite for two steps, then NaN
        loss = torch.nn.functional.cross_entropy(logits, labels)
        diverging.calls += 1
        return loss * (float("nan") if diverging.calls > 2 else 1.0)

    diverging.calls = 0
    with pytest.raises(SftError, match=r"training diverged: .* nan at step 3; lower optimizer.lr"):
        run_fit(tiny_checkpoint, encoded, total_steps=6, loss_fn=diverging, batch_size=8)


def test_gradient_accumulation_counts_optimizer_steps(tiny_checkpoint, encoded):
    # 43 train rows at batch 4 = 11 batches; accumulating 2 gives 6 optimizer steps per epoch.
    outcome, rows, _ = run_fit(
        tiny_checkpoint, encoded, total_steps=6, batch_size=4, grad_accum_steps=2
    )
    evals = [r for r in rows if r["kind"] == "eval"]
    assert outcome.steps == 6
    assert [r["step"] for r in evals] == [6]  # one epoch = 6 optimizer steps


def test_eval_every_n_steps(tiny_checkpoint, encoded):
    _, rows, _ = run_fit(tiny_checkpoint, encoded, total_steps=7, batch_size=8, eval_every=3)
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [3, 6, 7]


def test_early_stopping_stops_after_patience(tiny_checkpoint, encoded):
    # lr 5e-3 on a tiny model: the validation metric stalls long before 200 steps.
    outcome, rows, _ = run_fit(
        tiny_checkpoint,
        encoded,
        total_steps=200,
        batch_size=8,
        eval_every=1,
        early_stopping_patience=2,
        metric="accuracy",
    )
    evals = [r for r in rows if r["kind"] == "eval"]
    assert outcome.steps < 200
    assert [r["best"] for r in evals[-2:]] == [False, False]
    assert evals[-3]["best"] or any(r["best"] for r in evals[:-2])
    assert outcome.best.step == max(r["step"] for r in evals if r["best"])


def test_best_state_holds_the_weights_of_the_best_evaluation(tiny_checkpoint, encoded):
    outcome, rows, model = run_fit(
        tiny_checkpoint, encoded, total_steps=6, batch_size=8, eval_every=2
    )
    best_rows = [r for r in rows if r["kind"] == "eval" and r["best"]]
    assert outcome.best.step == best_rows[-1]["step"]
    model.load_state_dict(outcome.best.state)
    accelerator = Accelerator(cpu=True)
    data, inputs = encoded
    val = DataLoader(data.validation, batch_size=8, collate_fn=inputs.collator(train=False))
    again = scoring.evaluate(accelerator, model, val, PROBLEMS["single_label"])
    assert again.loss == pytest.approx(best_rows[-1]["loss"], rel=1e-5)


def test_same_seed_gives_the_same_history(tiny_checkpoint, encoded):
    _, first, _ = run_fit(tiny_checkpoint, encoded, total_steps=4, batch_size=8)
    _, second, _ = run_fit(tiny_checkpoint, encoded, total_steps=4, batch_size=8)
    losses = [[r["loss"] for r in rows] for rows in (first, second)]
    torch.testing.assert_close(losses[0], losses[1])


def test_balanced_sampler_draws_every_class_about_equally():
    from collections import Counter

    from sft.data.loaders import balanced_sampler

    labels = [0] * 90 + [1] * 9 + [2] * 1
    sampler = balanced_sampler(labels, torch.Generator().manual_seed(0))
    draws = Counter(labels[i] for _ in range(30) for i in sampler)
    assert len(list(sampler)) == 100
    assert min(draws.values()) / max(draws.values()) > 0.9


def test_a_nan_evaluation_is_never_the_best():
    import numpy as np

    best = loop.Best("loss")
    model = torch.nn.Linear(2, 2)
    finite = loop.Evaluation(0.5, np.zeros(2), np.zeros(2), {"accuracy": 1.0, "f1": 1.0})
    diverged = loop.Evaluation(float("nan"), np.zeros(2), np.zeros(2), {"accuracy": 0, "f1": 0})
    assert best.update(finite, 1, model.state_dict)
    assert not best.update(diverged, 2, model.state_dict)
    assert best.step == 1 and best.evals_since == 1


@pytest.mark.parametrize("fused", [True, False])
def test_optimizer_fused_setting_picks_the_kernel_and_both_train_alike(tiny_checkpoint, fused):
    """`optimizer.fused` picks torch's fused AdamW (default) or its per-tensor loop: the same
    update up to rounding."""
    torch.manual_seed(0)
    model = load_classifier(str(tiny_checkpoint), ["a", "b"])
    reference = load_classifier(str(tiny_checkpoint), ["a", "b"])
    reference.load_state_dict(model.state_dict())
    chosen = make_optimizer(param_groups(model, 1e-2, 0.01), OptimizerConfig(fused=fused))
    loop_kernel = make_optimizer(param_groups(reference, 1e-2, 0.01), OptimizerConfig(fused=False))
    assert all(g["fused"] is fused for g in chosen.param_groups)
    batch = {"input_ids": torch.randint(5, 20, (4, 8)), "labels": torch.tensor([0, 1, 0, 1])}
    for net, optimizer in ((model, chosen), (reference, loop_kernel)):
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(scoring.logits_of(net, batch), batch["labels"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    expected = reference.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5, msg=name)
