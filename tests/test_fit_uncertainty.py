"""mritumor fit-uncertainty: the state it fits equals the one training fitted on the same
patients, an older checkpoint without one gets one (and predict then flags), the network is
copied unchanged, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mritumor.checkpoints import load_checkpoint, save_checkpoint
from mritumor.cli import main
from mritumor.errors import MritumorError
from mritumor.inference.refit import refit_uncertainty


def test_refit_equals_what_training_fitted(multitask_checkpoint, trained_data, tmp_path):
    output = tmp_path / "refit.pt"
    assert main(["-q", "fit-uncertainty", "--checkpoint", str(multitask_checkpoint),
                 "--data_root", str(trained_data), "--output", str(output)]) == 0  # fmt: skip
    before, after = load_checkpoint(multitask_checkpoint), load_checkpoint(output)
    old, new = before["uncertainty"], after["uncertainty"]
    assert new["ood"]["features"] == "ood_features" and len(new["ood"]["precision"]) >= 3
    assert new["ood"]["threshold"] == pytest.approx(old["ood"]["threshold"], rel=1e-4)
    assert new["patient"]["ood_threshold"] == pytest.approx(old["patient"]["ood_threshold"], rel=1e-4)  # fmt: skip
    np.testing.assert_allclose(new["conformal"]["scores"], old["conformal"]["scores"], atol=1e-5)
    for key, value in before["model_state"].items():
        assert torch.equal(after["model_state"][key], value), key
    assert after["split"] == before["split"] and after["temperature"] == before["temperature"]


def test_an_older_checkpoint_gets_a_state_and_predict_flags(
    multitask_checkpoint, trained_data, tmp_path, capsys
):
    import json

    payload = load_checkpoint(multitask_checkpoint)
    payload.pop("uncertainty")
    old = save_checkpoint({k: v for k, v in payload.items() if k != "format"}, tmp_path / "old.pt")
    refit_uncertainty(old, trained_data, tmp_path / "new.pt", coverage=0.8, progress=False)
    state = load_checkpoint(tmp_path / "new.pt")["uncertainty"]
    assert state["conformal"]["coverage"] == 0.8
    patient = next(trained_data.glob("pituitary-g1/*"))
    capsys.readouterr()
    argv = ["-q", "predict", "--checkpoint", str(tmp_path / "new.pt"), "--input", str(patient)]
    assert main([*argv, "--engine", "torch"]) == 0
    (record,) = json.loads(capsys.readouterr().out)["patients"]
    assert record["in_distribution"] in (True, False) and "ood_score" in record


def test_refusals(multitask_checkpoint, hierarchical_checkpoint, trained_data, tmp_path):
    with pytest.raises(MritumorError, match="must differ"):
        refit_uncertainty(multitask_checkpoint, trained_data, multitask_checkpoint, progress=False)
    link = tmp_path / "link.pt"  # the same file by another name is the same file
    link.symlink_to(multitask_checkpoint)
    with pytest.raises(MritumorError, match="must differ"):
        refit_uncertainty(multitask_checkpoint, trained_data, link, progress=False)
    for coverage in (0.0, 1.5, 90.0):  # 0 is not "the default", 90 is not a share
        with pytest.raises(MritumorError, match="--coverage must be a share"):
            refit_uncertainty(multitask_checkpoint, trained_data, tmp_path / "c.pt", coverage)
    with pytest.raises(MritumorError, match="--batch_size"):
        refit_uncertainty(multitask_checkpoint, trained_data, tmp_path / "b.pt", batch_size=0)
    with pytest.raises(MritumorError, match="multi-task"):
        refit_uncertainty(hierarchical_checkpoint, trained_data, tmp_path / "h.pt", progress=False)
    empty = tmp_path / "other"
    (empty / "meningioma-g1" / "p0").mkdir(parents=True)
    from conftest import write_png

    write_png(empty / "meningioma-g1" / "p0" / "s0.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(MritumorError, match="none of the checkpoint's train patients"):
        refit_uncertainty(multitask_checkpoint, empty, tmp_path / "x.pt", progress=False)


def test_refit_with_aps_scores_the_mass_ranked_above_the_class(
    multitask_checkpoint, trained_data, tmp_path
):
    """--conformal_method aps: the stored method, the checkpoint's coverage kept, and each
    unit's APS score (mass of the classes at or above its class) is at least its probability
    of the class (= 1 - its LAC score), so the sorted scores dominate elementwise."""
    output = tmp_path / "aps.pt"
    assert main(["-q", "fit-uncertainty", "--checkpoint", str(multitask_checkpoint),
                 "--data_root", str(trained_data), "--output", str(output),
                 "--conformal_method", "aps"]) == 0  # fmt: skip
    old = load_checkpoint(multitask_checkpoint)["uncertainty"]
    new = load_checkpoint(output)["uncertainty"]
    assert old["conformal"]["method"] == "lac" and new["conformal"]["method"] == "aps"
    assert new["conformal"]["coverage"] == old["conformal"]["coverage"]
    aps, p_true = np.asarray(new["conformal"]["scores"]), 1 - np.asarray(old["conformal"]["scores"])
    assert len(aps) == len(p_true)
    assert np.all(aps >= np.sort(p_true) - 1e-6) and np.all(aps <= 1 + 1e-6)
    # a re-fit without the flag keeps the checkpoint's method
    refit_uncertainty(output, trained_data, tmp_path / "again.pt", progress=False)
    assert load_checkpoint(tmp_path / "again.pt")["uncertainty"]["conformal"]["method"] == "aps"
    with pytest.raises(MritumorError, match="--conformal_method must be one of lac, aps"):
        refit_uncertainty(output, trained_data, tmp_path / "x.pt", method="raps", progress=False)


def test_training_refuses_a_bad_set_option_before_reading_data(tmp_path, capsys):
    """A recipe or --config value skips argparse's choices: checked before any data is read
    (--data_root does not exist, so reaching the data would give another error)."""
    config = tmp_path / "c.yaml"
    for bad, message in (("conformal_method: raps", "--conformal_method must be one of"),
                         ("coverage: 90", "--coverage must be a share")):  # fmt: skip
        config.write_text(bad)
        for command in ("train-multitask", "train-hierarchical"):
            argv = [command, "--config", str(config), "--data_root", str(tmp_path / "absent"),
                    "--outdir", str(tmp_path / "out")]  # fmt: skip
            assert main(argv) == 2
            assert message in capsys.readouterr().err, (command, bad)


def test_the_flag_choices_are_the_conformal_methods():
    from mritumor.cli import build_parser
    from mritumor.commands.common import _leaf_parsers
    from mritumor.evaluation.conformal import METHODS

    commands = {p.prog.split()[-1]: p for p in _leaf_parsers(build_parser())}
    for name in ("fit-uncertainty", "train-multitask", "train-hierarchical"):
        (action,) = [a for a in commands[name]._actions if a.dest == "conformal_method"]
        assert tuple(action.choices) == METHODS, name
