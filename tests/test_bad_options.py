"""Options a command refuses up front, naming the option and the fix: before a model is
loaded, an input read or a prediction computed; and JSON that strict readers accept."""

from __future__ import annotations

import json
import math
import os

import pytest

from sft.runs.directory import read_json, strict_json, write_json
from tests.conftest import run_cli
from tests.test_bad_input import error_line

PREDICT_OPTIONS = {
    "--top-k 0": (["--top-k", "0"], "--top-k 0: give 1 or more"),
    "--batch-size 0": (["--batch-size", "0"], "--batch-size 0: give 1 or more"),
    "--output .txt": (["--output", "out.txt"], "--output out.txt: write .csv or .json"),
    "--output unwritable": (["--output", "/proc/out.json"], "--output /proc cannot be written"),
}


@pytest.mark.parametrize("options", PREDICT_OPTIONS.values(), ids=list(PREDICT_OPTIONS))
def test_predict_refuses_a_bad_option_before_any_work(tmp_path, trained_text_run, options):
    extra, message = options
    result = run_cli(
        str(trained_text_run[0]), "some text", *extra, cwd=tmp_path, module="sft.predict"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert message in error_line(result.stderr)
    assert "Loading weights" not in result.stderr  # refused before the model was loaded


def test_predict_names_a_missing_folder_instead_of_classifying_its_path(tmp_path, trained_text_run):
    run_dir = str(trained_text_run[0])
    result = run_cli(run_dir, "missing/folder/", cwd=tmp_path, module="sft.predict")
    assert result.returncode == 2
    assert "missing/folder/ does not exist; check the path" in error_line(result.stderr)


def test_an_output_dir_the_system_refuses_is_named_though_its_mode_allows_writing(tmp_path):
    refusing = "/sys/kernel/sft-run"  # sysfs: writable mode bits for root, no new files
    if not os.path.isdir("/sys/kernel") or not os.access("/sys/kernel", os.W_OK):
        pytest.skip("no /sys/kernel whose mode bits allow writing here")
    result = run_cli("recipe=bert_news", f"output_dir={refusing}", "dry_run=true", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"output_dir {refusing} cannot be written: /sys/kernel refuses new files" in (
        error_line(result.stderr)
    )


def test_export_and_train_refuse_a_read_only_folder_alike(tmp_path, trained_text_run):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    exported = run_cli(
        str(trained_text_run[0]), "--onnx", "--output", str(locked / "onnx"), cwd=tmp_path,
        module="sft.export",
    )  # fmt: skip
    trained = run_cli("recipe=bert_news", f"output_dir={locked / 'run'}", cwd=tmp_path)
    for result, key in ((exported, "--output"), (trained, "output_dir")):
        assert result.returncode == 2, result.stderr[-3000:]
        assert f"{key} {locked}" in error_line(result.stderr) and "is read-only" in (
            error_line(result.stderr)
        )
    assert not any(locked.iterdir())


def test_json_is_strict_an_undefined_score_is_null_and_reads_back_as_nan(tmp_path):
    scores = {"r2": 0.5, "pearson": math.nan, "per_target": {"y": {"spearman": math.inf}}}
    path = tmp_path / "metrics.json"
    write_json(path, scores)

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    strict = json.loads(path.read_text(), parse_constant=refuse)  # as JSON.parse and jq read it
    assert strict == {"r2": 0.5, "pearson": None, "per_target": {"y": {"spearman": None}}}
    back = read_json(path)
    assert back["r2"] == 0.5 and math.isnan(back["pearson"])
    assert json.loads(strict_json([1.0, math.nan]), parse_constant=refuse) == [1.0, None]


BAD_SETUPS = {
    "a spreadsheet": (
        lambda root: (root / "train.xlsx").write_bytes(b"PK\x03\x04"),
        ["data.path={root}/train.xlsx"],
        ".xlsx is not a data format sft reads; save it as .csv",
    ),
    "a header naming a column twice": (
        lambda root: (root / "train.csv").write_text("text,label,label\na,x,y\nb,y,x\n"),
        ["data.path={root}/train.csv"],
        "names the column(s) ['label'] more than once in its header",
    ),
    "a split file without the label column": (
        lambda root: [
            (root / "train.csv").write_text("text,label\na,x\nb,y\n"),
            (root / "test.csv").write_text("text\nc\n"),
        ],
        ["data.path={root}"],
        "test.csv has columns ['text'], but train.csv has ['text', 'label'] (missing: ['label']",
    ),
    "the input column is the label column": (
        lambda root: (root / "train.csv").write_text("text,label\na,x\nb,y\n"),
        ["data.path={root}/train.csv", "data.text_column=label"],
        "data.text_column=label is not allowed: it is a label column too",
    ),
    "a key that is a setting elsewhere": (
        lambda root: None,
        ["+trainer.warmup=10"],
        "trainer.warmup is not a config key; did you mean scheduler.warmup_ratio?",
    ),
    "a malformed hub repo id": (
        lambda root: None,
        ["push_to_hub=true", "hub.repo_id='not a/valid repo!'"],
        "hub.repo_id 'not a/valid repo!' is not a hub repository id",
    ),
}


@pytest.mark.parametrize("setup", BAD_SETUPS.values(), ids=list(BAD_SETUPS))
def test_a_bad_setup_is_named_with_its_fix(tmp_path, tiny_checkpoint, setup):
    write, overrides, message = setup
    root = tmp_path / "data"
    root.mkdir()
    write(root)
    args = [o.format(root=root) for o in overrides]
    result = run_cli(
        "recipe=bert_news", f"model.checkpoint={tiny_checkpoint}", *args, "dry_run=true",
        f"output_dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert message in error_line(result.stderr)


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_a_run_directory_that_does_not_exist_is_named_so(tmp_path, command):
    missing = str(tmp_path / "no" / "run")
    args = {"predict": ["a text"], "evaluate": ["data.path=x.csv"], "export": ["--onnx"]}
    result = run_cli(missing, *args[command], cwd=tmp_path, module=f"sft.{command}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"{missing} does not exist; give a run directory, a model directory or a hub id" in (
        error_line(result.stderr)
    )


def test_push_names_a_malformed_repo_id_before_anything_else(tmp_path, trained_text_run):
    result = run_cli(
        str(trained_text_run[0]), "--repo-id", "not a/valid repo!", cwd=tmp_path, module="sft.push"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "--repo-id 'not a/valid repo!' is not a hub repository id" in error_line(result.stderr)


def test_evaluate_names_a_misspelt_key_rather_than_a_missing_data_path(tmp_path, trained_text_run):
    run_dir, corpus = trained_text_run
    result = run_cli(str(run_dir), f"data.pth={corpus}", cwd=tmp_path, module="sft.evaluate")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "data.pth is not a config key; did you mean data.path?" in error_line(result.stderr)


PREPARE_AND_CONVERT = {
    "fashion-mnist without its files": (
        "sft.prepare", ["fashion-mnist", "--source", "{tmp}/nowhere", "--out", "{tmp}/fm"],
        "{tmp}/nowhere/train-images-idx3-ubyte.gz does not exist: --source names the folder",
    ),
    "an --out the system refuses": (
        "sft.prepare", ["tiny-model", "vit", "--out", "/proc/tiny"],
        "--out /proc/tiny cannot be written: /proc is read-only",
    ),
    "a size below 1": (
        "sft.prepare", ["tiny-model", "vit", "--out", "{tmp}/vit", "--image-size", "0"],
        "--image-size 0: give 1 or more",
    ),
    "a count below 1": (
        "sft.prepare", ["fashion-mnist", "--source", "{tmp}", "--out", "{tmp}/fm",
                        "--train-per-class", "0"],
        "--train-per-class 0: give 1 or more",
    ),
    "a converted checkpoint's --out the system refuses": (
        "sft.convert", ["whisper-tiny.en", "--out", "/proc/whisper"],
        "--out /proc/whisper cannot be written",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", PREPARE_AND_CONVERT.values(), ids=list(PREPARE_AND_CONVERT))
def test_prepare_and_convert_name_a_bad_argument_before_any_work(tmp_path, case):
    module, args, message = case
    result = run_cli(*(a.format(tmp=tmp_path) for a in args), cwd=tmp_path, module=module)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert message.format(tmp=tmp_path) in error_line(result.stderr)
    assert not (tmp_path / "vit").exists() and not (tmp_path / "fm").exists()
