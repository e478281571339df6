"""Text inputs: the checkpoint's tokenizer, batched and cached tokenization, dynamic padding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
from transformers import AutoTokenizer, DataCollatorWithPadding, PreTrainedTokenizerBase

from sft.data.inputs import Inputs, load_processor
from sft.data.splits import LABELS, Splits
from sft.errors import SftError


class TextInputs(Inputs):
    """Tokenizes a text column once, up front; batches are padded to their longest member."""

    def __init__(self, checkpoint: str, column: str, max_length: int, revision: str | None = None):
        self.column = column
        self.max_length = max_length
        self.processor = load_tokenizer(checkpoint, revision)
        if self.processor.pad_token is None and self.processor.eos_token is not None:
            self.processor.pad_token = self.processor.eos_token  # GPT-style: pad with EOS

    def encode(self, splits: Splits) -> Splits:
        """Tokenize every split (truncated to `max_length`; unpadded until batching)."""
        return splits.map(self._encode_split)

    def collator(self, train: bool) -> Callable[[list[dict]], dict[str, Any]]:
        # Pad to a multiple of 8: tensor cores on GPUs want it, and it costs nothing on CPU.
        return DataCollatorWithPadding(self.processor, pad_to_multiple_of=8)

    def _encode_split(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        return ds.map(
            self._tokenize,
            batched=True,
            remove_columns=[c for c in ds.column_names if c != LABELS],
            desc=f"tokenize {split}",
        )

    def _tokenize(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = batch[self.column]
        if not all(isinstance(t, str) for t in texts):
            bad = next(t for t in texts if not isinstance(t, str))
            raise SftError(
                f"column '{self.column}' holds a {type(bad).__name__} ({bad!r:.40}), not text; "
                f"fill or drop such rows, or set data.text_column to the text column"
            )
        return self.processor(texts, truncation=True, max_length=self.max_length)


def load_tokenizer(checkpoint: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    return load_processor(AutoTokenizer, checkpoint, revision, "tokenizer", "tokenizer.json")
