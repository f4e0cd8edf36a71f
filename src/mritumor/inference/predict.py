"""``mritumor predict``: a trained checkpoint applied to unlabelled images — input discovery
(:mod:`~mritumor.inference.inputs`), the engine and the network
(:mod:`~mritumor.inference.engines`, :mod:`~mritumor.inference.predictor`), the files written
(:mod:`~mritumor.inference.outputs`) and optional heat maps
(:mod:`~mritumor.inference.explanations`).

A cohort streams: the next patient is read while the network runs on the current one, a .csv
or .jsonl output gets each patient as soon as it is predicted, and ``resume`` skips the
patients such a file already holds. Memory does not grow with the cohort (two patients' images
at a time; the returned document keeps only the small JSON records).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mritumor import runfiles
from mritumor.errors import DataError, MritumorError
from mritumor.inference.inputs import InputChoice, discover
from mritumor.inference.outputs import (
    STREAMED,
    ResultStream,
    algorithm_identification,
    check_output,
    write_masks,
    write_output,
    write_series_segmentation,
)
from mritumor.inference.predictor import Predictor
from mritumor.inference.sequences import add_sequence_warning, trained_sequences

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
    engine: str = "auto",
    resume: bool = False,
    threads: int | None = None,
    coverage: float | None = None,
    abstain: bool = False,
    tta: int = 1,
    series: str | None = None,
    any_modality: bool = False,
    json_stdout: bool = False,
    volume_index: int | None = None,
) -> dict:
    """Predict every patient of ``input``; write the results (see :func:`write_output`):
    ``output`` given → there; else one patient → JSON on stdout, several → ``predictions.csv``
    in the current folder (``json_stdout``: the JSON document on stdout for any number).
    ``engine``: ``torch``, ``onnx`` or ``auto`` (see
    :func:`~mritumor.inference.engines.select_engine`); ``resume``: keep the patients a
    .csv/.jsonl ``output`` already holds and predict only the others. Returns the document
    (``model``, ``patients``, ``skipped``, and ``resumed``: patients kept from the file) with
    ``output`` (the file written, or None for stdout). ``coverage``/``abstain``/``tta``: see
    :class:`~mritumor.inference.predictor.Predictor`; ``series``/``any_modality``: which
    DICOM series, ``volume_index`` which volume of a 4-D NIfTI file (see
    :class:`~mritumor.inference.inputs.InputChoice`). A DICOM series whose
    tags name another sequence than the model was trained on gets a ``sequence_warning``."""
    if json_stdout and output is not None:
        raise MritumorError("--json prints the JSON document on stdout; --output writes a file: give one of them")  # fmt: skip
    output = check_output(output)
    loaded = None
    if explain is not None:  # explaining needs the torch network whatever the engine
        from mritumor.models.loading import load_model

        loaded = load_model(checkpoint)
    predictor = Predictor.from_checkpoint(
        checkpoint,
        engine,
        calibrated,
        all_slices,
        threads=threads,
        loaded=loaded,
        coverage=coverage,
        abstain=abstain,
        tta=tta,
    )
    model = predictor.loaded
    if save_masks is not None and not model.segments:
        raise MritumorError(
            f"--save_masks needs a multi-task checkpoint with a segmentation head (variants A, "
            f"C–G); {checkpoint} is {model.describe()}, which predicts no masks"
        )
    if explain is not None and not model.classifies:
        raise MritumorError(
            f"--explain explains class predictions; {checkpoint} is {model.describe()}, which "
            "has no classification head"
        )
    patients = discover(input, InputChoice(series, any_modality, volume_index))
    many = len(patients) > 1
    trained = (
        trained_sequences(model.checkpoint)  # a LoadedModel (torch engine)
        if hasattr(model, "checkpoint")
        else list(getattr(model, "trained_sequences", []))  # a cached ONNX model's card
    )
    if output is None and many and not json_stdout:
        output = Path(runfiles.PREDICTIONS)
    if resume and (output is None or output.suffix.lower() not in STREAMED):
        raise MritumorError("--resume continues a .csv or .jsonl --output; give one")
    explainer = None
    if explain is not None:  # imported on demand: plotting is not needed to predict
        from mritumor.inference.explanations import build_explainer, explain_patient

        explainer = build_explainer(loaded, predictor.temperature)
    header = predictor.header()
    algorithm = algorithm_identification(checkpoint, model.variant) if save_masks else {}
    stream = None
    if output is not None and output.suffix.lower() in STREAMED:
        stream = ResultStream(output, header, resume=resume)
        if stream.done:
            log.info("--resume: %d patient(s) of %s already predicted; skipped", len(stream.done), output)  # fmt: skip
    todo = [p for p in patients if stream is None or p.patient_id not in stream.done]
    records: list[dict] = []
    skipped = [entry for patient in patients for entry in patient.skipped]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="Predicting", unit="patient", disable=not (progress and many))
    try:
        for patient, prediction in predictor.stream(todo):
            bar.update()
            if isinstance(prediction, DataError):
                if not many:
                    raise prediction
                log.warning("patient %s skipped: %s", patient.patient_id, prediction)
                skipped.append({"patient_id": patient.patient_id, "reason": str(prediction)})
                if stream is not None:
                    stream.skip(patient.patient_id, str(prediction))
                continue
            warning = add_sequence_warning(prediction.record, patient.series, trained)
            if warning:
                log.warning("%s: %s", patient.patient_id, warning)
            if save_masks is not None:
                folder = Path(save_masks) / (patient.patient_id if many else "")
                files = write_masks(prediction, patient, folder)
                prediction.record["mask_files"] = [str(f) for f in files]
                if patient.series is not None:
                    write_series_segmentation(prediction, patient, folder, algorithm)
            if explainer is not None:
                folder = Path(explain) / (patient.patient_id if many else "")
                files = explain_patient(explainer, prediction, folder)
                prediction.record["explain_files"] = [str(f) for f in files]
            if stream is not None:
                stream.write(prediction.record)
            records.append(prediction.record)
    finally:
        bar.close()
        if stream is not None:
            stream.close()
    resumed = len(patients) - len(todo)
    if not records and not resumed:
        raise DataError(
            f"no patient of --input {input} could be predicted; first reason: {skipped[0]['reason']}"
        )
    if skipped:
        log.warning("%d of %d patient(s) skipped", len(skipped), len(patients))
    document = {"model": header, "patients": records, "skipped": skipped}
    written = output if stream is not None else write_output(document, output)
    document["output"] = str(written) if written else None
    document["resumed"] = resumed
    return document
