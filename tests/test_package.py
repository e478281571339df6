"""The built package works outside this checkout: the sdist and the wheel built from it carry the
configs and recipes, and in a fresh virtualenv the installed wheel composes and trains from an
empty directory (plain and through `accelerate launch`), with a user's own recipe beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

RECIPES = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
GROUPS = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "recipe")


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # nothing may reach back into the checkout
    result = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel): the sdist from the checkout, the wheel from the sdist — as pip builds it."""
    out = tmp_path_factory.mktemp("dist")
    build_sdist = f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"
    run(sys.executable, "-c", build_sdist, cwd=ROOT)
    (sdist,) = out.glob("*.tar.gz")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", out,
        sdist, cwd=out)  # fmt: skip
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def venv(tmp_path_factory, built) -> Path:
    """A fresh virtualenv holding the wheel; its dependencies are this environment's (a .pth
    line, so nothing is downloaded), which does not put the checkout on its path."""
    root = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", root, cwd=root)
    python = root / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))",
                    cwd=root).stdout.strip())  # fmt: skip
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", site,
        built[1], cwd=root)  # fmt: skip
    return python


def test_the_distribution_is_sft_classify_and_imports_as_sft(built):
    sdist, wheel = built
    assert sdist.name.startswith("sft_classify-") and wheel.name.startswith("sft_classify-")


def test_sdist_and_wheel_carry_every_config_group_and_recipe(built):
    sdist, wheel = built
    with tarfile.open(sdist) as tar, zipfile.ZipFile(wheel) as whl:
        in_sdist = {Path(*Path(n).parts[1:]).as_posix() for n in tar.getnames()}  # no top dir
        in_wheel = set(whl.namelist())
    for group in GROUPS:
        for option in (ROOT / "conf" / group).glob("*.yaml"):
            assert f"conf/{group}/{option.name}" in in_sdist
            assert f"sft/conf/{group}/{option.name}" in in_wheel
    for recipe in RECIPES:
        assert f"recipes/{recipe}" in in_sdist
        assert f"sft/conf/recipe/{recipe}" in in_wheel
    assert "sft/conf/config.yaml" in in_wheel
    for module in ROOT.glob("sft/**/*.py"):  # pyproject lists the packages: none forgotten
        assert module.relative_to(ROOT).as_posix() in in_wheel
    assert "hydra_plugins/sft_launcher/accelerate_launcher.py" in in_wheel
    assert "sft/reporting/report.html.j2" in in_wheel  # report.html's template


def test_installed_wheel_trains_from_an_empty_directory(
    tmp_path, venv, tiny_checkpoint, text_corpus
):
    where = run(venv, "-c", "import sft, sft.config as c; print(sft.__file__, c.CONF_DIR)",
                cwd=tmp_path).stdout  # fmt: skip
    assert str(ROOT) not in where and "site-packages" in where
    common = [
        f"model.checkpoint={tiny_checkpoint}",
        f"data.path={text_corpus}",
        "trainer.max_steps=2",
        "trainer.progress=false",
    ]
    run(venv, "-m", "sft.train", "recipe=bert_news", "output_dir=plain", *common, cwd=tmp_path)
    launch = ["-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu"]
    run(venv, *launch, "-m", "sft.train", "recipe=bert_news", "output_dir=launched", *common,
        cwd=tmp_path)  # fmt: skip
    for name in ("plain", "launched"):
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["steps"] == 2
        assert (tmp_path / name / "model" / "config.json").is_file()
        assert "Most confident mistakes" in (tmp_path / name / "report.html").read_text()


def test_user_recipe_and_config_option_from_their_own_directory(tmp_path, venv):
    mine = tmp_path / "my_configs"
    (mine / "recipe").mkdir(parents=True)
    (mine / "optimizer").mkdir()
    (mine / "recipe" / "my_news.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /data: bbc_news\n  - override /optimizer: slow\n"
        "trainer:\n  epochs: 7\n"
    )
    (mine / "optimizer" / "slow.yaml").write_text("lr: 1.0e-06\n")
    job = run(venv, "-m", "sft.train", "--config-dir", mine, "recipe=my_news", "--cfg", "job",
              cwd=tmp_path).stdout  # fmt: skip
    assert "epochs: 7" in job and "lr: 1.0e-06" in job
    # The packaged recipes stay available beside the user's.
    run(venv, "-m", "sft.train", "--config-dir", mine, "recipe=bert_news", "--cfg", "job",
        cwd=tmp_path)  # fmt: skip
