"""The modality registry: everything that differs between text, images and audio.

Each modality is one module here (`text`, `image`, `audio`) holding one `Modality` object that
owns its `AutoModelFor...` class, how raw examples become batches (`Inputs`), how its processor
is loaded, how `predict` reads a user's input, the sample batch `export` traces with, and the
model card's usage line. Every other module asks this registry by task name; adding a modality
means adding a module and a line to `TASKS`.
"""

from __future__ import annotations

import base64
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from sft.errors import SftError, from_checkpoint

if TYPE_CHECKING:
    import datasets
    import torch

    from sft.config import AugmentConfig, DataConfig
    from sft.data.splits import Splits

# Pipeline task name -> the module of its modality. Imported when first asked for, so that
# `--help` and config errors never wait for PIL, soundfile or kornia.
TEXT = "text-classification"  # also the task of a checkpoint that no other modality claims
TASKS = {
    TEXT: "sft.modalities.text",
    "image-classification": "sft.modalities.image",
    "audio-classification": "sft.modalities.audio",
}


class Inputs(Protocol):
    """How raw examples of one modality become model inputs, for one checkpoint."""

    column: str  # the raw input column: text, image or audio
    processor: Any  # tokenizer, image processor or feature extractor; saved beside the model

    def encode(self, splits: Splits) -> Splits:
        """One-off preprocessing of every split (tokenization, decoding checks)."""
        ...

    def collator(self, train: bool) -> Callable[[list[dict]], dict[str, Any]]:
        """Turns a list of examples into a batch; `train=True` may add augmentation."""
        ...

    def lengths(self, ds: datasets.Dataset) -> list[int] | None:
        """Each example's size as the model sees it (tokens, milliseconds of audio after
        cropping) where examples differ in it and batches are padded to their longest: train
        batches then gather examples of similar size and evaluation runs in size order
        (sft/data/loaders.py). None: all cost the same."""
        return None

    def train_randomness(self, ds: datasets.Dataset) -> str | None:
        """Why a train example can reach the model differently from epoch to epoch
        (augmentation, random crops), or None when it cannot."""
        return None


class Preview(NamedTuple):
    """An example as the error-analysis report shows it (sft/reporting)."""

    kind: str  # text | image | audio
    content: str  # the excerpt, or a data: URI of the thumbnail or the clip


def data_uri(data: bytes, mime: str) -> str:
    """`data` inline in a page: the report is one file that needs no network."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class Modality(Protocol):
    name: str  # text | image | audio: also the kind of file a class folder holds (data.sources)
    task: str  # its pipeline task name: its key in TASKS
    column_key: str  # the DataConfig field naming the input column, e.g. "text_column"
    reads_files: bool  # inputs are file paths (images, audio), not the values themselves
    usage_example: str  # what the model card's pipeline snippet classifies
    auto_class: Any  # transformers' AutoModelFor... class of this task

    def model_types(self) -> set[str]:
        """The `config.model_type`s that have a classifier of this modality."""
        ...

    def inputs(
        self, checkpoint: str, revision: str | None, data: DataConfig, augment: AugmentConfig
    ) -> Inputs:
        """The `Inputs` that training and evaluation build batches with."""
        ...

    def load_processor(self, checkpoint: str, revision: str | None = None) -> Any:
        """The checkpoint's tokenizer, image processor or feature extractor, as training loads
        it; an SftError naming the checkpoint when it has none."""
        ...

    def pipeline_options(self, ref: str) -> dict[str, Any]:
        """Extra arguments of `transformers.pipeline` for a fine-tuned model at `ref`."""
        ...

    def reader(self, classifier: Any) -> Callable[[str], Any]:
        """Turns one `predict` input (a text, or a file's path) into what the pipeline takes."""
        ...

    def call_options(self) -> dict[str, Any]:
        """Extra arguments of each pipeline call (text truncates to the model's length)."""
        ...

    def sample(self, processor: Any, n: int) -> dict[str, torch.Tensor]:
        """A batch of `n` synthetic inputs for `export` to trace and check with; batches of
        different `n` also differ in length where lengths can vary."""
        ...

    def preview(self, value: Any) -> Preview:
        """One raw example (its input column's value) as a person looks at it: an excerpt, a
        thumbnail or a short clip, small enough that fifty fit in one page."""
        ...


def get(task: str) -> Modality:
    """The modality of a pipeline task name (`config.task`)."""
    if task not in TASKS:
        raise SftError(f"task={task} is not supported; use one of {', '.join(TASKS)}")
    return importlib.import_module(TASKS[task]).MODALITY


def task_of(model_type: str) -> str:
    """The task of a checkpoint's `config.model_type`. Text is the fallback, not a candidate:
    its Auto class also maps types that have image classifiers (perceiver)."""
    claimed = [t for t in TASKS if t != TEXT and model_type in get(t).model_types()]
    return claimed[0] if claimed else TEXT


def load_processor(auto_class, checkpoint: str, revision: str | None, what: str, file: str, **kw):
    """`auto_class.from_pretrained(checkpoint)`, or an SftError naming the checkpoint, the
    missing piece (`what`) and the file a local directory needs for it."""
    return from_checkpoint(
        lambda: auto_class.from_pretrained(checkpoint, revision=revision, **kw),
        f"model.checkpoint '{checkpoint}' has no loadable {what}",
        f"point it at a hub id or a directory with {file}",
    )


def load_config(checkpoint: str, revision: str | None, what: str, fix: str):
    """The transformers config of `checkpoint`, or an SftError: '`what` could not be loaded
    (the cause); `fix`'."""
    from transformers import AutoConfig

    return from_checkpoint(
        lambda: AutoConfig.from_pretrained(checkpoint, revision=revision),
        f"{what} could not be loaded",
        fix,
    )
