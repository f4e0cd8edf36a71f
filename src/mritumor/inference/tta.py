"""Test-time augmentation (``--tta N`` of ``evaluate`` and ``predict``): the network is run on N
views of every slice and the logits are averaged, so an answer does not hinge on the one
orientation the scan happens to be in.

The views are the first N of the eight symmetries of the square (the dihedral group D4), in the
order below: the identity, then the horizontal flip (the one every ``--augment`` level trains
with), then the flips and turns that ``--augment shift`` trains with (sagittal and coronal
slices are seen in every orientation). Each view's mask logits are mapped back by the inverse
symmetry before averaging. Averaging logits, not probabilities, keeps every later step (the
checkpoint's temperature, the conformal sets) unchanged.

The embeddings (what out-of-distribution scores are fitted on) and the bag attention weights
are those of the identity view: the OOD threshold was chosen on un-augmented embeddings.

Works on numpy arrays around any engine of :mod:`mritumor.inference.engines`, so it runs with
ONNX Runtime as well as PyTorch and imports no torch.
"""

from __future__ import annotations

import numpy as np

from mritumor.errors import MritumorError

MAX_VIEWS = 8
AVERAGED = ("class_logits", "mask_logits", "type_logits", "grade_logits")


def _view(images: np.ndarray, index: int) -> np.ndarray:
    """View ``index`` of images (..., H, W): rotation by (index mod 4)·90° after a horizontal
    flip for odd indices (0 identity, 1 h-flip, 2 rot 180°, 3 v-flip, 4 rot 90°, 5 transpose,
    6 rot 270°, 7 anti-transpose)."""
    turns, flip = (0, 0, 2, 2, 1, 1, 3, 3)[index], index % 2 == 1
    out = images[..., ::-1] if flip else images
    return np.rot90(out, turns, axes=(-2, -1))


def _inverse(images: np.ndarray, index: int) -> np.ndarray:
    turns, flip = (0, 0, 2, 2, 1, 1, 3, 3)[index], index % 2 == 1
    out = np.rot90(images, -turns, axes=(-2, -1))
    return out[..., ::-1] if flip else out


def check_views(n: int) -> int:
    if not isinstance(n, int) or not 1 <= n <= MAX_VIEWS:
        raise MritumorError(f"--tta must be a whole number from 1 to {MAX_VIEWS}, not {n!r}")
    return n


class TTAEngine:
    """An engine that runs ``engine`` on ``n`` views and averages the logits (see the module
    docstring); ``n = 1`` is the engine itself. Non-square images get the flips only (a quarter
    turn would change their shape)."""

    def __init__(self, engine, n: int):
        self.engine, self.n = engine, check_views(n)
        self.name = engine.name
        self.outputs = getattr(engine, "outputs", None)
        self.model = getattr(engine, "model", None)

    def run(self, images: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        first = self.engine.run(images, mask)
        if self.n == 1:
            return first
        square = images.shape[-1] == images.shape[-2]
        views = [i for i in range(self.n) if square or _view_keeps_shape(i)]
        sums = {name: first[name].astype(np.float64) for name in AVERAGED if name in first}
        for index in views[1:]:
            got = self.engine.run(np.ascontiguousarray(_view(images, index)), mask)
            for name in sums:
                value = got[name]
                if name == "mask_logits":
                    value = _inverse(value, index)
                sums[name] += value
        return {
            **first,
            **{name: (total / len(views)).astype(np.float32) for name, total in sums.items()},
        }


def _view_keeps_shape(index: int) -> bool:
    return (0, 0, 2, 2, 1, 1, 3, 3)[index] % 2 == 0
