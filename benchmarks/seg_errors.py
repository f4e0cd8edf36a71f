r"""Where a multi-task model's Dice is lost, on its run's *validation* patients (never the test
split): per tumour type, the pixel recall and precision of the predicted masks, the share of
tumour slices predicted empty, the median ratio of predicted to reference area, and the Dice at
other mask thresholds (the network's logit compared with t instead of 0). A model whose Dice
rises a lot with a lower threshold is set at the wrong operating point; one whose recall stays
low at every threshold does not see the tumour's extent.

Usage (2 cores: it runs the network over the validation slices once, a few minutes):
    python benchmarks/seg_errors.py --run runs/recipes_cpu/F --data_root ../shared/data/figshare \
        [--thresholds -4 -2 0 2] [--tta 2] [--out runs/recipes_cpu/F/seg_errors.json]
``--tta N`` averages the mask logits over N flips/turns of every slice, as ``evaluate --tta``
does (the network runs N times).
Prints a Markdown table; writes the figures as JSON (default: RUN/seg_errors.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

DEFAULT_THRESHOLDS = (-4.0, -2.0, 0.0, 2.0)


def error_table(logits: np.ndarray, true: np.ndarray, types: np.ndarray, names, thresholds) -> dict:
    """Per type (and ``all``) over slices with tumour: Dice at each threshold, and at logit > 0
    pixel recall / precision (pooled over the type's pixels), the share of slices predicted
    empty and the median predicted/reference area ratio."""
    from mritumor.evaluation.segmentation import dice_iou  # the project's Dice (MONAI)

    tumour = true.reshape(len(true), -1).any(axis=1)
    logits, true, types = logits[tumour], true[tumour], np.asarray(types)[tumour]
    table = {}
    for name, rows in [("all", np.ones(len(types), bool))] + [
        (n, types == k) for k, n in enumerate(names)
    ]:
        if not rows.any():
            continue
        pred, ref = logits[rows] > 0, true[rows]
        hit = (pred & ref).sum()
        table[name] = {
            "n_slices": int(rows.sum()),
            "dice": {
                f"{t:g}": float(dice_iou(logits[rows] > t, ref)[0].mean()) for t in thresholds
            },
            "pixel_recall": float(hit / ref.sum()),
            "pixel_precision": float(hit / pred.sum()) if pred.any() else None,
            "empty_prediction_share": float((pred.reshape(len(pred), -1).sum(1) == 0).mean()),
            "median_area_ratio": float(np.median(pred.sum(axis=(1, 2)) / ref.sum(axis=(1, 2)))),
        }
    return table


def markdown(table: dict, thresholds) -> str:
    head = " | ".join(f"Dice at logit > {t:g}" for t in thresholds)
    lines = [
        f"| type | slices | {head} | pixel recall | pixel precision | predicted empty | area ratio |",
        "|---" * (6 + len(thresholds)) + "|",
    ]
    for name, row in table.items():
        dice = " | ".join(f"{row['dice'][f'{t:g}']:.3f}" for t in thresholds)
        precision = row["pixel_precision"]
        lines.append(
            f"| {name} | {row['n_slices']} | {dice} | {row['pixel_recall']:.3f} | "
            f"{'—' if precision is None else f'{precision:.3f}'} | "
            f"{row['empty_prediction_share']:.3f} | {row['median_area_ratio']:.2f} |"
        )
    return "\n".join(lines)


def validation_logits(run: Path, data_root: str, batch_size: int = 16, tta: int = 1):
    """Mask logits (averaged over ``tta`` views, through the engine ``evaluate`` runs), reference
    masks and type indices of the run's validation slices."""
    from torch.utils.data import DataLoader

    from mritumor.data.loading.cache import SliceCache
    from mritumor.data.loading.datasets import SliceDataset, rows_of_patients
    from mritumor.data.loading.splits import load_split
    from mritumor.data.reading.readers import read_catalog
    from mritumor.inference.engines import TorchEngine
    from mritumor.inference.tta import TTAEngine
    from mritumor.models.loading import load_model

    loaded = load_model(run / "best.pt")
    if not loaded.model.segments:
        raise SystemExit(f"{run}/best.pt does not segment (variant {loaded.variant})")
    engine = TTAEngine(TorchEngine(loaded), tta)
    catalog = read_catalog(data_root)
    split = load_split(run / "split.json", catalog.table)
    catalog = catalog.subset([p for p in split.val if p in set(catalog.patients)])
    cache = SliceCache.build(catalog, loaded.preprocessing, progress=False)
    dataset = SliceDataset(cache, rows_of_patients(cache, cache.catalog.patients), loaded.labels)
    logits, masks, types = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size):
        logits.append(engine.run(batch["image"].numpy())["mask_logits"][:, 0])
        masks.append(batch["mask"][:, 0].numpy().astype(bool))
        types.append(batch["tumor_type"].numpy())
    return np.concatenate(logits), np.concatenate(masks), np.concatenate(types), loaded.labels.types


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="a train-multitask run folder")
    parser.add_argument("--data_root", required=True, help="the data the run was trained on")
    parser.add_argument("--thresholds", type=float, nargs="+", default=DEFAULT_THRESHOLDS)
    parser.add_argument("--tta", type=int, default=1, help="views averaged per slice (1: none)")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default RUN/seg_errors.json)")
    args = parser.parse_args(argv)
    logits, true, types, names = validation_logits(args.run, args.data_root, tta=args.tta)
    table = error_table(logits, true, types, names, args.thresholds)
    out = args.out or args.run / "seg_errors.json"
    out.write_text(
        json.dumps(
            {"run": str(args.run), "part": "validation", "tta": args.tta, "types": table}, indent=2
        )
    )
    print(markdown(table, args.thresholds))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
