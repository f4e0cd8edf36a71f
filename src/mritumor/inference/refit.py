"""Fitting what "knowing when not to answer" needs to a trained multi-task network: the
out-of-distribution detector on the training slices' feature statistics, its threshold and the
conformal scores on the validation slices and patients. Used at the end of training
(:mod:`mritumor.tasks.uncertainty`) and by ``mritumor fit-uncertainty``, which re-fits the state
of an existing ``best.pt`` (an older checkpoint, another coverage) without training again."""

from __future__ import annotations

import logging
from pathlib import Path

from mritumor.errors import DataError, MritumorError

log = logging.getLogger(__name__)


def slice_uncertainty(
    model,
    train_loader,
    val_loader,
    patient_ids,
    temperature,
    coverage,
    method="lac",
    mondrian=False,
    used_blocks=None,
) -> dict:
    """The uncertainty state of a multi-task network from un-augmented loaders of its training
    and validation slices (``patient_ids``: the patient of every cache row; ``method``: the
    conformal score, :data:`mritumor.evaluation.conformal.METHODS`; ``mondrian``: one set
    threshold per class, slice and patient level)."""
    from mritumor.evaluation.uncertainty import fit_uncertainty, softmax
    from mritumor.inference.loops import predict_slices

    train = predict_slices(model, train_loader)
    val = predict_slices(model, val_loader)
    return fit_uncertainty(
        train["ood_features"],
        train["type_true"],
        val["ood_features"],
        softmax(val["class_logits"].numpy(), temperature),
        val["type_true"],
        val_groups=patient_ids[val["rows"]].tolist(),
        coverage=coverage,
        method=method,
        blocks=model.ood_blocks,
        feature_name="ood_features",
        mondrian=mondrian,
        used_blocks=used_blocks,
    )


def refit_uncertainty(
    checkpoint: str | Path,
    data_root: str | Path,
    output: str | Path,
    coverage: float | None = None,
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    method: str | None = None,
    mondrian: bool | None = None,
    used_blocks: list[int] | str | None = None,
    source_name=None,
    sources: str | Path | None = None,
    format: str | None = None,
) -> dict:
    """``checkpoint`` with its uncertainty state fitted again on the training and validation
    patients its run recorded (read from ``data_root``), written to ``output``; the network,
    temperature and everything else unchanged. ``coverage`` and ``method`` (the conformal
    score) default to the checkpoint's, and so does ``mondrian`` (None: Mondrian sets again if
    the checkpoint had them; True/False: per-class or marginal sets), and so do
    ``used_blocks`` (the OOD detector's summed blocks; "all" for every one). ``data_root`` may be
    several roots (with ``source_name``) or ``sources`` a sources file, as the run was trained.
    Returns the new state."""
    from torch.utils.data import DataLoader

    from mritumor.checkpoints import save_checkpoint
    from mritumor.data.loading.cache import SliceCache
    from mritumor.data.loading.datasets import SliceDataset, rows_of_patients
    from mritumor.data.loading.prepare import read_data
    from mritumor.models.loading import load_model

    if Path(output).resolve() == Path(checkpoint).resolve():  # resolve: links and ../ too
        raise MritumorError("--output must differ from --checkpoint (the original is kept)")
    from mritumor.evaluation.conformal import check_options

    check_options(0.9 if coverage is None else coverage, method or "lac")
    if batch_size < 1:
        raise MritumorError(f"--batch_size must be at least 1, not {batch_size}")
    loaded = load_model(checkpoint)
    if loaded.task != "multitask" or not loaded.classifies:
        raise MritumorError(
            f"{checkpoint}: fit-uncertainty re-fits multi-task checkpoints with a classifier "
            f"(variants B–G); this one is {loaded.task} {loaded.variant or ''}".rstrip()
        )
    split = loaded.checkpoint.get("split") or {}
    catalog = read_data(data_root, format, source_name=source_name, sources=sources)
    known = set(catalog.patients)
    parts = {name: [p for p in split.get(name) or [] if p in known] for name in ("train", "val")}
    for name, patients in parts.items():
        if not patients:
            raise DataError(
                f"none of the checkpoint's {name} patients is in --data_root {data_root}: give "
                "the data the model was trained on"
            )
        missing = len(split.get(name) or []) - len(patients)
        if missing:
            log.warning("%d %s patient(s) of the checkpoint are not in %s", missing, name, data_root)  # fmt: skip
    cache = SliceCache.build(
        catalog.subset(parts["train"] + parts["val"]),
        loaded.preprocessing,
        cache_dir=cache_dir,
        progress=progress,  # fmt: skip
    )
    loaders = {
        name: DataLoader(
            SliceDataset(cache, rows_of_patients(cache, patients), loaded.labels),
            batch_size=batch_size,
        )
        for name, patients in parts.items()
    }
    fitted = (loaded.checkpoint.get("uncertainty") or {}).get("conformal", {})
    if used_blocks is None:
        used_blocks = ((loaded.checkpoint.get("uncertainty") or {}).get("ood") or {}).get("used_blocks")  # fmt: skip
    elif used_blocks == "all":
        used_blocks = None
    state = slice_uncertainty(
        loaded.model, loaders["train"], loaders["val"], cache.catalog.table["patient_id"].to_numpy(), loaded.temperature,
        coverage if coverage is not None else fitted.get("coverage", 0.9),
        method or fitted.get("method", "lac"),
        mondrian=bool(fitted.get("mondrian", False)) if mondrian is None else mondrian,
        used_blocks=None if used_blocks is None else list(used_blocks),
    )  # fmt: skip
    payload = {k: v for k, v in loaded.checkpoint.items() if k != "format"}
    payload["uncertainty"] = state
    save_checkpoint(payload, output)
    return state
