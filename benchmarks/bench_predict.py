"""Latency of `mritumor predict` for one patient (a folder of 16 slices), printed as one JSON line.

Two figures: in-process (model loaded once, as a service would: decode + preprocess + forward
of one patient, median of --repeats calls; read_ms_median is the decode + preprocess part
alone, forward_ms_median the network's forward pass alone on the decoded bag: the floor no
data path can go under) and the command line (a fresh `mritumor predict` process: Python and torch start-up,
checkpoint loading, the patient, the JSON). Without --checkpoint a
two-step model (--backbone, --image_size) is trained for one epoch on a small synthetic cohort
first: latency does not depend on the weights.

    .venv/bin/python benchmarks/bench_predict.py --backbone mobilenet_v2 --image_size 224
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mritumor.checkpoints import git_commit
from mritumor.cli import main as mritumor
from mritumor.data.synthetic import write_synthetic_dataset
from mritumor.inference.inputs import discover
from mritumor.inference.predictor import Predictor
from mritumor.models.loading import load_model


def train_checkpoint(work: Path, backbone: str, size: int, bag_size: int) -> Path:
    data = write_synthetic_dataset(
        work / "data", patients_per_class=3, slices_per_patient=16, image_size=size, seed=0
    )
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON line
        code = mritumor(
            ["-q", "train-hierarchical", "--data_root", str(data), "--outdir", str(work / "run")]
            + ["--backbone", backbone, "--image_size", str(size), "--epochs", "1"]
            + ["--bag_size", str(bag_size), "--n_boot", "10", "--patience", "0"]
        )
    if code != 0:
        raise SystemExit("training the benchmark model failed")
    return work / "run" / "best.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--checkpoint", default=None, help="a two-step best.pt (else one is trained)"
    )
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--slices", type=int, default=16, help="slices of the patient (the bag)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        checkpoint = Path(args.checkpoint or train_checkpoint(
            work, args.backbone, args.image_size, args.slices
        ))  # fmt: skip
        patient_root = write_synthetic_dataset(
            work / "new", patients_per_class=1, slices_per_patient=args.slices,
            image_size=args.image_size, seed=1,
        )  # fmt: skip
        folder = next(p for p in patient_root.glob("*/*") if p.is_dir())
        for mask in folder.glob("*_mask.png"):
            mask.unlink()  # a new scan has no masks

        started = time.perf_counter()
        loaded = load_model(checkpoint)
        load_s = time.perf_counter() - started
        predictor = Predictor(loaded)
        (patient,) = discover(folder)
        predictor(patient)  # warm-up: first oneDNN primitive creation
        latencies, reading, forward = [], [], []
        images = predictor.read(patient)[0][None]
        present = torch.ones(images.shape[:2], dtype=torch.bool)
        for _ in range(args.repeats):
            started = time.perf_counter()
            record = predictor(patient).record
            latencies.append(time.perf_counter() - started)
            started = time.perf_counter()
            predictor.read(patient)  # the decoding + preprocessing part alone
            reading.append(time.perf_counter() - started)
            started = time.perf_counter()
            with torch.inference_mode():
                predictor.model(images, present)
            forward.append(time.perf_counter() - started)

        command = [str(Path(sys.executable).parent / "mritumor"), "-q", "predict"]
        command += ["--checkpoint", str(checkpoint), "--input", str(folder)]
        cli = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            cli.append(time.perf_counter() - started)
        print(
            json.dumps(
                {
                    "benchmark": "predict",
                    "backbone": loaded.checkpoint["encoder_config"].get("name", args.backbone),
                    "image_size": loaded.preprocessing.image_size,
                    "slices_used": record["n_slices_used"],
                    "in_process_latency_ms_median": round(1000 * statistics.median(latencies), 1),
                    "in_process_latency_ms_min": round(1000 * min(latencies), 1),
                    "read_ms_median": round(1000 * statistics.median(reading), 1),
                    "forward_ms_median": round(1000 * statistics.median(forward), 1),
                    "model_load_ms": round(1000 * load_s, 1),
                    "command_line_s_median": round(statistics.median(cli), 2),
                    "threads": torch.get_num_threads(),
                    "machine": platform.processor() or platform.machine(),
                    "torch": torch.__version__,
                    "commit": git_commit(),
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
