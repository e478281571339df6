"""Each kind of bad input, through the real CLI: a short error naming the culprit and the fix, no
traceback, and nothing in the run directory that could pass for a finished result."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from tests.conftest import make_rows, run_cli, run_process
from tests.test_image import tiny_vit  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def fails(tmp_path, *overrides: str, process: bool = False) -> str:
    """Run the CLI (in this process, or in its own with `process`), assert it failed cleanly
    with exit status 2, return its error output."""
    run_dir = tmp_path / "run"
    run = run_process if process else run_cli
    result = run(f"output_dir={run_dir}", "trainer.progress=false", *overrides, cwd=tmp_path)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
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
    # As a process: what a shell sees is exit status 2 and one error line.
    line = error_line(fails(tmp_path, "recipe=bert_nws", process=True))
    assert "unknown recipe 'bert_nws'" in line and "bert_news" in line and "--config-dir" in line


def test_unknown_group_option_lists_the_available_ones(tmp_path):
    line = error_line(fails(tmp_path, "recipe=bert_news", "optimizer=sgd"))
    assert "unknown optimizer 'sgd'" in line and "adamw" in line


def test_misspelt_config_key_is_named_with_the_closest_key(tmp_path):
    line = error_line(fails(tmp_path, "recipe=bert_news", "trainer.epocs=2"))
    assert "trainer.epocs is not a config key" in line and "trainer.epochs" in line
    assert "+trainer" not in line  # not Hydra's advice to append it


def test_appended_unknown_key_is_refused_not_ignored(tmp_path):
    line = error_line(fails(tmp_path, "recipe=bert_news", "+optimizer.lrr=0.1"))
    assert "optimizer.lrr is not a config key" in line and "optimizer.lr" in line


def test_value_of_the_wrong_type_is_named(tmp_path):
    line = error_line(fails(tmp_path, "recipe=bert_news", "optimizer.lr=fast"))
    assert "optimizer.lr=fast" in line and "Float" in line


def test_unquoted_regex_override_says_to_quote_it(tmp_path):
    line = error_line(fails(tmp_path, "recipe=bert_news", "finetune.train=layer.(10|11)"))
    assert "finetune.train=layer.(10|11)" in line
    assert "'finetune.train=\"layer.(10|11)\"'" in line


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
    assert f"model.checkpoint '{missing}' does not exist; give a directory" in line
    assert "no loadable tokenizer" not in line and "Repo id" not in line


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


# Config values out of range and checkpoints that cannot serve the run.


def fails_on_tiny_text(tmp_path, checkpoint, corpus, *overrides: str) -> str:
    """The error line of a tiny text run with `overrides`, which must fail cleanly."""
    return error_line(
        fails(tmp_path, f"model.checkpoint={checkpoint}", f"data.path={corpus}", *overrides)
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=0", "optimizer.lr=0.0 is not allowed: it must be more than 0"),
        (
            "data.test_fraction=-0.2",
            "data.test_fraction=-0.2 is not allowed: it must lie in [0, 1)",
        ),
    ],
)
def test_config_value_out_of_range_is_named_with_its_range(
    tmp_path, tiny_checkpoint, text_corpus, override, message
):
    line = fails_on_tiny_text(tmp_path, tiny_checkpoint, text_corpus, override)
    assert line == f"error: {message}"


def test_invalid_regex_is_named_with_its_key(tmp_path, tiny_checkpoint, text_corpus):
    line = fails_on_tiny_text(
        tmp_path, tiny_checkpoint, text_corpus, "finetune=pattern", "finetune.freeze=['enc(']"
    )
    assert "finetune.freeze pattern 'enc(' is not a valid regex" in line and "backslash" in line
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before the run began


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("[1,2]", "loss.class_weights=[1, 2] must be none, auto, or a list of 3 numbers (one per"),
        ("[a,b,c]", "loss.class_weights=['a', 'b', 'c'] is not allowed: use none, auto, or a list"),
    ],
)
def test_class_weights_not_one_number_per_label(
    tmp_path, tiny_checkpoint, text_corpus, weights, message
):
    line = fails_on_tiny_text(
        tmp_path, tiny_checkpoint, text_corpus, f"loss.class_weights={weights}"
    )
    assert message in line


def test_top_k_beyond_the_models_blocks_gives_the_block_count(
    tmp_path, tiny_checkpoint, text_corpus
):
    line = fails_on_tiny_text(
        tmp_path, tiny_checkpoint, text_corpus, "finetune=top_k", "finetune.k=5"
    )
    assert "finetune.k=5, but BertForSequenceClassification has 2 blocks" in line
    assert "choose k between 1 and 2" in line


def test_max_length_beyond_the_models_positions_is_refused(tmp_path, tiny_checkpoint, text_corpus):
    line = fails_on_tiny_text(tmp_path, tiny_checkpoint, text_corpus, "data.max_length=100000")
    assert line == (
        f"error: data.max_length=100000 is more than model.checkpoint '{tiny_checkpoint}' takes: "
        f"its max_position_embeddings is 512; set data.max_length=512 or less"
    )


def test_truncated_weights_file_is_blamed_on_the_checkpoint(tmp_path, tiny_checkpoint, text_corpus):
    cut = tmp_path / "cut"
    shutil.copytree(tiny_checkpoint, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = fails_on_tiny_text(tmp_path, cut, text_corpus)
    assert f"model.checkpoint '{cut}' could not be loaded (SafetensorError" in line
    assert "config.json and model weights" in line
