"""Text inputs: the checkpoint's tokenizer, batched and cached tokenization, dynamic padding."""

from __future__ import annotations

from typing import Any

import datasets
from transformers import AutoTokenizer, DataCollatorWithPadding, PreTrainedTokenizerBase

from sft.data.splits import LABELS, Splits
from sft.errors import SftError


def load_tokenizer(checkpoint: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(checkpoint, revision=revision)
    except Exception as err:
        raise SftError(
            f"model.checkpoint '{checkpoint}' has no loadable tokenizer ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); point it at a hub id or a "
            f"directory with tokenizer.json"
        ) from err


def tokenize(
    splits: Splits, tokenizer: PreTrainedTokenizerBase, text_column: str, max_length: int
) -> Splits:
    """Tokenize every split (truncated to `max_length`, unpadded: the collator pads per batch)."""

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = batch[text_column]
        if any(not isinstance(t, str) for t in texts):
            bad = next(t for t in texts if not isinstance(t, str))
            raise SftError(
                f"column '{text_column}' holds a {type(bad).__name__} ({bad!r:.40}), not text; "
                f"fill or drop such rows, or set data.text_column to the text column"
            )
        return tokenizer(texts, truncation=True, max_length=max_length)

    def run(ds: datasets.Dataset | None, split: str) -> datasets.Dataset | None:
        if ds is None:
            return None
        return ds.map(
            encode,
            batched=True,
            remove_columns=[c for c in ds.column_names if c != LABELS],
            desc=f"tokenize {split}",
        )

    return Splits(
        train=run(splits.train, "train"),
        validation=run(splits.validation, "validation"),
        test=run(splits.test, "test"),
        labels=splits.labels,
    )


def collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorWithPadding:
    # Pad to a multiple of 8: tensor cores on GPUs want it, and it costs nothing on CPU.
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
