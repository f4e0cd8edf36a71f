"""The OOD detector summing a chosen subset of its blocks (encoder resolutions): scores by hand,
the state's round trip, and fit-uncertainty --ood_blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mritumor.checkpoints import load_checkpoint
from mritumor.cli import main
from mritumor.evaluation.ood import OODDetector


def fitted_detector(seed: int = 0) -> tuple[OODDetector, np.ndarray]:
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(200, 9))
    labels = np.repeat([0, 1], 100)
    train[labels == 1] += 1.0
    detector = OODDetector.fit(train, labels, blocks=[3, 2, 4])
    val = rng.normal(size=(80, 9))
    detector.standardise(val)
    return detector, val


def test_only_the_chosen_blocks_are_summed():
    detector, val = fitted_detector()
    test = np.random.default_rng(1).normal(size=(30, 9)) * 2
    standardised = (detector._distances(test) - detector.loc) / detector.scale
    assert np.allclose(detector.score(test), standardised.sum(1))
    detector.use_blocks([2, 0])
    assert detector.used == [0, 2]
    assert np.allclose(detector.score(test), standardised[:, 0] + standardised[:, 2])
    threshold = detector.calibrate(detector.score(val), keep=0.9)
    # the threshold is the 90 % quantile of the validation sums of blocks 0 and 2 only
    val_std = (detector._distances(val) - detector.loc) / detector.scale
    assert threshold == pytest.approx(np.quantile(val_std[:, [0, 2]].sum(1), 0.9, method="inverted_cdf"))  # fmt: skip
    restored = OODDetector.from_state(detector.to_state())
    assert restored.used == [0, 2] and np.allclose(restored.score(test), detector.score(test))
    with pytest.raises(ValueError, match="choose among 0..2"):
        detector.use_blocks([3])


def test_a_state_without_the_key_sums_every_block():
    detector, _ = fitted_detector()
    state = detector.to_state()
    assert "used_blocks" not in state
    assert OODDetector.from_state(state).used is None


def test_fit_uncertainty_ood_blocks_flag(multitask_checkpoint, trained_data, tmp_path):
    output = tmp_path / "refit.pt"
    args = ["-q", "fit-uncertainty", "--checkpoint", str(multitask_checkpoint),
            "--data_root", str(trained_data), "--output", str(output)]  # fmt: skip
    assert main([*args, "--ood_blocks", "1,2"]) == 0
    ood = load_checkpoint(output)["uncertainty"]["ood"]
    assert ood["used_blocks"] == [1, 2]
    kept = tmp_path / "kept.pt"  # re-fitting without the flag keeps the checkpoint's choice
    assert main(["-q", "fit-uncertainty", "--checkpoint", str(output),
                 "--data_root", str(trained_data), "--output", str(kept)]) == 0  # fmt: skip
    assert load_checkpoint(kept)["uncertainty"]["ood"]["used_blocks"] == [1, 2]
    every = tmp_path / "all.pt"
    assert main([*args[:-1], str(every), "--ood_blocks", "all"]) == 0
    assert "used_blocks" not in load_checkpoint(every)["uncertainty"]["ood"]
    assert main([*args, "--ood_blocks", "deep"]) == 2
    assert isinstance(ood["loc"], torch.Tensor)
