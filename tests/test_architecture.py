"""Layers import downwards only: the order is the ``layers`` block of ARCHITECTURE.md, and every
``import mritumor.…`` in src/ (lazy imports inside functions included) must name a module of the
same or a lower layer. Inside the data layer the ``data-layers`` block orders its sub-packages
the same way."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "mritumor"


def declared_layers(text: str, block_name: str = "layers") -> dict[str, int]:
    """``unit → layer number`` from a fenced ```layers block: one line per layer, lowest first,
    ``N name: unit unit …`` where a unit is a top-level module or package of mritumor (of
    mritumor.data in the ```data-layers block)."""
    block = re.search(rf"```{block_name}\n(.*?)```", text, re.S)
    assert block, f"ARCHITECTURE.md has no ```{block_name} block"
    layers: dict[str, int] = {}
    for line in block.group(1).strip().splitlines():
        number, _, units = line.partition(":")
        level = int(number.split()[0])
        for unit in units.split():
            assert unit not in layers, f"{unit} is in two layers"
            layers[unit] = level
    return layers


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def data_unit_of(module: str) -> str | None:
    """The sub-package of mritumor.data a module is in; None outside them."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "data" else None


def upward_imports(source: Path, layers: dict[str, int], unit=unit_of) -> list[str]:
    problems = []
    for path in sorted(source.rglob("*.py")):
        relative = path.relative_to(source.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        here = unit(module)
        if here is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from mritumor.data import loading` names a module too
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            seen = set()
            for target in targets:
                if target != "mritumor" and not target.startswith("mritumor."):
                    continue
                there = unit(target)
                if there is None or there not in layers or there in seen:
                    continue  # outside the checked units, or a name that is not a module
                seen.add(there)
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


def test_data_sub_packages_have_an_order():
    layers = declared_layers((ROOT / "ARCHITECTURE.md").read_text(), "data-layers")
    data = SOURCE / "data"
    assert [p.name for p in data.glob("*.py")] == ["__init__.py"], (
        "every data module belongs in a sub-package of mritumor.data"
    )
    units = {p.parent.name for p in data.glob("*/__init__.py")}
    assert units == set(layers), "the data-layers block of ARCHITECTURE.md and data/ differ"


def test_data_sub_packages_import_downwards_only():
    layers = declared_layers((ROOT / "ARCHITECTURE.md").read_text(), "data-layers")
    problems = upward_imports(SOURCE, layers, data_unit_of)
    assert not problems, "upward imports inside the data layer:\n" + "\n".join(problems)


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


def test_the_check_finds_an_upward_import_inside_the_data_layer(tmp_path):
    package = tmp_path / "mritumor"
    for sub in ("reading", "loading"):
        (package / "data" / sub).mkdir(parents=True)
        (package / "data" / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "reading" / "io.py").write_text("from mritumor.data import loading\n")
    (package / "data" / "loading" / "cache.py").write_text("from mritumor.data.reading import io\n")
    problems = upward_imports(package, {"reading": 0, "loading": 1}, data_unit_of)
    assert len(problems) == 1 and "mritumor.data.reading.io (layer 0) imports" in problems[0]
