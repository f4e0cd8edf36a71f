"""How a run was trained: its training curves (Lightning's CSV logs), split and configuration."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path

from mritumor import runfiles
from mritumor.report.folder import Folder
from mritumor.report.html import DASH, esc, fmt, kv, line_chart, parse_float
from mritumor.report.scan import natural_key


def training_curves(folder: Path) -> str:
    """Lightning's CSV logs (``logs/version_*/metrics.csv``) as inline SVG charts."""
    logs = folder / "logs"
    if not logs.is_dir():
        return ""
    versions = sorted(
        (p for p in logs.glob("version_*/metrics.csv")), key=lambda p: natural_key(p.parent.name)
    )
    series: dict[str, dict[float, float]] = {}
    for path in versions:
        try:
            with path.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    x = parse_float(row.get("epoch"))
                    if x is None:
                        continue
                    for name, text in row.items():
                        value = parse_float(text)
                        if name in ("epoch", "step") or value is None:
                            continue
                        series.setdefault(name, {})[x] = value  # the last value of an epoch
        except (OSError, csv.Error):
            continue
    if not series:
        return ""
    losses = {k: sorted(v.items()) for k, v in series.items() if "loss" in k}
    others = {
        k: sorted(v.items())
        for k, v in series.items()
        if "loss" not in k and not k.startswith("lr")
    }
    charts = [
        line_chart(losses, "Loss per epoch"),
        line_chart(others, "Validation metrics per epoch"),
    ]
    charts = [c for c in charts if c]
    source = ", ".join(str(p.relative_to(folder)) for p in versions)
    return (
        '<div class="charts">'
        + "".join(charts)
        + "</div>"
        + f'<p class="meta">From <code>{esc(source)}</code> (x: epoch, counted from 0).</p>'
    )


def split_part(folder: Folder) -> str:
    parts = []
    for name in (runfiles.SPLIT, "pretrain_split.json"):
        split = folder.json(name)
        if not isinstance(split, Mapping):
            continue
        counts = " / ".join(str(len(split.get(p) or [])) for p in ("train", "val", "test"))
        items = [
            ("patients (train / val / test)", counts),
            ("strategy", split.get("strategy")),
            ("grouped by", split.get("group_by")),
            ("seed", split.get("seed")),
        ]
        if split.get("fold") is not None:
            items.append(("fold", split.get("fold")))
        for key, value in (split.get("extra") or {}).items():
            items.append(
                (key, value if isinstance(value, (str, int, float)) else json.dumps(value))
            )
        parts.append(f"<p><code>{name}</code></p>{kv(items)}")
    return "".join(parts)


def config_part(folder: Folder) -> str:
    config = folder.yaml(runfiles.CONFIG)
    if not isinstance(config, Mapping):
        return ""

    def shown(value) -> str:
        return DASH if value is None else fmt(value) if isinstance(value, bool) else str(value)

    items = "".join(
        f"<div><dt>{esc(k)}</dt><dd>{esc(shown(v))}</dd></div>" for k, v in sorted(config.items())
    )
    return (
        f'<dl class="config">{items}</dl><p class="meta">From <code>config.yaml</code>: re-run '
        "with <code>--config config.yaml</code>.</p>"
    )
