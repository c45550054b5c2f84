"""The house: the package's layers import only downward, no module imports itself back through
others, no module outgrows a sitting's read, and model kinds are told apart in one place."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "edgellm"

# Lowest first: a module may import its own layer and the layers before it, never one after it.
LAYERS = ["errors", "infra", "spec", "text", "layers", "checkpoint", "tflite", "convert", "runtime", "verify", "bundle", "measure", "quantize",
          "kinds", "pipeline", "cli", "__main__"]


def module_name(path: Path) -> str:
    return ".".join(("edgellm", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    """The edgellm modules `path` imports, at its top or inside functions (a lazy import still couples them)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "edgellm":
            found |= {f"{node.module}.{a.name}" if (PACKAGE / node.module.removeprefix("edgellm.").replace(".", "/") / a.name).with_suffix(".py").exists()
                      or (PACKAGE / node.module.removeprefix("edgellm.").replace(".", "/") / a.name).is_dir() else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "edgellm"}
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports(path) for path in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    top = module.removeprefix("edgellm").lstrip(".").split(".")[0]
    return LAYERS.index(top) if top else -1  # the package itself (__version__) sits below everything


def test_no_module_imports_itself_back():
    edges = graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(module: str, path: list[str]) -> bool:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycle.extend(path[path.index(target):] + [target] if target in path else [module, target])
                return True
            if target in edges and state.get(target) is None and visit(target, [*path, target]):
                return True
        state[module] = 2
        return False

    for module in sorted(edges):
        if state.get(module) is None and visit(module, [module]):
            break
    assert not cycle, " -> ".join(cycle)


def test_every_subpackage_has_a_place_and_imports_only_downward():
    edges = graph()
    tops = {m.split(".")[1] for m in edges if m.count(".")}
    assert tops <= set(LAYERS), f"place {sorted(tops - set(LAYERS))} in LAYERS"
    upward = [f"{module} -> {target}" for module, targets in edges.items() for target in targets if layer(target) > layer(module)]
    assert not upward, "\n".join(sorted(upward))


def test_no_module_exceeds_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_model_kinds_are_told_apart_only_in_their_registry():
    told = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py") if p.parent.name != "kinds"
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"kind ==|refuse_kind", line)]
    assert not told, told
