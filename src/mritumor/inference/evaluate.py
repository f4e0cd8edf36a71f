"""``mritumor evaluate``: external validation of a checkpoint on any dataset the data layer
reads, with the same artifacts as the end of training (plus ``evaluation.json``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mritumor import runfiles
from mritumor.errors import DataError
from mritumor.inference.checks import check_channels, check_types, unknown_grades
from mritumor.models.loading import load_model

log = logging.getLogger(__name__)


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_root: str | Path,
    outdir: str | Path,
    split_file: str | Path | None = None,
    format: str | None = None,
    strict: bool = False,
    batch_size: int = 8,
    n_boot: int = 1000,
    seed: int = 0,
    calibrated: bool = True,
    n_overlays: int = 8,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    engine: str = "auto",
    tta: int = 1,
) -> dict:
    """The full test evaluation of a trained model on ``data_root``: every patient (or the test
    part of ``split_file``), the checkpoint's preprocessing, bags and temperature; the same
    artifacts as at the end of training, plus ``evaluation.json`` (what was evaluated).
    ``engine``: what runs the network (:func:`~mritumor.inference.engines.select_onnx`;
    ``torch`` runs the checkpoint's network exactly as training's test part does); ``tta``:
    views averaged per slice (:mod:`~mritumor.inference.tta`; 1: none)."""
    from mritumor.data.loading.cache import SliceCache, infer_channels
    from mritumor.data.loading.splits import Split, load_split
    from mritumor.data.reading.readers import read_catalog
    from mritumor.inference.engines import TorchEngine, select_onnx
    from mritumor.inference.tta import TTAEngine, check_views
    from mritumor.resources import check_writable

    outdir = check_writable(outdir, "--outdir")
    loaded = load_model(checkpoint)
    found = select_onnx(engine, checkpoint, loaded)
    runner = found[0] if found else None
    if check_views(tta) > 1:
        runner = TTAEngine(runner if runner is not None else TorchEngine(loaded), tta)
    catalog = read_catalog(data_root, format=format, strict=strict)
    check_channels(infer_channels(catalog), loaded, f"--data_root {data_root}")
    if split_file:
        split = load_split(split_file, catalog.table)
        patients = [p for p in split.test if p in set(catalog.patients)]
        strategy = f"test part of {split_file}"
    else:
        patients = catalog.patients
        strategy = "external: every patient of the data is a test patient"
    if not patients:
        raise DataError(f"no test patient of --split_file {split_file} is in {data_root}")
    catalog = catalog.subset(patients)
    trained_on = set((loaded.checkpoint.get("split") or {}).get("train") or []) | set(
        (loaded.checkpoint.get("split") or {}).get("val") or []
    )
    seen = [p for p in patients if p in trained_on]
    if seen:
        log.warning(
            "%d of the %d patients evaluated were training or validation patients of this "
            "checkpoint (e.g. %s): their metrics are optimistic; --split_file SPLIT.json of the "
            "training run evaluates its test part only",
            len(seen),
            len(patients),
            ", ".join(seen[:3]),
        )
    check_types(catalog.table["tumor_type"].unique(), loaded, f"--data_root {data_root}")
    odd_grades = unknown_grades(catalog.table, loaded) if loaded.task == "hierarchical" else {}
    if odd_grades:
        log.warning(
            "grade(s) unknown to the model (it knows %s): %s; these patients' grade is treated "
            "as unknown (no grade metric)",
            ", ".join(loaded.labels.grades) or "none",
            ", ".join(f"{g} ({n} patient(s))" for g, n in odd_grades.items()),
        )
    cache = SliceCache.build(
        catalog, loaded.preprocessing, cache_dir=cache_dir, strict=strict, progress=progress
    )
    patients = cache.catalog.patients  # patients whose every slice failed to decode are gone
    temperature = loaded.temperature if calibrated else 1.0
    if loaded.task == "hierarchical":
        result = _evaluate_hierarchical(loaded, cache, patients, outdir, temperature, batch_size, n_boot, seed, runner)  # fmt: skip
    else:
        result = _evaluate_multitask(
            loaded,
            cache,
            patients,
            outdir,
            temperature,
            batch_size,
            n_boot,
            seed,
            n_overlays,
            runner,
        )
    Split(train=[], val=[], test=list(patients), strategy=strategy, seed=seed).save(
        outdir / runfiles.SPLIT
    )
    summary = {
        "checkpoint": str(Path(checkpoint).absolute()),
        "task": loaded.task,
        "variant": loaded.variant,
        "data_root": str(Path(data_root).absolute()),
        "split": strategy,
        "n_patients": len(patients),
        "n_slices": len(cache.catalog),
        "skipped_items": len(cache.catalog.problems),
        "temperature": temperature,
        "calibrated": calibrated and temperature != 1.0,
        "unknown_grades": odd_grades,
        "preprocessing": loaded.checkpoint.get("preprocessing"),
        "bag": {"bag_size": loaded.bag_size, "bag_policy": loaded.bag_policy}
        if loaded.task == "hierarchical"
        else None,
        "model_made": (loaded.checkpoint.get("metadata") or {}).get("date"),
        "engine": runner.name if runner is not None else "torch",
        "tta": tta,
    }
    (outdir / runfiles.EVALUATION).write_text(json.dumps(summary, indent=2))
    return {**result, "evaluation": summary}


def _evaluate_hierarchical(loaded, cache, patients, outdir, temperature, batch_size, n_boot, seed, engine=None):  # fmt: skip
    from torch.utils.data import DataLoader

    from mritumor.data.loading.datasets import PatientBagDataset, collate_bags
    from mritumor.evaluation.hierarchical import evaluate_hierarchical
    from mritumor.evaluation.uncertainty import write_test_uncertainty
    from mritumor.inference.arrays import hierarchical_probabilities
    from mritumor.inference.loops import predict_bags  # the loop training's test part uses

    slices = (loaded.checkpoint.get("bag") or {}).get("bag_slices", "all")
    dataset = PatientBagDataset(
        cache, patients, loaded.labels, loaded.bag_size, loaded.bag_policy, slices=slices
    )
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_bags)
    prediction = predict_bags(loaded.model, loader, engine)
    result = evaluate_hierarchical(
        prediction,
        loaded.labels,
        outdir,
        temperature=temperature,
        n_boot=n_boot,
        seed=seed,
        catalog=cache.catalog,
    )
    probs = hierarchical_probabilities(
        prediction["type_logits"].numpy(), prediction["grade_logits"].numpy(), temperature
    )
    result["uncertainty"] = write_test_uncertainty(
        loaded.uncertainty, outdir, prediction["patient_embedding"], probs["type"],
        prediction["type_true"], loaded.labels.types, probs["grade_e2e_normalised"],
        prediction["grade_true"], loaded.labels.grades,
    )  # fmt: skip
    return result


def _evaluate_multitask(
    loaded, cache, patients, outdir, temperature, batch_size, n_boot, seed, n_overlays, engine=None
):
    from torch.utils.data import DataLoader

    from mritumor.data.loading.datasets import SliceDataset, rows_of_patients
    from mritumor.evaluation.multitask import evaluate_multitask
    from mritumor.evaluation.uncertainty import ood_features, softmax, write_test_uncertainty
    from mritumor.inference.loops import predict_slices  # the loop training's test part uses

    dataset = SliceDataset(cache, rows_of_patients(cache, patients), loaded.labels)
    prediction = predict_slices(loaded.model, DataLoader(dataset, batch_size=batch_size), engine)
    if prediction["class_logits"] is not None:
        probs = softmax(prediction["class_logits"].numpy(), temperature)
        write_test_uncertainty(
            loaded.uncertainty, outdir, ood_features(loaded.uncertainty, prediction), probs,
            prediction["type_true"], loaded.labels.types,
        )  # fmt: skip
    return evaluate_multitask(
        prediction,
        loaded.labels,
        outdir,
        cache=cache,
        variant=loaded.variant,
        temperature=temperature,
        n_boot=n_boot,
        seed=seed,
        n_overlays=n_overlays,
    )
