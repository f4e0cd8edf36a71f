"""A nested state of arrays and numbers (the uncertainty state of ``best.pt``) as a NumPy
``.npz`` file, read with ``allow_pickle=False``: an ONNX model cached beside its card carries
it without torch and without unpickling anything. Lists of arrays (one per feature block) are
stored item by item as ``name[i]``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

SEPARATOR = "/"
ITEM = re.compile(r"^(.*)\[(\d+)\]$")  # "means[2]": item 2 of the list "means"


def flatten(state: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + SEPARATOR))
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                flat[f"{name}[{index}]"] = np.asarray(item.numpy() if hasattr(item, "numpy") else item)  # fmt: skip
        elif value is not None:
            array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
            flat[name] = np.asarray(array)
    return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    state: dict = {}
    for name, array in flat.items():
        *parents, leaf = name.split(SEPARATOR)
        node = state
        for parent in parents:
            node = node.setdefault(parent, {})
        value = array.item() if array.ndim == 0 else array
        item = ITEM.match(leaf)
        if item is None:
            node[leaf] = value
        else:
            node.setdefault(item.group(1), {})[int(item.group(2))] = value
    return _lists(state)


def _lists(node):
    """Dicts keyed by item numbers (see :func:`unflatten`) back to lists, in order."""
    if not isinstance(node, dict):
        return node
    if node and all(isinstance(k, int) for k in node):
        return [node[k] for k in sorted(node)]
    return {k: _lists(v) for k, v in node.items()}


def save_state(state: dict, path: str | Path) -> Path:
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial.npz")
    np.savez(partial, **flatten(state))  # type: ignore[arg-type]  # numpy's stub
    partial.replace(path)
    return path


def load_state(path: str | Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return unflatten({name: data[name] for name in data.files})
