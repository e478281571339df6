"""Bad data, refused before training with one line naming the file, column or value and the
fix: through the real CLI (slow), plus the data layer's own checks (fast)."""

from __future__ import annotations

import codecs
import re

import datasets
import numpy as np
import pandas as pd
import pytest

from sft.data.sources import load_raw
from sft.data.splits import build_splits
from sft.errors import SftError
from sft.problems import PROBLEMS
from tests.conftest import make_rows, run_cli
from tests.test_audio import audiofolder, tiny_wav2vec2  # noqa: F401 (fixtures)
from tests.test_bad_input import error_line, fails
from tests.test_image import imagefolder, tiny_vit  # noqa: F401 (fixtures)


def fails_on_text(tmp_path, checkpoint, corpus, *overrides: str) -> str:
    """The error line of the CLI on the tiny BERT and `corpus`, which must fail cleanly."""
    return error_line(
        fails(tmp_path, f"model.checkpoint={checkpoint}", f"data.path={corpus}", *overrides)
    )


def utf16_csv(path, rows: list[dict]) -> None:
    """A CSV as Excel's "Unicode text" export writes it: UTF-16 with a byte-order mark."""
    pd.DataFrame(rows).to_csv(path, index=False, encoding="utf-16")


# ----------------------------------------------------------------------- through the CLI


@pytest.mark.slow
def test_empty_directory_says_what_it_expects(tmp_path, tiny_checkpoint):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = fails_on_text(tmp_path, tiny_checkpoint, empty)
    assert f"data.path '{empty}' holds no data sft can read" in line
    assert "split files" in line and "one sub-folder per class" in line


@pytest.mark.slow
def test_one_class_only_is_refused(tmp_path, tiny_checkpoint, text_corpus):
    rows = [r for r in make_rows(10, seed=1) if r["label"] == "sport"]
    pd.DataFrame(rows).to_csv(text_corpus / "train.csv", index=False)
    line = fails_on_text(tmp_path, tiny_checkpoint, text_corpus)
    assert f"the train split of {text_corpus} has 1 distinct label(s) ['sport']" in line
    assert "at least two" in line


@pytest.mark.slow
def test_an_empty_test_label_is_named_as_empty_not_as_unseen(
    tmp_path, tiny_checkpoint, text_corpus
):
    # Integer labels; one blank cell makes pandas read the test column as floats with a NaN.
    ids = {"sport": 0, "tech": 1, "politics": 2}
    for name, seed in (("train", 1), ("test", 2)):
        rows = [{**r, "label": ids[r["label"]]} for r in make_rows(5, seed=seed)]
        if name == "test":
            rows[3]["label"] = None
        pd.DataFrame(rows).to_csv(text_corpus / f"{name}.csv", index=False)
    line = fails_on_text(tmp_path, tiny_checkpoint, text_corpus)
    assert f"the test split of {text_corpus} has 1 empty label(s) in column 'label'" in line
    assert "row 4" in line and "fill or drop those rows" in line
    assert "never saw" not in line


@pytest.mark.slow
def test_utf16_csv_is_named_with_the_encoding_to_add(tmp_path, tiny_checkpoint, text_corpus):
    utf16_csv(text_corpus / "train.csv", make_rows(5, seed=1))
    line = fails_on_text(tmp_path, tiny_checkpoint, text_corpus)
    assert f"{text_corpus / 'train.csv'} is UTF-16 text" in line
    assert "data.encodings=[utf-8,utf-16]" in line


@pytest.mark.slow
def test_binary_csv_is_named_even_with_a_catch_all_encoding(tmp_path, tiny_checkpoint, text_corpus):
    # latin-1 decodes any bytes: without a check, pandas' ParserError named only the directory.
    rng = np.random.default_rng(0)
    (text_corpus / "train.csv").write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    line = fails_on_text(tmp_path, tiny_checkpoint, text_corpus, "data.encodings=[utf-8,latin-1]")
    assert f"{text_corpus / 'train.csv'} is not utf-8, latin-1 text" in line
    assert "binary file" in line and "replace it" in line


@pytest.mark.slow
def test_a_utf16_file_beside_utf8_files_trains_with_both_encodings_listed(
    tmp_path, tiny_checkpoint, text_corpus
):
    utf16_csv(text_corpus / "train.csv", make_rows(20, seed=1))  # test.csv stays UTF-8
    run_dir = tmp_path / "run"
    result = run_cli(
        f"model.checkpoint={tiny_checkpoint}",
        f"data.path={text_corpus}",
        f"output_dir={run_dir}",
        "data.encodings=[utf-8,utf-16]",
        "dry_run=true",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data: train 54, validation 6, test 15" in result.stdout + result.stderr


@pytest.mark.slow
def test_corrupt_image_in_an_imagefolder_is_named(tmp_path, imagefolder, tiny_vit):  # noqa: F811
    bad = imagefolder / "train" / "red" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    line = fails_on_text(tmp_path, tiny_vit, imagefolder, "recipe=vit_fashion_mnist")
    assert re.search(
        rf"image '{re.escape(str(bad))}' \((train|validation) split\) cannot be decoded", line
    )
    assert "replace or remove the file" in line


@pytest.mark.slow
@pytest.mark.parametrize(
    "content", [b"", b"just some text, not a sound"], ids=["zero-byte", "not-audio"]
)
def test_bad_file_in_an_audiofolder_is_named(tmp_path, audiofolder, tiny_wav2vec2, content):  # noqa: F811
    bad = audiofolder / "train" / "low" / "bad.wav"
    bad.write_bytes(content)
    line = fails_on_text(tmp_path, tiny_wav2vec2, audiofolder, "recipe=wav2vec2_digits")
    # (train/ or the validation split carved out of it)
    where = rf"audio '{re.escape(str(bad))}' \((train|validation) split\) cannot be decoded"
    assert re.search(where, line)
    assert "use WAV, FLAC or OGG, or replace the file" in line


# ------------------------------------------------------------------------- the data layer


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache")
    )


def test_each_file_gets_the_first_encoding_that_decodes_it(tmp_path):
    (tmp_path / "train.csv").write_bytes(
        codecs.BOM_UTF16_LE + "text,label\ncafé,a\nthé,b\n".encode("utf-16-le")
    )
    (tmp_path / "test.csv").write_text("text,label\nnaïve,a\n", encoding="utf-8")
    raw = load_raw(str(tmp_path), encodings=["utf-8", "utf-16"])
    assert list(raw["train"]["text"]) == ["café", "thé"]
    assert list(raw["test"]["text"]) == ["naïve"]  # not read as UTF-16


def test_files_of_one_split_in_two_encodings_are_read_together(tmp_path):
    # latin-1 decodes the UTF-8 shard too, into "naÃ¯ve": each file keeps its own encoding.
    (tmp_path / "train-00000-of-00002.csv").write_text("text,label\nnaïve,a\n", encoding="utf-8")
    (tmp_path / "train-00001-of-00002.csv").write_bytes("text,label\ntwo £,b\n".encode("latin-1"))
    raw = load_raw(str(tmp_path), encodings=["utf-8", "latin-1"])
    assert sorted(raw["train"]["text"]) == ["naïve", "two £"]


def test_unparseable_file_among_several_is_named(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\nfine,a\nok,b\n")
    (tmp_path / "test.csv").write_text('text,label\n"never closed,a\nx,y,z,w\n')
    with pytest.raises(SftError) as info:
        load_raw(str(tmp_path))
    assert f"could not read {tmp_path / 'test.csv'} as csv" in str(info.value)


def test_empty_train_label_is_named_with_its_split_source_and_row():
    train = datasets.Dataset.from_dict({"text": list("abcd"), "label": ["x", "y", None, "x"]})
    with pytest.raises(SftError) as info:
        build_splits(
            datasets.DatasetDict(train=train), source="corpus", input_column="text",
            label_column="label", problem=PROBLEMS["single_label"],
        )  # fmt: skip
    assert str(info.value) == (
        "the train split of corpus has 1 empty label(s) in column 'label' (the first in row 3); "
        "fill or drop those rows"
    )
