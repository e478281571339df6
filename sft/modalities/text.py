"""Text: the checkpoint's tokenizer, batched and cached tokenization, dynamic padding; inputs to
`predict` are the texts themselves."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import datasets
import pyarrow.compute as pc
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
)

from sft.config import AugmentConfig, DataConfig
from sft.data.splits import LABELS, Splits
from sft.data.windows import DOCUMENT, cut
from sft.errors import SftError
from sft.modalities import TEXT, Inputs, Preview, load_processor

log = logging.getLogger(__name__)


class TextInputs(Inputs):
    """Tokenizes a text column once, up front; batches are padded to their longest member.
    With `chunks` ((stride, max_chunks): data.long_text=chunks), long texts become windows,
    numbered by their text (sft/data/windows.py)."""

    def __init__(
        self,
        checkpoint: str,
        column: str,
        max_length: int,
        revision: str | None = None,
        chunks: tuple[int | None, int] | None = None,
    ):
        self.column = column
        self.max_length = max_length
        self.chunks = chunks
        self.processor = load_tokenizer(checkpoint, revision)
        if self.processor.pad_token is None and self.processor.eos_token is not None:
            self.processor.pad_token = self.processor.eos_token  # GPT-style: pad with EOS

    def encode(self, splits: Splits) -> Splits:
        """Tokenize every split (truncated to `max_length`; unpadded until batching)."""
        return splits.map(self._encode_split)

    def collator(self, train: bool) -> Callable[[list[dict]], dict[str, Any]]:
        # Pad to a multiple of 8: tensor cores on GPUs want it, and it costs nothing on CPU.
        return DataCollatorWithPadding(self.processor, pad_to_multiple_of=8)

    def lengths(self, ds: datasets.Dataset) -> list[int]:
        """Tokens per example, read from the Arrow column without decoding it."""
        return pc.list_value_length(ds.with_format("arrow")["input_ids"]).to_pylist()

    def _encode_split(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        if self.chunks is not None and len(ds):  # rows become windows: columns are rebuilt
            windows = ds.map(
                self._windows,
                batched=True,
                with_indices=True,
                remove_columns=ds.column_names,
                desc=f"cut {split} into windows",
            )
            log.info("%s: %d texts in %d windows", split, len(ds), len(windows))
            return windows.cast_column(LABELS, ds.features[LABELS])  # as the targets were
        return ds.map(
            self._tokenize,
            batched=True,
            remove_columns=[c for c in ds.column_names if c != LABELS],
            desc=f"tokenize {split}",
        )

    def _windows(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, Any]:
        stride, max_chunks = self.chunks
        windows, text_of = cut(self.processor, self._texts(batch), self.max_length, stride,
                               max_chunks)  # fmt: skip
        labels = batch[LABELS]
        return {**windows, LABELS: [labels[i] for i in text_of],
                DOCUMENT: [indices[i] for i in text_of]}  # fmt: skip

    def _tokenize(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        return self.processor(self._texts(batch), truncation=True, max_length=self.max_length)

    def _texts(self, batch: dict[str, list[Any]]) -> list[str]:
        texts = batch[self.column]
        if not all(isinstance(t, str) for t in texts):
            bad = next(t for t in texts if not isinstance(t, str))
            raise SftError(
                f"column '{self.column}' holds a {type(bad).__name__} ({bad!r:.40}), not text; "
                f"fill or drop such rows, or set data.text_column to the text column"
            )
        return texts


def load_tokenizer(checkpoint: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    return load_processor(AutoTokenizer, checkpoint, revision, "tokenizer", "tokenizer.json")


class TextModality:
    name = "text"
    task = TEXT
    column_key = "text_column"
    reads_files = False
    usage_example = '"Shares rose 5% after record quarterly profits."'
    auto_class = AutoModelForSequenceClassification

    def model_types(self) -> set[str]:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as NAMES,
        )

        return set(NAMES)

    def inputs(
        self, checkpoint: str, revision: str | None, data: DataConfig, augment: AugmentConfig
    ) -> TextInputs:
        chunks = (data.stride, data.max_chunks) if data.long_text == "chunks" else None
        return TextInputs(checkpoint, data.text_column, data.max_length, revision, chunks)

    def load_processor(self, checkpoint: str, revision: str | None = None):
        return load_tokenizer(checkpoint, revision)

    def pipeline_options(self, ref: str) -> dict[str, Any]:
        return {}

    def reader(self, classifier: Any) -> Callable[[str], Any]:
        return lambda text: text

    def call_options(self) -> dict[str, Any]:
        return {"truncation": True}

    def sample(self, processor, n: int) -> dict[str, torch.Tensor]:
        texts = [" ".join(["example"] * (3 + 4 * i)) for i in range(n)]
        return dict(processor(texts, padding=True, return_tensors="pt"))

    def preview(self, value: Any, chars: int = 400) -> Preview:
        text = " ".join(str(value).split())
        return Preview("text", text if len(text) <= chars else text[:chars].rstrip() + " …")


MODALITY = TextModality()
