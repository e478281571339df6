"""Long texts as overlapping windows (`data.long_text=chunks`): each window an example carrying
its text's targets and the text's number (DOCUMENT), and the windows' logits pooled back into
one output per text wherever a model runs, so that scores count texts, not windows."""

from __future__ import annotations

from typing import Any

import torch

DOCUMENT = "sft_document"  # the column (and batch key) numbering each window's text


def cut(
    tokenizer: Any, texts: list[str], max_length: int, stride: int | None, max_chunks: int
) -> tuple[dict[str, list], list[int]]:
    """The tokenized windows of `texts` (max_length tokens each with the special ones,
    consecutive windows sharing `stride` tokens: None, a quarter of max_length; the first
    `max_chunks` of each text), and for each window the position of its text in `texts`."""
    stride = max_length // 4 if stride is None else stride
    encoded = tokenizer(texts, truncation=True, max_length=max_length, stride=stride,
                        return_overflowing_tokens=True)  # fmt: skip
    text_of = encoded.pop("overflow_to_sample_mapping")
    keep, seen = [], {}
    for i, text in enumerate(text_of):
        seen[text] = seen.get(text, 0) + 1
        if seen[text] <= max_chunks:
            keep.append(i)
    return {k: [v[i] for i in keep] for k, v in encoded.items()}, [text_of[i] for i in keep]


def pool(
    logits: torch.Tensor, targets: torch.Tensor, documents: torch.Tensor, how: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per document (in document order) from rows of windows: the mean (or max) of
    its windows' logits, and its targets (every window carries its document's)."""
    ids, which = torch.unique(documents, sorted=True, return_inverse=True)
    shape = (len(ids), *logits.shape[1:])
    index = which.view(-1, *[1] * (logits.dim() - 1)).expand_as(logits)
    if how == "max":
        pooled = torch.full(shape, -torch.inf, dtype=logits.dtype).scatter_reduce(
            0, index, logits, "amax"
        )
    else:
        total = torch.zeros(shape, dtype=logits.dtype).index_add(0, which, logits)
        count = torch.bincount(which, minlength=len(ids)).to(logits.dtype)
        pooled = total / count.view(-1, *[1] * (logits.dim() - 1))
    first = torch.full((len(ids),), len(documents), dtype=torch.long).scatter_reduce(
        0, which, torch.arange(len(documents)), "amin"
    )
    return pooled, targets[first]
