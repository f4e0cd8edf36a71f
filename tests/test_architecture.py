"""Layers import downwards only: the order is the ``layers`` block of ARCHITECTURE.md, and every
``import mritumor.…`` in src/ (lazy imports inside functions included) must name a module of the
same or a lower layer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "mritumor"


def declared_layers(text: str) -> dict[str, int]:
    """``unit → layer number`` from the fenced ```layers block: one line per layer, lowest first,
    ``N name: unit unit …`` where a unit is a top-level module or package of mritumor."""
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "ARCHITECTURE.md has no ```layers block"
    layers: dict[str, int] = {}
    for line in block.group(1).strip().splitlines():
        number, _, units = line.partition(":")
        level = int(number.split()[0])
        for unit in units.split():
            assert unit not in layers, f"{unit} is in two layers"
            layers[unit] = level
    return layers


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(source: Path, layers: dict[str, int]) -> list[str]:
    problems = []
    for path in sorted(source.rglob("*.py")):
        relative = path.relative_to(source.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        here = unit_of(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target != "mritumor" and not target.startswith("mritumor."):
                    continue
                there = unit_of(target)
                if layers[there] > layers[here]:
                    problems.append(
                        f"{module} (layer {layers[here]}) imports {target} (layer {layers[there]}) "
                        f"at {path.relative_to(source.parent)}:{node.lineno}"
                    )
    return problems


def test_every_module_has_a_layer():
    layers = declared_layers((ROOT / "ARCHITECTURE.md").read_text())
    units = {p.stem for p in SOURCE.glob("*.py")} | {
        p.parent.name for p in SOURCE.glob("*/__init__.py")
    }
    assert units - set(layers) == set(), "add these to the layers block of ARCHITECTURE.md"
    assert set(layers) - units == set(), "the layers block names modules that do not exist"


def test_layers_import_downwards_only():
    layers = declared_layers((ROOT / "ARCHITECTURE.md").read_text())
    problems = upward_imports(SOURCE, layers)
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_the_check_finds_an_upward_import(tmp_path):
    package = tmp_path / "mritumor"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "reader.py").write_text(
        "def f():\n    from mritumor.cli import main  # lazy, still upward\n"
    )
    (package / "cli.py").write_text("from mritumor.data import reader\n")
    layers = {"__init__": 0, "data": 1, "cli": 2}
    problems = upward_imports(package, layers)
    assert (
        len(problems) == 1 and "mritumor.data.reader (layer 1) imports mritumor.cli" in problems[0]
    )
