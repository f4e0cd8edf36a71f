"""The top of a run's section: demo summary, what was evaluated, the SimCLR checkpoint, the
frozen-embedding probes and the attribution run."""

from __future__ import annotations

from collections.abc import Mapping

from mritumor import runfiles
from mritumor.report.explain import explain_part
from mritumor.report.folder import Folder, file_size
from mritumor.report.html import esc, fmt, fmt_interval, is_interval, kv, table


def summary_part(folder: Folder) -> str:
    parts = []
    demo = folder.json("demo_summary.json")
    if isinstance(demo, Mapping):
        items = [(k, fmt_interval(v) if is_interval(v) else v) for k, v in demo.items()]
        parts.append(f"<p>Demo summary (<code>demo_summary.json</code>):</p>{kv(items)}")
    evaluation = folder.json(runfiles.EVALUATION)
    if isinstance(evaluation, Mapping):
        keys = ("checkpoint", "task", "variant", "data_root", "split", "n_patients", "n_slices",
                "skipped_items", "temperature", "calibrated", "model_made")  # fmt: skip
        items = [(k, evaluation[k]) for k in keys if k in evaluation]
        parts.append(f"<p>What was evaluated (<code>evaluation.json</code>):</p>{kv(items)}")
    if folder.has(runfiles.SSL_CHECKPOINT):
        size = file_size(folder.path / runfiles.SSL_CHECKPOINT)
        parts.append(
            f"<p>SimCLR checkpoint <code>simclr_pretrain.pt</code> ({esc(size)}): encoder and "
            "projection weights, the encoder's configuration and the run's metadata (epochs, best "
            "epoch, data, versions, commit). The report does not open checkpoints; "
            "<code>mritumor evaluate-ssl --ckpt</code> measures the encoder.</p>"
        )
    ssl = folder.json("ssl_eval_metrics.json")
    if isinstance(ssl, Mapping):
        parts.append(ssl_part(ssl))
    explain = folder.json("attribution_summary.json")
    if isinstance(explain, Mapping):
        parts.append(explain_part(explain))
    return "".join(parts)


def ssl_part(ssl: Mapping) -> str:
    rows = []
    for name, label in (("linear_probe", "linear probe"), ("knn", "k-NN")):
        scores = ssl.get(name)
        if isinstance(scores, Mapping):
            if name == "knn" and scores.get("k") is not None:
                label = f"k-NN (k = {scores['k']})"
            rows.append((label, fmt(scores.get("accuracy")), fmt(scores.get("balanced_accuracy"))))
    encoder = ssl.get("encoder_config") or {}
    patients, slices, split = (ssl.get(k) or {} for k in ("patients", "slices", "split"))
    items = [
        ("checkpoint", ssl.get("checkpoint")),
        ("encoder", f"{encoder.get('name', '?')}, {encoder.get('in_channels', '?')} channel(s), "
                    f"{encoder.get('image_size', '?')} px, {encoder.get('feature_dim', '?')} features"),
        ("label", ssl.get("label")),
        ("label fraction", ssl.get("label_fraction")),
        ("patients (labelled / available / test)",
         f"{patients.get('labelled', '?')} / {patients.get('available_for_training', '?')} / "
         f"{patients.get('test', '?')}"),
        ("slices (train / test)", f"{slices.get('train', '?')} / {slices.get('test', '?')}"),
        ("split", f"{split.get('source', '?')} ({split.get('strategy', '?')})"),
        ("classes", ", ".join(map(str, ssl.get("classes") or []))),
        ("seed", ssl.get("seed")),
    ]  # fmt: skip
    return (
        "<p>Frozen-embedding probes (<code>ssl_eval_metrics.json</code>), test slices:</p>"
        + table(["probe", "accuracy", "balanced accuracy"], rows)
        + kv(items)
    )
