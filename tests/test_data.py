"""Tests for `sft.data.sources.load_raw` and `sft.data.splits.build_splits`.

Every data set is built in `tmp_path`; nothing touches the network.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import huggingface_hub.constants
import pandas as pd
import pytest

from sft.data.sources import load_raw
from sft.data.splits import LABELS, build_splits
from sft.errors import SftError
from sft.problems import PROBLEMS

LATIN1 = b"caf\xe9 \xa3"  # "café £" in Latin-1; invalid UTF-8


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep `datasets`' builder cache out of the user's home directory."""
    monkeypatch.setattr(
        datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache")
    )


def _frame(n: int = 4, prefix: str = "t") -> pd.DataFrame:
    return pd.DataFrame(
        {"text": [f"{prefix}{i}" for i in range(n)], "label": ["a", "b"] * (n // 2)}
    )


def _write_txt(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def _dd(**splits: dict) -> datasets.DatasetDict:
    return datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in splits.items()})


def _balanced(n_per_class: int, classes=("a", "b", "c"), prefix: str = "x") -> dict:
    texts, labels = [], []
    for c in classes:
        for i in range(n_per_class):
            texts.append(f"{prefix}-{c}-{i}")
            labels.append(c)
    return {"text": texts, "label": labels}


def _build(raw: datasets.DatasetDict, **kwargs):
    kwargs.setdefault("source", "src")
    kwargs.setdefault("input_column", "text")
    kwargs.setdefault("label_column", "label")
    kwargs.setdefault("problem", PROBLEMS["single_label"])
    return build_splits(raw, **kwargs)


# --------------------------------------------------------------------------- load_raw: shapes


def test_load_raw_csv_directory_has_train_and_test_splits(tmp_path):
    _frame(4, "tr").to_csv(tmp_path / "train.csv", index=False)
    _frame(2, "te").to_csv(tmp_path / "test.csv", index=False)
    raw = load_raw(str(tmp_path))
    assert set(raw) == {"train", "test"}
    assert raw["train"]["text"] == ["tr0", "tr1", "tr2", "tr3"]
    assert raw["test"]["text"] == ["te0", "te1"]
    assert raw["train"]["label"] == ["a", "b", "a", "b"]


@pytest.mark.parametrize("filename", ["dev.csv", "val.csv", "valid.csv", "validation.csv"])
def test_load_raw_validation_file_alias_becomes_validation_split(tmp_path, filename):
    _frame(4, "tr").to_csv(tmp_path / "train.csv", index=False)
    _frame(2, "va").to_csv(tmp_path / filename, index=False)
    raw = load_raw(str(tmp_path))
    assert set(raw) == {"train", "validation"}
    assert raw["validation"]["text"] == ["va0", "va1"]


def test_load_raw_tsv_files_are_split_on_tabs(tmp_path):
    df = pd.DataFrame({"text": ["hello, world", "a, b, c"], "label": ["x", "y"]})
    df.to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    raw = load_raw(str(tmp_path))
    assert raw["train"].column_names == ["text", "label"]
    assert raw["train"]["text"] == ["hello, world", "a, b, c"]
    assert raw["train"]["label"] == ["x", "y"]


def test_load_raw_jsonl_files(tmp_path):
    _frame(4, "tr").to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    _frame(2, "te").to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    raw = load_raw(str(tmp_path))
    assert set(raw) == {"train", "test"}
    assert raw["train"]["text"] == ["tr0", "tr1", "tr2", "tr3"]
    assert raw["test"]["label"] == ["a", "b"]


def test_load_raw_single_parquet_file_becomes_train_split(tmp_path):
    path = tmp_path / "whatever.parquet"
    _frame(4).to_parquet(path, index=False)
    raw = load_raw(str(path))
    assert list(raw) == ["train"]
    assert raw["train"]["text"] == ["t0", "t1", "t2", "t3"]


def test_load_raw_sharded_parquet_files_load_all_shards(tmp_path):
    _frame(2, "s0_").to_parquet(tmp_path / "train-00000-of-00002.parquet", index=False)
    _frame(2, "s1_").to_parquet(tmp_path / "train-00001-of-00002.parquet", index=False)
    raw = load_raw(str(tmp_path))
    assert list(raw) == ["train"]
    assert sorted(raw["train"]["text"]) == ["s0_0", "s0_1", "s1_0", "s1_1"]


def test_load_raw_save_to_disk_dataset_dict(tmp_path):
    dd = _dd(
        train={"text": ["a", "b"], "label": [0, 1]},
        validation={"text": ["c"], "label": [1]},
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    raw = load_raw(str(tmp_path / "saved"))
    assert set(raw) == {"train", "validation"}
    assert raw["train"]["text"] == ["a", "b"]
    assert raw["validation"]["label"] == [1]


def test_load_raw_save_to_disk_split_names_are_normalised(tmp_path):
    _dd(training={"text": ["a"], "label": [0]}, dev={"text": ["b"], "label": [1]}).save_to_disk(
        str(tmp_path / "saved")
    )
    raw = load_raw(str(tmp_path / "saved"))
    assert set(raw) == {"train", "validation"}
    assert raw["validation"]["text"] == ["b"]


def test_load_raw_save_to_disk_single_dataset_becomes_train(tmp_path):
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).save_to_disk(
        str(tmp_path / "saved")
    )
    raw = load_raw(str(tmp_path / "saved"))
    assert list(raw) == ["train"]
    assert raw["train"]["text"] == ["a", "b"]


def test_load_raw_class_folders_of_txt_files(tmp_path):
    _write_txt(tmp_path / "pos" / "1.txt", "great film")
    _write_txt(tmp_path / "pos" / "2.txt", "loved it")
    _write_txt(tmp_path / "neg" / "1.txt", "awful")
    raw = load_raw(str(tmp_path), input_column="review", label_column="sentiment")
    assert list(raw) == ["train"]
    train = raw["train"]
    assert set(train.column_names) == {"review", "sentiment"}
    rows = sorted(zip(train["sentiment"], train["review"], strict=True))
    assert rows == [("neg", "awful"), ("pos", "great film"), ("pos", "loved it")]


def test_load_raw_split_folders_holding_class_folders(tmp_path):
    _write_txt(tmp_path / "train" / "pos" / "a.txt", "good")
    _write_txt(tmp_path / "train" / "neg" / "a.txt", "bad")
    _write_txt(tmp_path / "test" / "pos" / "b.txt", "fine")
    _write_txt(tmp_path / "test" / "neg" / "b.txt", "poor")
    raw = load_raw(str(tmp_path))
    assert set(raw) == {"train", "test"}
    train = sorted(zip(raw["train"]["label"], raw["train"]["text"], strict=True))
    test = sorted(zip(raw["test"]["label"], raw["test"]["text"], strict=True))
    assert train == [("neg", "bad"), ("pos", "good")]
    assert test == [("neg", "poor"), ("pos", "fine")]


# --------------------------------------------------------------------------- load_raw: errors


def test_load_raw_missing_path_says_does_not_exist(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(SftError) as info:
        load_raw(missing)
    assert missing in str(info.value)
    assert "does not exist" in str(info.value)


def test_load_raw_missing_relative_file_says_does_not_exist():
    with pytest.raises(SftError, match="does not exist") as info:
        load_raw("no_such_file_xyz.csv")
    assert "no_such_file_xyz.csv" in str(info.value)


def test_load_raw_empty_directory_says_what_is_expected(tmp_path):
    with pytest.raises(SftError) as info:
        load_raw(str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message
    assert "split files" in message
    assert "save_to_disk" in message
    assert ".txt" in message


def test_load_raw_class_folder_without_txt_files_is_named(tmp_path):
    _write_txt(tmp_path / "pos" / "1.txt", "good")
    (tmp_path / "neg").mkdir()
    (tmp_path / "neg" / "notes.md").write_text("not a txt")
    with pytest.raises(SftError) as info:
        load_raw(str(tmp_path))
    assert str(tmp_path / "neg") in str(info.value)
    assert "has no .txt, image or audio files" in str(info.value)


def test_load_raw_non_utf8_txt_names_file_and_data_encodings(tmp_path):
    bad = tmp_path / "pos" / "bad.txt"
    _write_txt(bad, LATIN1)
    _write_txt(tmp_path / "neg" / "ok.txt", "fine")
    with pytest.raises(SftError) as info:
        load_raw(str(tmp_path))
    assert str(bad) in str(info.value)
    assert "data.encodings" in str(info.value)


def test_load_raw_non_utf8_txt_loads_with_latin1_fallback(tmp_path):
    _write_txt(tmp_path / "pos" / "bad.txt", LATIN1)
    _write_txt(tmp_path / "neg" / "ok.txt", "fine")
    raw = load_raw(str(tmp_path), encodings=["utf-8", "latin-1"])
    rows = dict(zip(raw["train"]["label"], raw["train"]["text"], strict=True))
    assert rows == {"pos": "café £", "neg": "fine"}


def test_load_raw_non_utf8_csv_names_the_file(tmp_path):
    (tmp_path / "train.csv").write_bytes(b"text,label\nok,a\n" + LATIN1 + b",b\n")
    (tmp_path / "test.csv").write_bytes(b"text,label\nfine,a\n")
    with pytest.raises(SftError) as info:
        load_raw(str(tmp_path))
    assert str(tmp_path / "train.csv") in str(info.value)
    assert "data.encodings" in str(info.value)


def test_load_raw_non_utf8_csv_loads_with_latin1_fallback(tmp_path):
    (tmp_path / "train.csv").write_bytes(b"text,label\nok,a\n" + LATIN1 + b",b\n")
    raw = load_raw(str(tmp_path), encodings=["utf-8", "latin-1"])
    assert raw["train"]["text"] == ["ok", "café £"]


def test_load_raw_mixed_csv_and_parquet_is_rejected(tmp_path):
    _frame(2).to_csv(tmp_path / "train.csv", index=False)
    _frame(2).to_parquet(tmp_path / "test.parquet", index=False)
    with pytest.raises(SftError) as info:
        load_raw(str(tmp_path))
    message = str(info.value)
    assert "mix formats" in message
    assert ".csv" in message
    assert ".parquet" in message


def test_load_raw_csv_plus_tsv_is_rejected_as_mixed(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\nhello,a\n", encoding="utf-8")
    (tmp_path / "test.tsv").write_text("text\tlabel\nhi, there\tb\n", encoding="utf-8")
    with pytest.raises(SftError, match=r"mix formats \(\.csv, \.tsv\)"):
        load_raw(str(tmp_path))


def test_load_raw_unknown_hub_id_offline_names_the_path(monkeypatch):
    hub_id = "no-such-user/no-such-dataset-xyz"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Both libraries read the variable once at import time; make the setting take effect now.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SftError) as info:
        load_raw(hub_id)
    assert hub_id in str(info.value)


# --------------------------------------------------------------------------- build_splits: labels


def test_build_splits_string_labels_are_sorted_and_ids_follow_that_order():
    raw = _dd(train={"text": list("pqrstu"), "label": ["c", "a", "b", "c", "a", "b"]})
    splits = _build(raw, eval_fraction=0.5, seed=0)
    assert splits.labels == ["a", "b", "c"]
    for split in (splits.train, splits.validation):
        for text, label_id in zip(split["text"], split[LABELS], strict=True):
            expected = {"p": "c", "q": "a", "r": "b", "s": "c", "t": "a", "u": "b"}[text]
            assert splits.labels[label_id] == expected


def test_build_splits_integer_labels_sorted_numerically():
    raw = _dd(
        train={"text": ["x", "y", "z"], "label": [2, 10, 1]},
        validation={"text": ["v"], "label": [10]},
    )
    splits = _build(raw)
    assert splits.labels == ["1", "2", "10"]
    assert splits.train[LABELS] == [1, 2, 0]
    assert splits.validation[LABELS] == [2]


def test_build_splits_class_label_keeps_feature_names_order():
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["zeta", "alpha"])}
    )
    train = datasets.Dataset.from_dict(
        {"text": ["x", "y", "z"], "label": [0, 1, 1]}, features=features
    )
    val = datasets.Dataset.from_dict({"text": ["v"], "label": [0]}, features=features)
    splits = _build(datasets.DatasetDict({"train": train, "validation": val}))
    assert splits.labels == ["zeta", "alpha"]
    assert splits.train[LABELS] == [0, 1, 1]
    assert splits.validation[LABELS] == [0]


# --------------------------------------------------------------------------- build_splits: errors


def test_build_splits_missing_text_column_lists_columns_and_names_key():
    raw = _dd(train={"sentence": ["a", "b"], "label": ["x", "y"]})
    with pytest.raises(SftError) as info:
        _build(raw)
    message = str(info.value)
    assert "'text'" in message
    assert "sentence" in message and "label" in message
    assert "data.text_column" in message


def test_build_splits_missing_label_column_names_key():
    raw = _dd(train={"text": ["a", "b"], "category": ["x", "y"]})
    with pytest.raises(SftError) as info:
        _build(raw)
    message = str(info.value)
    assert "'label'" in message
    assert "category" in message
    assert "data.label_column" in message


def test_build_splits_empty_split_is_named():
    raw = _dd(
        train={"text": ["a", "b"], "label": ["x", "y"]},
        validation={"text": [], "label": []},
    )
    with pytest.raises(SftError, match="validation split") as info:
        _build(raw)
    assert "empty" in str(info.value)


def test_build_splits_unseen_eval_label_names_label_and_split():
    raw = _dd(
        train={"text": ["a", "b"], "label": ["x", "y"]},
        test={"text": ["c"], "label": ["zzz"]},
    )
    with pytest.raises(SftError) as info:
        _build(raw)
    message = str(info.value)
    assert "zzz" in message
    assert "test split" in message


def test_build_splits_without_train_split_is_rejected():
    raw = _dd(validation={"text": ["a"], "label": ["x"]})
    with pytest.raises(SftError, match="no train split"):
        _build(raw)


# --------------------------------------------------------------------------- build_splits: carving


def test_build_splits_carves_stratified_validation_from_train():
    raw = _dd(train=_balanced(10))
    splits = _build(raw, eval_fraction=0.2, seed=1)
    train_texts, val_texts = splits.train["text"], splits.validation["text"]
    assert len(train_texts) + len(val_texts) == 30
    assert len(val_texts) == 6
    assert not set(train_texts) & set(val_texts)
    assert set(splits.train[LABELS]) == {0, 1, 2}
    assert set(splits.validation[LABELS]) == {0, 1, 2}
    assert splits.test is None


def test_build_splits_test_fraction_carves_test_split():
    raw = _dd(train=_balanced(10))
    splits = _build(raw, eval_fraction=0.2, test_fraction=0.2, seed=1)
    assert splits.test is not None
    parts = [splits.train["text"], splits.validation["text"], splits.test["text"]]
    assert sum(len(p) for p in parts) == 30
    assert len(splits.test) == 6
    assert len(set().union(*map(set, parts))) == 30  # disjoint
    assert set(splits.test[LABELS]) == {0, 1, 2}


def test_build_splits_present_test_split_kept_and_test_fraction_ignored():
    raw = _dd(train=_balanced(10), test=_balanced(2, prefix="t"))
    splits = _build(raw, eval_fraction=0.2, test_fraction=0.5, seed=1)
    assert sorted(splits.test["text"]) == sorted(_balanced(2, prefix="t")["text"])
    assert len(splits.train) + len(splits.validation) == 30


def test_build_splits_same_seed_gives_same_split():
    raw = _dd(train=_balanced(20))
    first = _build(raw, eval_fraction=0.25, seed=7)
    second = _build(raw, eval_fraction=0.25, seed=7)
    assert first.validation["text"] == second.validation["text"]
    assert first.train["text"] == second.train["text"]


def test_build_splits_other_seed_gives_other_split():
    raw = _dd(train=_balanced(20))
    first = _build(raw, eval_fraction=0.25, seed=7)
    other = _build(raw, eval_fraction=0.25, seed=8)
    assert set(first.validation["text"]) != set(other.validation["text"])


def test_build_splits_max_samples_cap_sizes():
    raw = _dd(
        train=_balanced(10), validation=_balanced(4, prefix="v"), test=_balanced(4, prefix="t")
    )
    splits = _build(raw, max_train_samples=5, max_eval_samples=3)
    assert len(splits.train) == 5
    assert len(splits.validation) == 3
    assert len(splits.test) == 3
    assert set(splits.train["text"]) <= set(_balanced(10)["text"])
    assert set(splits.validation["text"]) <= set(_balanced(4, prefix="v")["text"])


def test_build_splits_needs_two_labels():
    raw = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["x", "x"]})}
    )
    with pytest.raises(SftError, match="at least two"):
        _build(raw, source="mem")


def test_build_splits_ignores_a_split_with_hidden_labels():
    # GLUE-style: the test split's labels are -1 (hidden).
    names = datasets.ClassLabel(names=["neg", "pos"])
    train = datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}
    ).cast_column("label", names)
    test = datasets.Dataset.from_dict({"text": ["u", "v"], "label": [-1, -1]})
    raw = datasets.DatasetDict({"train": train, "test": test})
    splits = _build(raw, source="glue", test_fraction=0.2)
    assert splits.labels == ["neg", "pos"]
    assert len(splits.test) == 4  # carved from train instead
