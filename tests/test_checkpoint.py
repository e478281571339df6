"""The checkpoint format, in-process on the tiny BERT: nothing in a checkpoint is a pickle and
resuming unpickles nothing, yet training continues exactly; each set of weights is stored once
(the best weights in one shared file, removed when no checkpoint names it). And sharded plugins
(FSDP), as a real `accelerate launch --use_fsdp` of two processes sets them, are refused with one
line."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from transformers import get_scheduler

from sft import modalities
from sft.config import OptimizerConfig
from sft.errors import SftError
from sft.prepare import tiny_model
from sft.runs.directory import RunDir
from sft.training.checkpoint import Checkpoints
from sft.training.model import load_classifier
from sft.training.optim import make_optimizer, param_groups
from sft.training.state import Best, Evaluation, Progress
from tests.helpers.distributed import ACCELERATE, cpu_env, free_port


def token_batch() -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(5, 30, (4, 12))}


def image_batch() -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(4, 3, 32, 32)}


class Training:
    """A tiny model (BERT, unless `modality` and `batch` say otherwise), fused AdamW and a
    linear schedule, prepared by Accelerate, with checkpoints in `run_dir`; each step draws its
    batch from the global RNGs and trains with dropout, so an exact continuation needs the RNG
    states as well as the weights."""

    def __init__(
        self,
        checkpoint: Path,
        run_dir: Path,
        keep: int = 2,
        labels=("a", "b", "c"),
        modality=None,
        batch=token_batch,
    ):
        self.accelerator = Accelerator(cpu=True)
        self.batch = batch
        model = load_classifier(str(checkpoint), list(labels), modality)
        optimizer = make_optimizer(
            param_groups(model, lr=5e-3, weight_decay=0.01), OptimizerConfig()
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = get_scheduler("linear", self.optimizer, 2, 20)
        self.checkpoints = Checkpoints(self.accelerator, RunDir(run_dir), keep)
        self.checkpoints.track(self.model, self.optimizer, self.scheduler)
        self.progress = Progress(Best("f1"))

    def steps(self, n: int) -> list[float]:
        losses = []
        self.model.train()
        for _ in range(n):
            inputs = self.batch()
            labels = torch.from_numpy(np.random.randint(0, 3, size=4))
            loss = torch.nn.functional.cross_entropy(self.model(**inputs).logits, labels)
            self.accelerator.backward(loss)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
            self.progress.step += 1
            losses.append(loss.item())
        return losses

    def evaluated(self, f1: float) -> None:
        """Record an evaluation scoring `f1` at the current step (the best if it is higher)."""
        evaluation = Evaluation(1 - f1, np.array([0, 1]), np.array([0, 2]), {"f1": f1})
        weights = partial(self.accelerator.get_state_dict, self.model)
        self.progress.best.update(evaluation, self.progress.step, weights)

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.accelerator.get_state_dict(self.model).items()}


def files(directory: Path) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in directory.iterdir() if f.is_file()}


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return tiny_model("resnet", tmp_path_factory.mktemp("resnet"), image_size=32)


@pytest.mark.parametrize("kind", ["bert", "resnet"])
def test_resuming_unpickles_nothing_and_continues_exactly(
    tmp_path, tiny_checkpoint, tiny_resnet, monkeypatch, kind
):
    """ResNet's filters train channels-last, and a checkpoint holds them and AdamW's moments
    contiguous: the resume puts each moment back into its filter's layout, which fused AdamW
    needs to step the right elements."""
    if kind == "bert":
        start = partial(Training, tiny_checkpoint)
    else:
        image = modalities.get("image-classification")
        start = partial(Training, tiny_resnet, modality=image, batch=image_batch)
    torch.manual_seed(0)
    np.random.seed(0)
    first = start(tmp_path / "run")
    first.steps(2)
    first.evaluated(0.5)
    best_weights = first.weights()
    first.steps(1)
    checkpoint = first.checkpoints.save(first.progress)
    expected_losses, expected_weights = first.steps(3), first.weights()

    assert {Path(name).suffix for name in files(checkpoint)} == {".safetensors", ".json"}

    def unpickling(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, unpickling)
    torch.manual_seed(1)  # other RNG states and other initial head weights: the load restores
    np.random.seed(1)
    second = start(tmp_path / "run")
    second.progress = second.checkpoints.load(checkpoint, "f1")
    filters = [p for p in second.model.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in filters)
    assert bool(filters) == (kind == "resnet")

    assert second.progress.step == 3 and second.progress.best.step == 2
    for name, tensor in best_weights.items():
        torch.testing.assert_close(second.progress.best.state[name], tensor, rtol=0, atol=0)
    assert second.steps(3) == expected_losses
    for name, tensor in expected_weights.items():
        torch.testing.assert_close(second.weights()[name], tensor, rtol=0, atol=0)


def test_each_set_of_weights_is_stored_once(tmp_path, tiny_checkpoint):
    run = Training(tiny_checkpoint, tmp_path / "run", keep=2)
    root = run.checkpoints.root
    run.steps(1)
    run.evaluated(0.5)  # the best is the current step: the checkpoint's own weights
    step_1 = run.checkpoints.save(run.progress)
    run.steps(1)
    step_2 = run.checkpoints.save(run.progress)
    run.steps(1)
    step_3 = run.checkpoints.save(run.progress)

    def best_of(checkpoint: Path) -> str:
        return json.loads((checkpoint / "progress.json").read_text())["best_weights"]

    assert not step_1.exists()  # keep=2
    assert best_of(step_2) == best_of(step_3) == "../best-00000001.safetensors"
    assert sorted(p.name for p in root.glob("best-*")) == ["best-00000001.safetensors"]
    weights = files(step_3)["model.safetensors"]
    assert files(root)["best-00000001.safetensors"] == weights
    # Besides the optimizer's state, one copy of the weights and small files (RNG, JSON).
    sizes = files(step_3)
    assert sum(sizes.values()) - sizes["optimizer.safetensors"] < 1.5 * weights

    run.evaluated(0.9)
    step_3 = run.checkpoints.save(run.progress)  # the best again, at the current step
    assert best_of(step_3) == "model.safetensors"
    run.steps(1)
    step_4 = run.checkpoints.save(run.progress)
    assert best_of(step_4) == "../best-00000003.safetensors"
    # Step 2 went with keep=2, and no kept checkpoint names the best weights of step 1 now.
    assert sorted(p.name for p in root.glob("best-*")) == ["best-00000003.safetensors"]


@pytest.mark.slow
def test_fsdp_is_refused_with_one_line(tmp_path, tiny_checkpoint, text_corpus):
    # A process: what is refused is what `accelerate launch` hands its ranks (its environment).
    command = [
        *ACCELERATE,
        "--use_fsdp",
        "--num_processes", "2",
        "--main_process_port", str(free_port()),
        "-m", "sft.train",
        "recipe=bert_news",
        f"model.checkpoint={tiny_checkpoint}",
        f"data.path={text_corpus}",
        f"output_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    # Two ranks start at once: one thread each, so that they do not fight over the cores.
    env = cpu_env({"OMP_NUM_THREADS": "1"})
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    refusals = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert refusals and "ACCELERATE_USE_FSDP=true" in refusals[0], result.stderr[-3000:]
    assert "sharded training (FSDP, DeepSpeed, Megatron-LM) is not supported" in refusals[0]
    assert 'sft/training/accelerator.py"' not in result.stderr  # no traceback through sft
    assert not (tmp_path / "run" / "model").exists()


def test_resuming_another_models_checkpoint_is_named_not_a_size_mismatch_traceback(
    tmp_path, tiny_checkpoint
):
    first = Training(tiny_checkpoint, tmp_path / "run")
    first.steps(1)
    checkpoint = first.checkpoints.save(first.progress)
    other = Training(tiny_checkpoint, tmp_path / "other", labels=("a", "b"))  # another head
    with pytest.raises(SftError) as refused:
        other.checkpoints.load(checkpoint, "f1")
    message = str(refused.value)
    assert f"resume={checkpoint}: its weights are not this model's" in message
    assert "size mismatch for classifier.weight" in message and "resume=never" in message


def test_checkpoint_json_is_strict_and_an_undefined_best_score_comes_back(
    tmp_path, tiny_checkpoint
):
    # Before any improvement the best score is -inf; a correlation can be NaN: JSON has neither.
    first = Training(tiny_checkpoint, tmp_path / "run")
    first.steps(1)
    checkpoint = first.checkpoints.save(first.progress)  # best score still (-inf, -inf)

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    for name in ("progress.json", "complete.json"):
        json.loads((checkpoint / name).read_text(), parse_constant=refuse)
    again = Training(tiny_checkpoint, tmp_path / "run")
    assert again.checkpoints.load(checkpoint, "f1").best.score == (-math.inf, -math.inf)
