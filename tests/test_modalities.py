"""The modality registry: every task resolves to a modality that owns the whole protocol, and a
checkpoint's task is found from its model type."""

from __future__ import annotations

import inspect

import pytest

from sft import modalities
from sft.config import AugmentConfig, DataConfig
from sft.errors import SftError
from tests.conftest import KINDS


@pytest.mark.parametrize("task", list(modalities.TASKS))
def test_every_registered_modality_implements_the_protocol(task):
    modality = modalities.get(task)
    wanted = [
        name for name, _ in inspect.getmembers(modalities.Modality) if not name.startswith("_")
    ]
    missing = [name for name in wanted if not hasattr(modality, name)]
    assert not missing, f"{task}: {missing}"
    for name in modalities.Modality.__annotations__:
        assert hasattr(modality, name), f"{task} has no {name}"
    assert hasattr(DataConfig(), modality.column_key)  # the data config names its column


def test_each_modality_has_its_own_name_and_auto_class():
    found = [modalities.get(task) for task in modalities.TASKS]
    assert len({m.name for m in found}) == len(found)
    assert len({m.auto_class for m in found}) == len(found)


def test_unknown_task_is_a_clear_error():
    with pytest.raises(SftError, match=r"task=video-classification is not supported.*text"):
        modalities.get("video-classification")


@pytest.mark.parametrize(("kind", "task"), [("bert", modalities.TEXT)] + [
    (kind, task) for kind, (task, _) in KINDS.items()
])  # fmt: skip
def test_task_of_the_tiny_models(kind, task, models):
    assert modalities.task_of(models(kind).config.model_type) == task


def test_a_model_type_no_media_modality_claims_is_text():
    assert modalities.task_of("some_new_text_model") == modalities.TEXT


@pytest.mark.parametrize(("kind", "task"), [("bert", modalities.TEXT)] + [
    (kind, task) for kind, (task, _) in KINDS.items()
])  # fmt: skip
def test_export_samples_run_through_the_model(kind, task, tiny_checkpoint, tmp_path):
    from sft.prepare import tiny_model

    modality = modalities.get(task)
    path = str(tiny_checkpoint if kind == "bert" else tiny_model(kind, tmp_path))
    model = modality.auto_class.from_pretrained(path).eval()
    processor = modality.load_processor(path)
    two, three = modality.sample(processor, 2), modality.sample(processor, 3)
    assert next(iter(two.values())).shape[0] == 2
    assert model(**three).logits.shape[0] == 3


def test_inputs_are_built_from_plain_config(tiny_checkpoint):
    text = modalities.get(modalities.TEXT)
    inputs = text.inputs(str(tiny_checkpoint), None, DataConfig(max_length=16), AugmentConfig())
    assert inputs.column == "text" and inputs.max_length == 16


def test_each_modality_knows_its_own_task():
    assert all(modalities.get(task).task == task for task in modalities.TASKS)
