"""``mritumor predict``: a trained checkpoint applied to new, unlabelled images."""

from __future__ import annotations

import argparse

from mritumor.commands.common import add_command, add_tta_flag, flag

DESCRIPTION = """\
--input is one image file (PNG/JPG/TIFF/BMP/NPY or DICOM), a NIfTI volume (.nii, .nii.gz: one
patient, one slice per axial plane), a patient folder (2-D slices, DICOM files or a NIfTI
volume; mask files beside the slices are ignored) or a folder of patient folders (every folder
that directly holds image files is a patient, named by its path below --input). No class
folders or labels are needed.

DICOM: a patient folder may hold a whole study as a PACS exports it (or a DICOMDIR and the
files it lists). Files are grouped by StudyInstanceUID/SeriesInstanceUID and each image series
is one result, named <patient>/<SeriesNumber>_<SeriesDescription>, its slices ordered by
position. Skipped, each with its reason under "skipped": localizers and scouts (ImageType
LOCALIZER, or a series whose slices change orientation), objects without pixels (SR, RTSTRUCT,
presentation states), DICOM SEG objects, and series of another modality than MR (unless
--any_modality). --series picks series by number or description. A series whose tags
(SeriesDescription, ContrastBolusAgent, ScanningSequence) name another sequence than the one
the model was trained on (recorded in the checkpoint) gets a "sequence_warning". Slices get the training cache's exact preprocessing; hierarchical
models see the checkpoint's evaluation bag (evenly spaced slices; --all_slices: every slice).

Output: one patient → JSON on stdout; several → predictions.csv in the current folder; --json:
the JSON document on stdout whatever the number.
--output FILE chooses: .json writes the JSON document there, .csv writes one row per patient
to FILE and one row per slice to FILE_slices.csv, .jsonl one line per patient (after a first
{"model": ...} line). CSV and JSON lines are written as the patients are predicted; --resume
keeps the patients such a file already holds and predicts the others. The JSON document is
  {"model": {checkpoint, task, variant, types, grades, temperature, calibrated, ...},
   "patients": [{patient_id, input, n_slices, n_slices_used, predicted_type,
                 type_probabilities {type: p}, slices [{name, ...}], ...}],
   "skipped": [{patient_id, reason}]}
Hierarchical: predicted_grade, grade_probabilities {grade: P(g) = Σt P(t) P(g|t)}, and each
slice's attention_weight. Multi-task: each slice's type_probabilities, tumour_area_px (pixels of
the predicted mask at the image's original size) and tumour_area_mm2 (from DICOM PixelSpacing
or the NIfTI voxel size), the patient's tumour_found (a mask on any slice) and
tumour_volume_ml (areas × slice spacing, for a DICOM series or NIfTI volume; without a known
spacing null, with a size_note saying why); the patient's type_probabilities are the mean of its slices'. Probabilities use the checkpoint's temperature unless --no_calibration.

NIfTI volumes are reoriented to the closest LPS voxel order before they are cut into axial
planes (anterior at the top, the patient's right on the left, as DICOM viewers show them),
whatever the orientation they were stored in (a sagittal MPRAGE gives axial slices).

--save_masks DIR (multi-task checkpoints with a segmentation head): the predicted masks at the
input's original size, <slice>_mask.png (0/255) per slice; for a NIfTI input one
<volume>_mask.nii[.gz] in the input's own voxel order, shape, affine and header (uint8 0/1);
for a DICOM series also <series>_seg.dcm, a DICOM Segmentation (highdicom: one segment
"tumour", referencing the series' instances and frame of reference, the model named in its
algorithm identification) with <series>_seg.json beside it (the series' classification and
the SEG's UIDs); several patients get one sub-folder each. --explain DIR: pixel occlusion and Grad-CAM overlays of the three most
important slices and a slice-importance chart per patient (mritumor.explain).

--engine auto (default) runs the network with ONNX Runtime when it is installed (pip install
'mritumor[onnx]'), else with PyTorch, logging why; onnx requires it, torch never uses it. The
ONNX model is exported once per checkpoint, checked against PyTorch (probabilities within
1e-4) and cached by the checkpoint's hash in .mritumor_onnx/ beside it (or in
$XDG_CACHE_HOME/mritumor/onnx); later runs start without importing torch."""


def register(subcommands) -> None:
    parser = add_command(
        subcommands, "predict", "predict new patients with a trained checkpoint", DESCRIPTION
    )
    flag(
        parser,
        "--checkpoint",
        required=True,
        help="best.pt of train-hierarchical or train-multitask",
    )
    flag(
        parser,
        "--input",
        required=True,
        help="image file, NIfTI volume, patient folder, or folder of patients",
    )
    flag(
        parser,
        "--output",
        default=None,
        help="results file, .json or .csv; when not given: JSON on stdout for one patient, "
        "predictions.csv (+ predictions_slices.csv) in the current folder for several",
    )
    flag(parser, "--save_masks", default=None, metavar="DIR", help="write the predicted masks here")
    flag(parser, "--explain", default=None, metavar="DIR", help="write attribution heat maps here")
    flag(
        parser,
        "--no_calibration",
        action="store_true",
        help="raw softmax probabilities (do not apply the checkpoint's temperature)",
    )
    flag(
        parser,
        "--all_slices",
        action="store_true",
        help="hierarchical: every slice of a patient instead of the checkpoint's bag",
    )
    flag(
        parser,
        "--engine",
        choices=("auto", "onnx", "torch"),
        default="auto",
        help="what runs the network: ONNX Runtime (onnx), PyTorch (torch), or onnx when "
        "installed (auto)",
    )
    flag(
        parser,
        "--resume",
        action="store_true",
        help="skip the patients a .csv/.jsonl --output already holds; append the others",
    )
    flag(
        parser,
        "--threads",
        type=int,
        default=0,
        help="CPU threads of the engine (0: every CPU this process may use)",
    )
    flag(
        parser,
        "--coverage",
        type=float,
        default=None,
        help="coverage of the prediction sets (default: the one the checkpoint was fitted for, "
        "0.9 unless training said otherwise)",
    )
    flag(
        parser,
        "--abstain",
        action="store_true",
        help="answer 'uncertain' (with abstain_reason) instead of a tumour type for an input "
        "the checkpoint flags as out of distribution, or, for a multi-task model that knows no "
        "no_tumour type, whose mask is empty on every slice",
    )
    flag(
        parser,
        "--json",
        action="store_true",
        help="print the JSON document on stdout, also for several patients (instead of "
        "predictions.csv)",
    )
    flag(
        parser,
        "--series",
        default=None,
        metavar="NUMBER|PATTERN",
        help="DICOM studies: analyse only the series with this SeriesNumber, or whose "
        "SeriesDescription matches PATTERN (case-insensitive; a plain word matches anywhere, "
        "wildcards * ? [] match the whole description)",
    )
    flag(
        parser,
        "--any_modality",
        action="store_true",
        help="DICOM: analyse images of other modalities than MR too (refused by default: the "
        "models read brain MRI)",
    )
    flag(
        parser,
        "--volume_index",
        type=int,
        default=None,
        metavar="N",
        help="a 4-D NIfTI file given as --input (several volumes: time points, b-values, "
        "sequences): predict volume N (0-based); refused without it",
    )
    add_tta_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from mritumor.inference.predict import predict

    document = predict(
        args.checkpoint,
        args.input,
        output=args.output,
        save_masks=args.save_masks,
        explain=args.explain,
        calibrated=not args.no_calibration,
        all_slices=args.all_slices,
        progress=not args.quiet,
        engine=args.engine,
        tta=args.tta,
        resume=args.resume,
        threads=args.threads or None,
        coverage=args.coverage,
        abstain=args.abstain,
        series=args.series,
        any_modality=args.any_modality,
        json_stdout=args.json,
        volume_index=args.volume_index,
    )
    if document["output"]:  # otherwise stdout holds the JSON: nothing else may go there
        resumed = f" ({document['resumed']} kept from before)" if document["resumed"] else ""
        print(
            f"{len(document['patients'])} patient(s) predicted{resumed}; results in {document['output']}"
        )
