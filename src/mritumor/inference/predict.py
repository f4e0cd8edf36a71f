"""``mritumor predict``: a trained checkpoint applied to unlabelled images — input discovery
(:mod:`~mritumor.inference.inputs`), the network (:mod:`~mritumor.inference.predictor`), the
files written (:mod:`~mritumor.inference.outputs`) and optional heat maps
(:mod:`~mritumor.inference.explanations`)."""

from __future__ import annotations

import logging
from pathlib import Path

from mritumor.errors import DataError, MritumorError
from mritumor.inference.inputs import discover
from mritumor.inference.outputs import check_output, write_masks, write_output
from mritumor.inference.predictor import Predictor
from mritumor.models.loading import load_model

log = logging.getLogger(__name__)


def predict(
    checkpoint: str | Path,
    input: str | Path,
    output: str | Path | None = None,
    save_masks: str | Path | None = None,
    explain: str | Path | None = None,
    calibrated: bool = True,
    all_slices: bool = False,
    progress: bool = True,
) -> dict:
    """Predict every patient of ``input``; write the results (see :func:`write_output`):
    ``output`` given → there; else one patient → JSON on stdout, several → ``predictions.csv``
    in the current folder. Returns the document (``model``, ``patients``, ``skipped``) with
    ``output`` (the file written, or None for stdout)."""
    output = check_output(output)
    loaded = load_model(checkpoint)
    if save_masks is not None and not loaded.segments:
        raise MritumorError(
            f"--save_masks needs a multi-task checkpoint with a segmentation head (variants A, "
            f"C–G); {checkpoint} is {loaded.describe()}, which predicts no masks"
        )
    if explain is not None and not loaded.classifies:
        raise MritumorError(
            f"--explain explains class predictions; {checkpoint} is {loaded.describe()}, which "
            "has no classification head"
        )
    patients = discover(input)
    many = len(patients) > 1
    predictor = Predictor(loaded, calibrated=calibrated, all_slices=all_slices)
    explainer = None
    if explain is not None:  # imported on demand: plotting is not needed to predict
        from mritumor.inference.explanations import build_explainer, explain_patient

        explainer = build_explainer(loaded, predictor.temperature)
    records, skipped = [], []
    from tqdm.auto import tqdm

    for patient in tqdm(
        patients, desc="Predicting", unit="patient", disable=not (progress and many)
    ):
        try:
            prediction = predictor(patient)
        except DataError as error:
            if not many:
                raise
            log.warning("patient %s skipped: %s", patient.patient_id, error)
            skipped.append({"patient_id": patient.patient_id, "reason": str(error)})
            continue
        if save_masks is not None:
            folder = Path(save_masks) / (patient.patient_id if many else "")
            files = write_masks(prediction, patient, folder)
            prediction.record["mask_files"] = [str(f) for f in files]
        if explainer is not None:
            folder = Path(explain) / (patient.patient_id if many else "")
            files = explain_patient(explainer, prediction, folder)
            prediction.record["explain_files"] = [str(f) for f in files]
        records.append(prediction.record)
    if not records:
        raise DataError(
            f"no patient of --input {input} could be predicted; first reason: {skipped[0]['reason']}"
        )
    if skipped:
        log.warning("%d of %d patient(s) skipped", len(skipped), len(patients))
    document = {"model": predictor.header(), "patients": records, "skipped": skipped}
    if output is None and many:
        output = Path("predictions.csv")
    written = write_output(document, output)
    document["output"] = str(written) if written else None
    return document
