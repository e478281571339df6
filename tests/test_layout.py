"""The shape of the package stays as CONTRIBUTING.md describes it: modality knowledge lives in
the registry, no module depends on a command (the training entry point included), and modules
stay small."""

from __future__ import annotations

import ast
import re

import pytest

from sft import modalities
from tests.conftest import ROOT

SFT = ROOT / "sft"
MODULES = sorted(p for p in SFT.rglob("*.py") if "metric_modules" not in p.parts)


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_task_names_appear_only_in_the_registry_and_the_schema(path):
    if path.parent.name == "modalities" or path.name == "config.py":
        return
    pattern = "|".join(re.escape(task) for task in modalities.TASKS)
    assert not re.search(pattern, path.read_text()), f"{path.name} names a task: ask the registry"


PROBLEM_NAMES = re.compile(
    r"""["'](single_label|multi_label|regression)["']|(single|multi)_label_classification"""
)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_problem_names_appear_only_in_their_home_and_the_schema(path):
    where = path.relative_to(SFT).as_posix()
    if where.startswith("problems/") or where in ("config.py", "validation.py"):
        return
    names = PROBLEM_NAMES.search(path.read_text())
    assert not names, f"{where} names a problem ({names[0]}): ask sft.problems"


# python -m sft.<name>
COMMANDS = ("train", "predict", "evaluate", "export", "push", "prepare", "convert")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_command(path):
    # Commands are leaves: what two commands share lives in a library module they both import.
    commands = {f"sft.{name}" for name in COMMANDS} - {f"sft.{path.stem}"}
    assert not commands & imported_modules(path)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_small(path):
    limit = 270 if path.name == "train.py" else 350  # the entry point only orchestrates
    lines = len(path.read_text().splitlines())
    assert lines <= limit, f"{path.name} has {lines} lines: split the concern it has grown"
