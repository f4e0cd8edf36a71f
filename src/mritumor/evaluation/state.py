"""A nested state of arrays and numbers (the uncertainty state of ``best.pt``) as a NumPy
``.npz`` file, read with ``allow_pickle=False``: an ONNX model cached beside its card carries
it without torch and without unpickling anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEPARATOR = "/"


def flatten(state: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + SEPARATOR))
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
        node[leaf] = array.item() if array.ndim == 0 else array
    return state


def save_state(state: dict, path: str | Path) -> Path:
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial.npz")
    np.savez(partial, **flatten(state))  # type: ignore[arg-type]  # numpy's stub
    partial.replace(path)
    return path


def load_state(path: str | Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return unflatten({name: data[name] for name in data.files})
