"""Each kind of bad input, through the real CLI: a short error naming the culprit and the fix, no
traceback, and nothing in the run directory that could pass for a finished result."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from tests.conftest import make_rows, run_cli
from tests.test_image import tiny_vit  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def fails(tmp_path, *overrides: str) -> str:
    """Run the CLI, assert it failed cleanly, return its error output."""
    run_dir = tmp_path / "run"
    result = run_cli(f"output_dir={run_dir}", "trainer.progress=false", *overrides, cwd=tmp_path)
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    assert not (run_dir / "metrics.json").exists()
    assert not (run_dir / "model").exists()
    return result.stderr


def error_line(stderr: str) -> str:
    """The last line: the `error: ...` that sft prints for bad input."""
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr[-2000:]
    return last


def test_unknown_recipe_lists_the_available_ones(tmp_path):
    stderr = fails(tmp_path, "recipe=bert_nws")
    assert "recipe/bert_nws" in stderr and "bert_news" in stderr


def test_unknown_config_key_is_named(tmp_path):
    stderr = fails(tmp_path, "recipe=bert_news", "trainer.epocs=2")
    assert "Key 'epocs' not in 'TrainerConfig'" in stderr


def test_data_path_that_does_not_exist(tmp_path, tiny_checkpoint):
    missing = tmp_path / "nowhere"
    line = error_line(
        fails(tmp_path, f"model.checkpoint={tiny_checkpoint}", f"data.path={missing}")
    )
    assert str(missing) in line and "does not exist" in line


def test_missing_text_column_lists_the_columns(tmp_path, tiny_checkpoint, text_corpus):
    line = error_line(
        fails(
            tmp_path,
            f"model.checkpoint={tiny_checkpoint}",
            f"data.path={text_corpus}",
            "data.text_column=body",
        )
    )
    assert "'body'" in line and "['text', 'label']" in line and "data.text_column" in line


def test_missing_label_column_is_named(tmp_path, tiny_checkpoint, text_corpus):
    line = error_line(
        fails(
            tmp_path,
            f"model.checkpoint={tiny_checkpoint}",
            f"data.path={text_corpus}",
            "data.label_column=topic",
        )
    )
    assert "'topic'" in line and "data.label_column" in line


def test_empty_split_is_named(tmp_path, tiny_checkpoint, text_corpus):
    (text_corpus / "test.csv").write_text("text,label\n")
    line = error_line(
        fails(tmp_path, f"model.checkpoint={tiny_checkpoint}", f"data.path={text_corpus}")
    )
    assert "test split" in line and "empty" in line


def test_label_unseen_in_train_is_named(tmp_path, tiny_checkpoint, text_corpus):
    rows = [*make_rows(2, seed=3), {"text": "rain and sun", "label": "weather"}]
    pd.DataFrame(rows).to_csv(text_corpus / "test.csv", index=False)
    line = error_line(
        fails(tmp_path, f"model.checkpoint={tiny_checkpoint}", f"data.path={text_corpus}")
    )
    assert "'weather'" in line and "test split" in line and "train never saw" in line


def test_checkpoint_that_cannot_be_loaded(tmp_path, tiny_checkpoint, text_corpus):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    line = error_line(fails(tmp_path, f"model.checkpoint={broken}", f"data.path={text_corpus}"))
    assert str(broken) in line and "could not be loaded" in line


def test_checkpoint_that_does_not_exist_is_blamed_on_the_checkpoint(tmp_path, text_corpus):
    missing = tmp_path / "no_such_checkpoint"
    line = error_line(fails(tmp_path, f"model.checkpoint={missing}", f"data.path={text_corpus}"))
    assert f"model.checkpoint '{missing}' could not be loaded" in line
    assert "no loadable tokenizer" not in line


def test_checkpoint_with_a_corrupt_config_is_named(tmp_path, tiny_checkpoint, text_corpus):
    broken = tmp_path / "broken_config"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "config.json").write_text("{not json")
    line = error_line(fails(tmp_path, f"model.checkpoint={broken}", f"data.path={text_corpus}"))
    assert f"model.checkpoint '{broken}' could not be loaded" in line and "JSON" in line


def test_checkpoint_of_another_modality_than_the_task(tmp_path, tiny_vit, text_corpus):  # noqa: F811
    line = error_line(fails(tmp_path, f"model.checkpoint={tiny_vit}", f"data.path={text_corpus}"))
    assert "is a vit model" in line and "task=text-classification" in line
    assert "set task=image-classification" in line


def test_checkpoint_directory_without_tokenizer(tmp_path, text_corpus):
    empty = tmp_path / "empty_ckpt"
    empty.mkdir()
    line = error_line(fails(tmp_path, f"model.checkpoint={empty}", f"data.path={text_corpus}"))
    assert str(empty) in line and "tokenizer" in line


def test_non_utf8_text_file_is_named_with_the_fix(tmp_path, tiny_checkpoint):
    corpus = tmp_path / "folders"
    for label, words in (("sport", "goal match"), ("tech", "chip code")):
        (corpus / label).mkdir(parents=True)
        for i in range(6):
            (corpus / label / f"{i}.txt").write_text(f"{words} {i}")
    bad = corpus / "tech" / "latin1.txt"
    bad.write_bytes("caf\xe9 chip \xa3".encode("latin-1"))
    line = error_line(fails(tmp_path, f"model.checkpoint={tiny_checkpoint}", f"data.path={corpus}"))
    assert str(bad) in line and "data.encodings" in line


def test_an_output_dir_in_use_by_a_live_run_is_refused(tmp_path, tiny_checkpoint, text_corpus):
    import fcntl

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with (run_dir / ".lock").open("a+") as held:  # what a live run holds until it exits
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 12345\n")
        held.flush()
        line = error_line(
            fails(tmp_path, f"model.checkpoint={tiny_checkpoint}", f"data.path={text_corpus}")
        )
    assert str(run_dir) in line and "in use by a run that is still going (pid 12345)" in line
    assert not (run_dir / "history.jsonl").exists()
