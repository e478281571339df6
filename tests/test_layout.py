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
COMMANDS = ("train", "predict", "evaluate", "report", "export", "push", "prepare", "convert")


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


# The top of sft/ holds the commands users run with -m and what every command shares; the rest
# lives in packages named for what they do.
TOP = {"__init__", *COMMANDS, "cli", "config", "errors", "validation"}


def test_the_top_of_the_package_holds_the_commands_and_little_else():
    top = {p.stem for p in SFT.glob("*.py")}
    assert top == TOP, f"new at the top: {top - TOP}; gone: {TOP - top}"
    assert len(top) <= 13


def module_name(path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """sft module -> the sft modules it imports, inside functions too (imports under `if
    TYPE_CHECKING:` are left out: they are never executed, annotations only)."""
    names = {module_name(p) for p in MODULES}
    graph = {}
    for path in MODULES:
        tree = ast.parse(path.read_text())
        typing_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
            for node in ast.walk(block)
        }
        found = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:  # `from sft.x import y`: module sft.x.y, or sft.x
                    child = f"{node.module}.{alias.name}"
                    found.add(child if child in names else node.module)
        graph[module_name(path)] = (found & names) - {module_name(path)}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in `graph` (a list of nodes, the first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])  # sft.training.loop -> sft.training


def test_no_import_cycles_between_modules_or_packages():
    graph = import_graph()
    assert cycle(graph) is None, " -> ".join(cycle(graph))
    packages: dict[str, set[str]] = {}
    for module, imported in graph.items():
        outside = {package_of(m) for m in imported} - {package_of(module)}
        packages.setdefault(package_of(module), set()).update(outside)
    assert cycle(packages) is None, " -> ".join(cycle(packages))


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


# Each package or top-level module may import only those on lower layers (or itself).
LAYERS = [
    {"sft.errors"},
    {"sft.pretrained"},
    {"sft.config"},
    {"sft.cli", "sft.data"},
    {"sft.modalities"},
    {"sft.problems"},  # what a run predicts: targets, loss, scores, plots
    {"sft.runs", "sft.validation"},
    {"sft.training"},
    {"sft.publishing", "sft.reporting"},  # what people read: the model card, report.html
    {"sft", *(f"sft.{c}" for c in COMMANDS)},
]


def test_layers_only_point_down():
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    upward = [
        f"{module} -> {imported}"
        for module, imports in import_graph().items()
        for imported in imports
        if package_of(imported) != package_of(module)
        and layer[package_of(imported)] >= layer[package_of(module)]
    ]
    assert not upward, f"imports that point up or sideways (see LAYERS): {upward}"
