"""`mritumor serve` under load and against hostile uploads, printed as one JSON line.

A server is started as its own process on 127.0.0.1 (``mritumor serve``, its temporary folder
a fresh TMPDIR so leftovers can be counted). Then:

* load: ``--requests`` POST /predict of one patient (``--slices`` PNG slices) at each
  ``--concurrency``, each level stopped after ``--max_seconds``: p50/p95/p99 latency,
  requests/s, errors (anything but 200; 503s, the deliberate answer of a full queue, counted
  apart) and the server's resident memory at the start and end of every level;
* overload: a burst beyond the queue (``--queue`` + workers) to show the 503 + Retry-After;
* hostile: a corpus of malformed and malicious uploads (zip bombs, path traversal, links,
  truncated DICOM, NIfTI with absurd dimensions, wrong content types, an empty body, 10,000 tiny
  files, …): per case the status, whether it crashed (a 5xx, a dropped connection or a dead
  server), whether /health answered afterwards and how many temporary files were left.

Without --checkpoint a small two-step model is trained for one epoch on a synthetic cohort.

    .venv/bin/python benchmarks/bench_serve.py --requests 500 --concurrency 1 4 16
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from mritumor.checkpoints import git_commit
from mritumor.cli import main as mritumor
from mritumor.data.acquire.synthetic import write_synthetic_dataset

HOST = "127.0.0.1"


def train_checkpoint(work: Path, backbone: str, size: int, bag_size: int) -> Path:
    data = write_synthetic_dataset(work / "data", patients_per_class=2, slices_per_patient=8, image_size=size, seed=0)  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):
        code = mritumor(
            ["-q", "train-hierarchical", "--data_root", str(data), "--outdir", str(work / "run")]
            + [
                "--backbone",
                backbone,
                "--image_size",
                str(size),
                "--epochs",
                "1",
                "--accelerator",
                "cpu",
            ]  # fmt: skip
            + [
                "--bag_size",
                str(bag_size),
                "--n_boot",
                "10",
                "--patience",
                "0",
                "--num_workers",
                "0",
            ]  # fmt: skip
        )
    if code != 0:
        raise SystemExit("training the benchmark model failed")
    return work / "run" / "best.pt"


# ----------------------------------------------------------------------------- HTTP


def multipart(files: list[tuple[str, bytes]], fields: dict | None = None, field: str = "files"):
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())  # fmt: skip
    for name, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'  # fmt: skip
        parts.append(head.encode("utf-8", "surrogateescape") + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None, timeout: float = 120):  # fmt: skip
    """(status, seconds, body) — status 0 when the connection failed."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, time.perf_counter() - started, data
    except (OSError, http.client.HTTPException) as error:
        return 0, time.perf_counter() - started, str(error).encode()
    finally:
        connection.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def leftovers(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*"))


# ----------------------------------------------------------------------------- load


def load_level(port: int, pid: int, body: bytes, content_type: str, n: int, concurrency: int, max_seconds: float) -> dict:  # fmt: skip
    latencies, statuses, lock = [], {}, threading.Lock()
    issued = [0]
    deadline = time.monotonic() + max_seconds
    memory_start = rss_mb(pid)

    def worker():
        while True:
            with lock:
                if issued[0] >= n or time.monotonic() > deadline:
                    return
                issued[0] += 1
            status, seconds, _ = request(port, "POST", "/predict", body, {"Content-Type": content_type})  # fmt: skip
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(seconds * 1000)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    done = sum(statuses.values())
    q = np.percentile(latencies, [50, 95, 99]) if latencies else [float("nan")] * 3
    return {
        "concurrency": concurrency,
        "requests": done,
        "stopped_by_time": done < n,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(statuses.get(200, 0) / elapsed, 2),
        "p50_ms": round(float(q[0]), 1),
        "p95_ms": round(float(q[1]), 1),
        "p99_ms": round(float(q[2]), 1),
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        "errors": sum(v for k, v in statuses.items() if k not in (200, 503)),
        "busy_503": statuses.get(503, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_rss_mb_start": round(memory_start, 1),
        "server_rss_mb_end": round(rss_mb(pid), 1),
    }


# ----------------------------------------------------------------------------- hostile corpus


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_of(entries: list[tuple[str, bytes]], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_with(info: zipfile.ZipInfo, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(info, data)
    return buffer.getvalue()


def encrypted_flag(data: bytes) -> bytes:
    """Set the 'encrypted' bit in the local and central headers of a one-entry zip."""
    raw = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.find(signature)
        raw[at + offset] |= 0x1
    return bytes(raw)


def nifti(dims: tuple[int, ...], payload: bytes = b"", datatype: int = 4) -> bytes:
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(dims), *dims, *[1] * (7 - len(dims)))
    struct.pack_into("<hh", header, 70, datatype, 16)
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    header[344:348] = b"n+1\x00"
    return bytes(header) + b"\0" * 4 + payload


def dicom_bytes(rows: int = 32, columns: int = 32, truncate: int = 0, frames: int | None = None) -> bytes:  # fmt: skip
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.InstanceNumber = "MR", "anon", 1
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = np.ones((min(rows, 64), min(columns, 64)), np.uint16).tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    return data[: len(data) - truncate] if truncate else data


def hostile_corpus(slice_png: bytes) -> list[tuple[str, bytes, dict]]:
    """(name, body, headers) of every hostile request."""
    cases: list[tuple[str, bytes, dict]] = []

    def files(name, entries, fields=None, field="files"):
        body, content_type = multipart(entries, fields, field)
        cases.append((name, body, {"Content-Type": content_type}))

    zeros = b"\x89PNG\r\n\x1a\n" + bytes(300 * 2**20)
    files("zip bomb: one entry of 300 MiB zeros", [("bomb.zip", zip_of([("p/s.png", zeros)]))])
    files("zip bomb: 600 entries of 1 MiB zeros", [("many.zip", zip_of([(f"p/s{k}.png", b"\x89PNG\r\n\x1a\n" + bytes(2**20)) for k in range(600)]))])  # fmt: skip
    files("zip bomb: zip inside a zip", [("nested.zip", zip_of([("inner.zip", zip_of([("p/s.png", zeros[: 50 * 2**20])]))]))])  # fmt: skip
    files("zip: path traversal ../../", [("t.zip", zip_of([("../../etc/cron.d/x.png", slice_png)]))])  # fmt: skip
    files("zip: traversal inside a folder", [("t.zip", zip_of([("p/../../x.png", slice_png)]))])
    files("zip: backslash traversal", [("t.zip", zip_of([("..\\..\\x.png", slice_png)]))])
    files("zip: absolute path", [("a.zip", zip_of([("/etc/x.png", slice_png)]))])
    files("zip: Windows drive path", [("a.zip", zip_of([("C:/Windows/x.png", slice_png)]))])
    link = zipfile.ZipInfo("p/link.png")
    link.external_attr = (0o120777) << 16
    files("zip: symbolic link entry", [("l.zip", zip_with(link, b"/etc/passwd"))])
    files("zip: encrypted entry", [("e.zip", encrypted_flag(zip_of([("p/s.png", slice_png)], zipfile.ZIP_STORED)))])  # fmt: skip
    files("zip: truncated archive", [("tr.zip", zip_of([("p/s.png", slice_png)])[:60])])
    files("zip: only a text file", [("txt.zip", zip_of([("p/readme.txt", b"hello")]))])
    files("zip: empty archive", [("empty.zip", zip_of([]))])
    files("zip: 10,000 tiny files", [("tiny.zip", zip_of([(f"p/{k}.png", b"\x89PNG\r\n\x1a\n") for k in range(10_000)], zipfile.ZIP_STORED))])  # fmt: skip
    files("zip: duplicate entry names", [("dup.zip", zip_of([("p/s.png", slice_png), ("p/s.png", slice_png[:40])]))])  # fmt: skip
    files("10,000 tiny loose files", [(f"{k}.png", b"\x89PNG\r\n\x1a\n") for k in range(10_000)])
    files("DICOM: truncated pixel data", [("t.dcm", dicom_bytes(truncate=400))])
    files("DICOM: preamble and DICM only", [("p.dcm", bytes(128) + b"DICM")])
    files("DICOM: claims 65535×65535 pixels", [("big.dcm", dicom_bytes(65535, 65535))])
    files("DICOM: claims 100,000 frames", [("frames.dcm", dicom_bytes(frames=100_000))])
    files("DICOM zip: truncated series", [("s.zip", zip_of([(f"s/{k}.dcm", dicom_bytes(truncate=100 * k + 1)) for k in range(4)]))])  # fmt: skip
    files("NIfTI: 30000³ voxels", [("huge.nii", nifti((30000, 30000, 30000)))])
    files("NIfTI: 4-D with 10,000 volumes", [("t.nii", nifti((256, 256, 100, 10_000)))])
    files("NIfTI: negative dimension", [("neg.nii", nifti((64, -64, 10)))])
    files("NIfTI: zero slices", [("zero.nii", nifti((64, 64, 0)))])
    files("NIfTI: header fine, data missing", [("short.nii", nifti((64, 64, 64), b"\0" * 10))])
    files("NIfTI: absurd dims, gzipped", [("huge.nii.gz", gzip.compress(nifti((30000, 30000, 30000))))])  # fmt: skip
    files("NIfTI: truncated gzip stream", [("cut.nii.gz", gzip.compress(nifti((32, 32, 4), np.random.default_rng(1).bytes(32 * 32 * 4 * 4)))[:4000])])  # fmt: skip
    files("NIfTI: 2-D only", [("flat.nii", nifti((64, 64), bytes(64 * 64 * 4)))])
    files("gzip holding text", [("x.nii.gz", gzip.compress(b"not a volume" * 100))])
    files("PNG: truncated", [("t.png", slice_png[: len(slice_png) // 2])])
    ihdr = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0) + b"\0" * 4  # fmt: skip
    files("PNG: claims 100000×100000 pixels", [("bomb.png", ihdr + b"\0" * 100)])
    files("JPEG: header only", [("h.jpg", b"\xff\xd8\xff\xe0" + bytes(100))])
    files("TIFF: header only", [("h.tif", b"II*\x00" + bytes(100))])
    files("BMP: header only", [("h.bmp", b"BM" + bytes(100))])
    files("NPY: header claiming 10¹² elements", [("h.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) + b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }".ljust(117) + b"\n")])  # fmt: skip
    object_npy = io.BytesIO()
    np.save(object_npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    files("NPY: pickled objects", [("p.npy", object_npy.getvalue())])
    files("colour slice for a grayscale model", [("rgb.png", png_bytes(np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)))])  # fmt: skip
    files("1×1 pixel slice", [("one.png", png_bytes(np.full((1, 1), 7, np.uint8)))])
    files("text named .png", [("x.png", b"hello, this is text" * 20)])
    files("HTML named .png", [("x.png", b"<html><script>alert(1)</script></html>" * 10)])
    files("PDF named .dcm", [("x.dcm", b"%PDF-1.7\n" + bytes(400))])
    files("GIF image", [("x.gif", b"GIF89a" + bytes(400))])
    files("empty file", [("e.png", b"")])
    files("file name with traversal and 5,000 characters", [("../" * 1000 + "x" * 2000 + ".png", slice_png)])  # fmt: skip
    files("file name with control characters", [("a\x01\x7f\u202eb.png", slice_png)])
    files("file in the wrong field", [("s.png", slice_png)], field="upload")
    files("unknown model", [("s.png", slice_png)], {"model": "../../etc/passwd"})
    files("50 extra form fields", [("s.png", slice_png)], {f"f{k}": "x" * 10 for k in range(50)})
    cases.append(("empty body, multipart type", b"", {"Content-Type": "multipart/form-data; boundary=x"}))  # fmt: skip
    cases.append(("empty body, no type", b"", {}))
    cases.append(("JSON body", b'{"files": []}', {"Content-Type": "application/json"}))
    cases.append(("raw PNG body", slice_png, {"Content-Type": "image/png"}))
    cases.append(("malformed multipart", b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n" + slice_png, {"Content-Type": "multipart/form-data; boundary=x"}))  # fmt: skip
    cases.append(("multipart without boundary", b"abc", {"Content-Type": "multipart/form-data"}))
    cases.append(("Content-Length of 1 TB announced", b"x" * 10, {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(10**12)}))  # fmt: skip
    return cases


def run_hostile(port: int, proc: subprocess.Popen, tmp: Path, slice_png: bytes) -> dict:
    results = []
    for name, body, headers in hostile_corpus(slice_png):
        status, seconds, data = request(port, "POST", "/predict", body, headers, timeout=120)
        health = request(port, "GET", "/health", timeout=30)[0]
        left = leftovers(tmp)
        for _ in range(20):  # a timed-out job removes its folder when it ends
            if left == 0:
                break
            time.sleep(0.25)
            left = leftovers(tmp)
        try:
            message = json.loads(data).get("error", "")[:100]
        except ValueError:
            message = data[:100].decode("utf-8", "replace")
        crashed = status == 0 or status >= 500 or proc.poll() is not None
        results.append({"case": name, "status": status, "ms": round(seconds * 1000, 1), "crashed": crashed, "health": health, "leftover_files": left, "message": message})  # fmt: skip
        print(f"  {status:3d} {'CRASH ' if crashed else ''}{name}: {message}", file=sys.stderr)
        if proc.poll() is not None:
            break
    return {
        "cases": len(results),
        "crashes": sum(r["crashed"] for r in results),
        "health_failures": sum(r["health"] != 200 for r in results),
        "leftover_files": max((r["leftover_files"] for r in results), default=0),
        "server_alive": proc.poll() is None,
        "results": results,
    }


# ----------------------------------------------------------------------------- main


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--checkpoint", default=None, help="a best.pt (else one is trained)")
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=8, help="PNG slices per request")
    parser.add_argument("--requests", type=int, default=500, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max_seconds", type=float, default=120, help="per level")
    parser.add_argument("--workers", type=int, default=2, help="the server's --workers")
    parser.add_argument("--queue", type=int, default=16, help="the server's --queue")
    parser.add_argument("--threads", type=int, default=1, help="the server's OMP/torch threads")
    parser.add_argument("--no_hostile", action="store_true", help="skip the hostile corpus")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    proc = None
    try:
        checkpoint = Path(args.checkpoint or train_checkpoint(work, args.backbone, args.image_size, args.slices))  # fmt: skip
        tmp = work / "server-tmp"
        tmp.mkdir()
        port = free_port()
        env = dict(os.environ, TMPDIR=str(tmp), OMP_NUM_THREADS=str(args.threads))
        command = [sys.executable, "-m", "mritumor.cli", "-q", "serve", "--checkpoint", str(checkpoint), "--host", HOST, "--port", str(port), "--workers", str(args.workers), "--queue", str(args.queue), "--timeout", "60"]  # fmt: skip
        log = open(work / "server.log", "w")
        proc = subprocess.Popen(command, env=env, stderr=log, stdout=log)
        deadline = time.monotonic() + 120
        while request(port, "GET", "/health", timeout=2)[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {(work / 'server.log').read_text()[-2000:]}")  # fmt: skip
            time.sleep(0.2)
        rng = np.random.default_rng(0)
        pngs = [png_bytes((rng.random((args.image_size, args.image_size)) * 255).astype(np.uint8)) for _ in range(args.slices)]  # fmt: skip
        body, content_type = multipart([(f"slice_{k:03d}.png", data) for k, data in enumerate(pngs)])  # fmt: skip
        status, _, answer = request(port, "POST", "/predict", body, {"Content-Type": content_type})
        if status != 200:
            raise SystemExit(f"a plain request failed ({status}): {answer[:300]!r}")
        memory_idle = rss_mb(proc.pid)
        levels = []
        for concurrency in args.concurrency:
            level = load_level(port, proc.pid, body, content_type, args.requests, concurrency, args.max_seconds)  # fmt: skip
            levels.append(level)
            print(f"  c={concurrency}: {level}", file=sys.stderr)
        burst = args.workers + args.queue + 16
        overload = load_level(port, proc.pid, body, content_type, 4 * burst, burst, args.max_seconds)  # fmt: skip
        hostile = None if args.no_hostile else run_hostile(port, proc, tmp, pngs[0])
        access_lines = sum(1 for _ in open(work / "server.log") if " /predict " in _ or " /health " in _)  # fmt: skip
        print(
            json.dumps(
                {
                    "benchmark": "serve",
                    "checkpoint": str(checkpoint)
                    if args.checkpoint
                    else f"{args.backbone} {args.image_size}px (trained 1 epoch)",  # fmt: skip
                    "slices_per_request": args.slices,
                    "request_bytes": len(body),
                    "server": {
                        "workers": args.workers,
                        "queue": args.queue,
                        "threads": args.threads,
                    },  # fmt: skip
                    "server_rss_mb_idle": round(memory_idle, 1),
                    "server_rss_mb_end": round(rss_mb(proc.pid), 1),
                    "levels": levels,
                    "overload": overload,
                    "hostile": hostile,
                    "leftover_files_end": leftovers(tmp),
                    "access_log_lines": access_lines,
                    "machine": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(),
                    "commit": git_commit(),
                }
            )
        )
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
