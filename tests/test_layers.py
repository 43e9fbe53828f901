"""The package's architecture, checked: imports point one way, and only the command line parses arguments or sets
process-wide environment.

    __main__  →  cli  →  tools  →  training  →  data, model  →  config  →  files  →  errors

A module may import its own package and the packages to its right; data and model, side by side, do not import
each other. Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nextword

PACKAGE = Path(nextword.__file__).parent
LAYERS = [{"__main__"}, {"cli"}, {"tools"}, {"training"}, {"data", "model"}, {"config"}, {"files"}, {"errors"},
          {"__init__"}]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """The part of nextword a dotted module name belongs to: "training" for nextword.training.step."""
    names = module.split(".")
    if names[0] != "nextword":
        return ""
    return names[1] if len(names) > 1 else "__init__"


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).with_suffix("")
        found.append((".".join(("nextword", *relative.parts)), path))
    return found


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, absolute; `from nextword import cli` counts as nextword.cli."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            if node.module == "nextword":  # `from nextword import cli`: a module; `__version__`: a name
                names.update(f"nextword.{alias.name}" for alias in node.names if _is_module(alias.name))
    return names


def _is_module(name: str) -> bool:
    return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def sets_environment_on_import(path: Path) -> bool:
    """Whether the file sets an environment variable when imported (at module level), or names OMP_WAIT_POLICY,
    the variable the command line sets before torch loads."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if any(isinstance(node, ast.Constant) and node.value == "OMP_WAIT_POLICY" for node in ast.walk(tree)):
        return True
    for node in _outside_functions(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("setdefault", "putenv", "update") \
                and "environ" in ast.unparse(node.value):
            return True
        if isinstance(node, (ast.Assign, ast.AugAssign)) and "environ[" in ast.unparse(node):
            return True
    return False


def _outside_functions(tree: ast.AST):
    """The nodes that run when the module is imported: everything but the bodies of functions."""
    for child in ast.iter_child_nodes(tree):
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield child
            yield from _outside_functions(child)


def test_imports_point_one_way():
    backward = []
    for module, path in modules():
        own = part_of(module)
        for target in imported_modules(path):
            other = part_of(target)
            if not other or other == own:
                continue
            if RANK[other] <= RANK[own]:
                backward.append(f"{module} imports {target} ({own} may not import {other})")
    assert not backward, "\n".join(backward)


def test_the_part_names_cover_the_package():
    """A new top-level module or package must be given its place in LAYERS, or the test above would miss it."""
    assert {part_of(module) for module, _ in modules()} <= set(RANK)


def test_only_the_command_line_parses_arguments_or_sets_the_environment():
    offenders = []
    for module, path in modules():
        if part_of(module) in ("cli", "__main__"):
            continue
        if "argparse" in imported_modules(path):
            offenders.append(f"{module} imports argparse")
        if sets_environment_on_import(path):
            offenders.append(f"{module} sets process-wide environment")
    assert not offenders, "\n".join(offenders)


def test_the_checker_sees_a_backward_import(tmp_path):
    """The checks above can fail: a file that imports the CLI from the model is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nos.environ.setdefault('X', '1')\n"
                   "def f():\n    from nextword import cli\n    import nextword.training.step\n")
    assert {"nextword.cli", "nextword.training.step"} <= imported_modules(bad)
    assert sets_environment_on_import(bad)
    assert RANK[part_of("nextword.cli")] < RANK[part_of("nextword.model.network")]


def import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle in a graph of module → the modules it imports, as the modules along it; [] if there is none."""
    state: dict[str, str] = {}  # "open" while a module's imports are being followed, "done" after
    trail: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = "open"
        trail.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return trail[trail.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        trail.pop()
        state[module] = "done"
        return []

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return []


def test_modules_within_a_part_import_one_way():
    """No circle of imports inside a part either, lazy ones included: the readers share Document and SkipLog
    through data/documents.py, not through each other."""
    known = {module for module, _ in modules()}
    graph = {module: {target for target in imported_modules(path) if target in known and target != module
                      and part_of(target) == part_of(module)}
             for module, path in modules()}
    cycle = import_cycle(graph)
    assert not cycle, " → ".join(cycle)


def test_the_cycle_finder_sees_a_circle():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
