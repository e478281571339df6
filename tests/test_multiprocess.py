"""Two gloo processes on CPU through `accelerate launch`: the run completes, counts every test
example exactly once, only rank zero writes the run directory, ranks started apart agree on
that directory, and two processes of batch b train as one process of batch 2b.

The uninterrupted two-rank run is launched once (tests/helpers/distributed.py, shared with
test_multinode.py): its ranks start seconds apart without an output_dir, so the same launch is
the run that counts examples, the run whose ranks agree on a directory, and the reference a
preempted run must equal once resumed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.helpers.distributed import launch, reference_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_checkpoint):
    return reference_run(tmp_path_factory, tiny_checkpoint)


def test_two_cpu_processes_train_and_count_each_example_once(two_ranks):
    launched = two_ranks.launched
    assert "x 2 processes" in launched.stdout + launched.stderr
    metrics = json.loads((two_ranks.run_dir / "metrics.json").read_text())
    assert metrics["num_examples"] == 15  # test.csv rows, none duplicated by the sampler
    assert sum(map(sum, metrics["confusion_matrix"])) == 15
    history = (two_ranks.run_dir / "history.jsonl").read_text().splitlines()
    steps = [r["step"] for r in map(json.loads, history) if r["kind"] == "train"]
    assert steps == sorted(set(steps))  # one writer: no step recorded twice


def test_ranks_started_seconds_apart_share_one_run_directory(two_ranks):
    # No output_dir was given: the default runs/<date>/<time> must be the same on both ranks,
    # though rank 1 started 2 s after rank 0 (tests/helpers/staggered_train.py).
    assert "output_dir=" not in " ".join(two_ranks.args)
    assert len(two_ranks.run_dirs) == 1, two_ranks.run_dirs
    assert (two_ranks.run_dirs[0] / "metrics.json").exists()


@pytest.fixture
def no_dropout_checkpoint(tmp_path, tiny_checkpoint) -> Path:
    """The tiny BERT without dropout: one process or two then compute the same function."""
    path = tmp_path / "tiny-bert-no-dropout"
    shutil.copytree(tiny_checkpoint, path)
    config = json.loads((path / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_two_processes_of_batch_b_equal_one_process_of_batch_2b(
    tmp_path, no_dropout_checkpoint, text_corpus
):
    common = [
        "recipe=bert_news",
        f"model.checkpoint={no_dropout_checkpoint}",
        f"data.path={text_corpus}",
        "data.max_length=32",
        "data.max_train_samples=48",  # whole batches on every process: no padded last batch
        "trainer.epochs=3",
        "trainer.log_every=1",
        "optimizer.lr=5e-3",
        "trainer.progress=false",
        # Batches of 8 against two of 4: in bf16 (auto with AMX) they round differently.
        "trainer.precision=fp32",
    ]
    # The one-process side is not about processes: it runs here.
    one = run_cli(*common, "trainer.batch_size=8", f"output_dir={tmp_path / 'one'}", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    launch(
        "-m", "sft.train", *common, "trainer.batch_size=4", f"output_dir={tmp_path / 'two'}",
        cwd=tmp_path,
    )  # fmt: skip

    def read(run: str):
        lines = (tmp_path / run / "history.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines], json.loads(
            (tmp_path / run / "metrics.json").read_text()
        )

    (one_history, one_metrics), (two_history, two_metrics) = read("one"), read("two")
    assert [(r["kind"], r["step"]) for r in one_history] == [
        (r["kind"], r["step"]) for r in two_history
    ]
    assert len([r for r in one_history if r["kind"] == "train"]) == 18  # 6 steps x 3 epochs
    for a, b in zip(one_history, two_history, strict=True):
        key = "temperature" if a["kind"] == "calibration" else "loss"  # calibration: the last
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a, b)
    for key in ("accuracy", "f1", "confusion_matrix", "num_examples", "best_step"):
        assert two_metrics[key] == one_metrics[key]
    assert two_metrics["loss"] == pytest.approx(one_metrics["loss"], rel=1e-4)


def test_sigterm_on_one_rank_stops_both_at_one_checkpoint_and_resume_is_exact(tmp_path, two_ranks):
    interrupted = Path(__file__).parent / "helpers" / "interrupted_train.py"
    run_dir = tmp_path / "preempted"
    signal_rank_1 = {
        "SFT_TEST_SIGNAL": "TERM",
        "SFT_TEST_SIGNAL_AT_STEP": "4",
        "SFT_TEST_SIGNAL_RANK": "1",
    }
    stopped = launch(
        str(interrupted), *two_ranks.args, f"output_dir={run_dir}", cwd=tmp_path, env=signal_rank_1
    )
    assert "stopped by SIGTERM at step 4" in stopped.stderr
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000004"]
    assert not (run_dir / "metrics.json").exists()

    # The resume restores both ranks' states from the checkpoint they wrote: two ranks again.
    launch("-m", "sft.train", *two_ranks.args, f"output_dir={run_dir}", cwd=tmp_path)

    def read(run: Path):
        rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
        metrics = json.loads((run / "metrics.json").read_text())
        return [{k: v for k, v in r.items() if k != "examples_per_s"} for r in rows], {
            k: v for k, v in metrics.items() if k not in ("train_seconds", "startup_seconds")
        }

    assert read(run_dir) == read(two_ranks.run_dir)  # the uninterrupted reference
