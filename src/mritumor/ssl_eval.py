"""How good are frozen SimCLR embeddings? Judged with labels that pretraining never used.

The encoder is frozen; its features of the labelled training patients' slices train two
standard probes, and their accuracy is measured on the test patients' slices:

* linear probe: scikit-learn ``LogisticRegression`` on standardised features;
* k-NN: ``KNeighborsClassifier`` with cosine distance (k = 5 by default).

The label is the tumour type. ``label_fraction`` < 1 lets the probes see only that fraction of
the training patients' labels (stratified by type), to measure label efficiency. A random-init
encoder (``ckpt="random"``) is the baseline that shows what pretraining added. A 2-D PCA of
the embeddings, coloured by type, is saved as a PNG.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mritumor.checkpoints import CheckpointError, load_checkpoint
from mritumor.config import DataConfig
from mritumor.data.loading.cache import SliceCache
from mritumor.data.loading.datasets import rows_of_patients
from mritumor.data.loading.prepare import prepare_data_for
from mritumor.data.loading.splits import Split, sample_labelled_patients
from mritumor.errors import DataError
from mritumor.models.backbones import Encoder, build_encoder, encoder_from_config
from mritumor.models.simclr import extract_encoder_state

log = logging.getLogger(__name__)

METRICS_NAME = "ssl_eval_metrics.json"
PLOT_NAME = "ssl_embedding_pca.png"


def load_encoder(ckpt_path: str | Path) -> Encoder:
    """The encoder of a ``simclr_pretrain.pt``, built from its ``encoder_config`` and loaded
    with its ``encoder.*`` weights only. Missing or unexpected keys are an error that lists them."""
    return _encoder_from_payload(load_checkpoint(ckpt_path), ckpt_path)


def _encoder_from_payload(payload: dict, source) -> Encoder:
    if "simclr_state" not in payload or "encoder_config" not in payload:
        raise CheckpointError(
            f"{source} has no simclr_state/encoder_config: not a checkpoint of `mritumor pretrain`"
        )
    encoder = encoder_from_config(payload["encoder_config"])
    result = encoder.load_state_dict(extract_encoder_state(payload["simclr_state"]), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{source}: encoder weights do not fit a {payload['encoder_config']['name']} encoder; "
            f"missing {list(result.missing_keys)[:10]}, unexpected {list(result.unexpected_keys)[:10]}"
        )
    return encoder.eval()


@torch.no_grad()
def embed(
    encoder: Encoder, cache: SliceCache, rows, batch_size: int = 128, device: str = "cpu"
) -> np.ndarray:
    """Frozen features (len(rows), feature_dim) of the cache's slices at ``rows``, in eval mode
    (BatchNorm uses its running statistics)."""
    encoder = encoder.eval().to(device)
    rows = np.asarray(rows, dtype=int)
    features = [np.zeros((0, encoder.feature_dim), np.float32)]
    for start in range(0, len(rows), batch_size):
        images = torch.stack([cache.image(int(r)) for r in rows[start : start + batch_size]])
        features.append(encoder(images.to(device)).float().cpu().numpy())
    return np.concatenate(features)


def probe_scores(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    knn_k: int = 5,
    seed: int = 0,
) -> dict:
    """Accuracy and balanced accuracy of a linear probe and a cosine k-NN."""
    if len(set(train_y)) < 2:
        raise DataError("the probes need labelled training slices of at least two tumour types")
    linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
    k = min(knn_k, len(train_x))
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    scores = {}
    for name, model in (("linear_probe", linear), ("knn", knn)):
        predicted = model.fit(train_x, train_y).predict(test_x)
        scores[name] = {
            "accuracy": float(accuracy_score(test_y, predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(test_y, predicted)),
        }
    scores["knn"]["k"] = k
    return scores


def evaluate_ssl(
    ckpt: str | Path,
    data_root: str | Path,
    outdir: str | Path | None = None,
    *,
    encoder_name: str = "mobilenet_v2",
    image_size: int = 224,
    channels: int | None = None,
    intensity: str = "percentile",
    label_fraction: float = 1.0,
    knn_k: int = 5,
    batch_size: int = 128,
    device: str = "auto",
    format: str | None = None,
    strict: bool = False,
    cache_dir: str | Path | None = None,
    split_file: str | Path | None = None,
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    seed: int = 0,
    group_by: str | None = None,
    progress: bool = True,
) -> dict:
    """Linear-probe and k-NN tumour-type accuracy of frozen embeddings; writes
    ``ssl_eval_metrics.json`` and ``ssl_embedding_pca.png`` into ``outdir`` and returns the metrics.

    ``ckpt``: a ``simclr_pretrain.pt`` (its encoder, image size and channels are used), or
    ``"random"`` for a randomly initialised ``encoder_name`` (seeded with ``seed``) at
    ``image_size``/``channels``/``intensity`` (a checkpoint's own intensity method is used,
    ``percentile`` for one written before the choice existed). Probes train on the train+val patients (``label_fraction`` of
    them, stratified by type) and are tested on the test patients. Without ``split_file`` the
    split recorded in the checkpoint is used when it covers the data (so the test patients are
    unseen by pretraining); otherwise a fresh patient-level split is made with ``seed``.
    """
    random_init = str(ckpt) == "random"
    payload = None if random_init else load_checkpoint(ckpt)
    if outdir is None:
        outdir = Path("runs/ssl_eval_random") if random_init else Path(ckpt).parent / "ssl_eval"
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if payload is not None:
        encoder = _encoder_from_payload(payload, ckpt)
        image_size, channels = encoder.config.image_size, encoder.config.in_channels
        recorded_prep = (payload.get("metadata") or {}).get("preprocessing") or {}
        intensity = recorded_prep.get("intensity", "percentile")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device

    data_config = DataConfig(
        data_root=data_root,
        format=format,
        strict=strict,
        image_size=image_size,
        channels=channels,
        intensity=intensity,
        cache_dir=cache_dir,
        split_file=split_file,
        val_frac=val_frac,
        test_frac=test_frac,
        seed=seed,
        group_by=group_by,
    )
    recorded = (payload or {}).get("metadata", {}).get("split")
    split_source = "split_file" if split_file else "new"
    data = None
    if not split_file and recorded:
        path = Split(**recorded).save(outdir / "pretrain_split.json")
        try:
            data = prepare_data_for(replace(data_config, split_file=path), outdir, progress)
            split_source = "checkpoint"
        except DataError as error:
            log.warning(
                "the checkpoint's split does not fit this data (%s); making a new one", error
            )
    if data is None:
        data = prepare_data_for(data_config, outdir, progress)
    if random_init:
        torch.manual_seed(seed)
        encoder = build_encoder(encoder_name, data.cache.prep.channels, image_size)

    table = data.catalog.table
    patient_types = table.groupby("patient_id")["tumor_type"].first().to_dict()
    available = data.patients("train") + data.patients("val")
    labelled = sample_labelled_patients(
        {p: patient_types[p] for p in available if p in patient_types}, label_fraction, seed
    )
    train_rows = rows_of_patients(data.cache, labelled)
    test_rows = rows_of_patients(data.cache, data.patients("test"))
    if len(test_rows) == 0:
        raise DataError("the split has no test slices to measure the probes on")
    features = embed(
        encoder, data.cache, np.concatenate([train_rows, test_rows]), batch_size, device
    )
    labels = table["tumor_type"].to_numpy()[np.concatenate([train_rows, test_rows])]
    n_train = len(train_rows)
    scores = probe_scores(
        features[:n_train], labels[:n_train], features[n_train:], labels[n_train:], knn_k, seed
    )

    name = f"random-init {encoder.config.name}" if random_init else _short_name(Path(ckpt))
    plot_path = plot_embedding(features, labels, n_train, outdir / PLOT_NAME, title=name)
    metrics = {
        "checkpoint": "random" if random_init else str(ckpt),
        "encoder_config": encoder.config.to_dict(),
        "label": "tumor_type",
        "label_fraction": label_fraction,
        "seed": seed,
        "split": {"source": split_source, "strategy": data.split.strategy},
        "patients": {
            "labelled": len(labelled),
            "available_for_training": len(available),
            "test": len(data.patients("test")),
        },
        "slices": {"train": n_train, "test": len(test_rows)},
        "classes": sorted(set(labels)),
        **scores,
        "files": {"metrics": str(outdir / METRICS_NAME), "plot": str(plot_path)},
    }
    (outdir / METRICS_NAME).write_text(json.dumps(metrics, indent=2))
    return metrics


def _short_name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def plot_embedding(
    features: np.ndarray, labels: np.ndarray, n_train: int, path: Path, title: str = ""
) -> Path:
    """2-D PCA of standardised features, one colour per type; train ○, test ×."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    points = PCA(n_components=2).fit_transform(StandardScaler().fit_transform(features))
    figure = Figure(figsize=(6, 5), layout="constrained")
    axes = figure.add_subplot()
    for index, tumor_type in enumerate(sorted(set(labels))):
        colour = f"C{index % 10}"
        for part, marker, rows in (
            ("train", "o", slice(0, n_train)),
            ("test", "x", slice(n_train, None)),
        ):
            chosen = labels[rows] == tumor_type
            x, y = points[rows][chosen].T
            axes.scatter(
                x,
                y,
                c=colour,
                marker=marker,
                s=14,
                alpha=0.7,
                label=f"{tumor_type} ({part})",
            )
    axes.set(xlabel="PC 1", ylabel="PC 2", title=f"Frozen embeddings: {title}")
    axes.legend(fontsize=7, markerscale=1.5)
    figure.savefig(path, dpi=120)
    return path
