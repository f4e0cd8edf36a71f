"""Latency of `mritumor predict` for one patient (a folder of 16 slices), per engine (PyTorch and
ONNX Runtime, side by side in one run), printed as one JSON line.

In-process (model loaded once, as a service would: decode + preprocess + forward of one patient,
median of --repeats calls; read_ms_median is the decode + preprocess part alone,
forward_ms_median the engine's forward pass alone on the decoded bag) and the command line (a
fresh `mritumor predict` process, the ONNX model already cached; `import torch, torchvision`
timed in the same run for scale). ``onnx_speedup`` is torch / onnx latency. With --cohort N a
folder of N generated patients is predicted by fresh processes (ONNX engine, CSV streamed):
patients/minute and the peak memory (max RSS) at N/4 and N patients. Without --checkpoint a
two-step model (--backbone, --image_size) is trained for one epoch on a small synthetic cohort
first: latency does not depend on the weights.

    .venv/bin/python benchmarks/bench_predict.py --backbone mobilenet_v2 --image_size 224
    .venv/bin/python benchmarks/bench_predict.py --backbone mobilenet_v2 --image_size 224 --cohort 200
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mritumor.checkpoints import git_commit
from mritumor.cli import main as mritumor
from mritumor.data.acquire.synthetic import write_synthetic_dataset
from mritumor.inference.engines import machine_threads
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


def in_process(predictor: Predictor, patient, repeats: int) -> dict:
    predictor(patient)  # warm-up: first primitive creation
    latencies, reading, forward = [], [], []
    images = predictor.read(patient)[0][None]
    present = np.ones(images.shape[:2], dtype=bool)
    for _ in range(repeats):
        started = time.perf_counter()
        predictor(patient)
        latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        predictor.read(patient)  # the decoding + preprocessing part alone
        reading.append(time.perf_counter() - started)
        started = time.perf_counter()
        predictor.engine.run(images, present)
        forward.append(time.perf_counter() - started)
    return {
        "latency_ms_median": round(1000 * statistics.median(latencies), 1),
        "latency_ms_min": round(1000 * min(latencies), 1),
        "read_ms_median": round(1000 * statistics.median(reading), 1),
        "forward_ms_median": round(1000 * statistics.median(forward), 1),
    }


def probabilities(record: dict) -> np.ndarray:
    """Every probability of a record (types, grades, attention weights), in a fixed order."""
    values = list(record["type_probabilities"].values())
    values += list((record.get("grade_probabilities") or {}).values())
    values += [s["attention_weight"] for s in record["slices"]]
    return np.array(values)


def timed(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 2)


PEAK = (  # VmHWM: the peak of this process alone (ru_maxrss would include the forked parent's)
    "import re, sys; from mritumor.cli import main; code = main(sys.argv[1:]); "
    "status = open('/proc/self/status').read(); "
    "print(int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1)) // 1024, file=sys.stderr); "
    "sys.exit(code)"
)


def cohort_run(work: Path, checkpoint: Path, n: int, size: int, slices: int) -> dict:
    """Fresh processes over folders of n/4 and n generated patients (the ONNX engine)."""
    result = {}
    for count in (max(1, n // 4), n):
        root = write_synthetic_dataset(
            work / f"cohort{count}", patients_per_class=max(1, count // 5),
            slices_per_patient=slices, image_size=size, seed=2,
        )  # fmt: skip
        for mask in root.rglob("*_mask.png"):
            mask.unlink()
        patients = sum(1 for p in root.glob("*/*") if p.is_dir())
        command = [sys.executable, "-c", PEAK, "-q", "predict", "--engine", "onnx"]
        command += ["--checkpoint", str(checkpoint), "--input", str(root)]
        command += ["--output", str(work / f"cohort{count}.csv")]
        started = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        result[f"patients_{patients}"] = {
            "seconds": round(seconds, 1),
            "patients_per_minute": round(60 * patients / seconds, 1),
            "peak_rss_mb": int(done.stderr.strip().splitlines()[-1]),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--checkpoint", default=None, help="a two-step best.pt (else one is trained)"
    )
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--slices", type=int, default=16, help="slices of the patient (the bag)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=machine_threads())
    parser.add_argument("--cli_runs", type=int, default=3)
    parser.add_argument("--cohort", type=int, default=0, help="also predict N patients")
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
        (patient,) = discover(folder)
        engines = {}
        started = time.perf_counter()
        onnx = Predictor.from_checkpoint(checkpoint, engine="onnx", threads=args.threads, loaded=loaded)  # fmt: skip
        export_s = time.perf_counter() - started  # export + parity check (cached afterwards)
        torch_predictor = Predictor(loaded)
        for name, predictor in (("torch", torch_predictor), ("onnx", onnx)):
            engines[name] = in_process(predictor, patient, args.repeats)
        a, b = torch_predictor(patient).record, onnx(patient).record
        difference = float(np.abs(probabilities(a) - probabilities(b)).max())

        base = [str(Path(sys.executable).parent / "mritumor"), "-q", "predict"]
        base += ["--checkpoint", str(checkpoint), "--input", str(folder)]
        cli = {name: timed(base + ["--engine", name], args.cli_runs) for name in ("torch", "onnx")}
        import_torch = timed([sys.executable, "-c", "import torch, torchvision"], args.cli_runs)
        result = {
            "benchmark": "predict",
            "backbone": loaded.checkpoint["encoder_config"].get("name", args.backbone),
            "image_size": loaded.preprocessing.image_size,
            "slices_used": a["n_slices_used"],
            "engines": engines,
            "onnx_speedup": round(
                engines["torch"]["latency_ms_median"] / engines["onnx"]["latency_ms_median"], 2
            ),
            "onnx_forward_speedup": round(
                engines["torch"]["forward_ms_median"] / engines["onnx"]["forward_ms_median"], 2
            ),
            "max_probability_difference": difference,
            "model_load_ms": round(1000 * load_s, 1),
            "onnx_export_and_check_s": round(export_s, 2),
            "command_line_s_median": cli,
            "import_torch_torchvision_s_median": import_torch,
            "onnx_command_line_over_import_torch": round(cli["onnx"] / import_torch, 2),
            "threads": args.threads,
            "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
            "commit": git_commit(),
        }
        if args.cohort:
            result["cohort"] = cohort_run(work, checkpoint, args.cohort, args.image_size, args.slices)  # fmt: skip
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
