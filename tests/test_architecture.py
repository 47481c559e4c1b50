"""The package reads as layers: every import of transferlab, at module level or inside a function,
goes to the same layer or one below it (docs/architecture.md). A cycle or an upward import is how
the 32-module import circle of issue 16 started, so this test names each offending line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "transferlab"

#: The layers, lowest first; a module may import its own layer and those before it.
LAYERS: list[tuple[str, ...]] = [
    ("_version", "_internal", "exceptions"),
    ("data", "samples"),
    ("backbones",),
    ("features",),
    ("distributed",),
    ("probe",),
    ("evaluate",),
    ("finetune",),
    ("diagnose",),
    ("models", "artifacts", "export"),
    ("report",),
    ("pipeline",),
    ("serve",),
    ("cli", "__main__"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _top(module: str) -> str | None:
    """`transferlab.features.ray` -> `features`; None for the package itself."""
    parts = module.split(".")
    if parts[0] != "transferlab":
        return None
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "transferlab":  # `from transferlab import x`: x is the module
                found += [(node.lineno, f"transferlab.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC)


def test_every_module_belongs_to_a_layer():
    tops = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in _modules()}
    assert tops - set(RANK) == set(), "add the new top-level module to LAYERS (and the docs)"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_flow_down_the_layers(path):
    own = RANK[path.relative_to(SRC).parts[0].removesuffix(".py")]
    upward = []
    for line, module in _imports(path):
        top = _top(module)
        if top is None:
            continue
        if top == "" or top not in RANK:
            upward.append(
                f"line {line}: imports {module} (the package __init__ or an unknown module)"
            )
        elif RANK[top] > own:
            upward.append(f"line {line}: imports {module} (layer {top} is above this one)")
    assert upward == [], f"{path.relative_to(SRC)}:\n" + "\n".join(upward)
