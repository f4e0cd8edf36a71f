"""A run folder's files, read once each, and what the files say made the folder."""

from __future__ import annotations

import csv
import datetime as _dt
import json
from collections.abc import Mapping
from pathlib import Path

from mritumor import runfiles
from mritumor.report.html import fmt_bytes
from mritumor.report.scan import RunFolder

VARIANT_FOLDERS = tuple("ABCDEFG")


class Folder:
    """A run folder's files, each parsed once; unreadable files become notes, not crashes."""

    def __init__(self, node: RunFolder):
        self.node, self.path = node, node.path
        self.notes: list[str] = []
        self._cache: dict[str, object] = {}

    def has(self, name: str) -> bool:
        return self.node.has(name)

    def json(self, name: str):
        if name not in self._cache:
            value = None
            if self.has(name):
                try:
                    value = json.loads((self.path / name).read_text())
                except (OSError, ValueError) as error:
                    self.notes.append(f"{name} cannot be read: {error}")
            self._cache[name] = value
        return self._cache[name]

    def yaml(self, name: str):
        if name not in self._cache:
            value = None
            if self.has(name):
                import yaml

                try:
                    value = yaml.safe_load((self.path / name).read_text())
                except (OSError, yaml.YAMLError) as error:
                    self.notes.append(f"{name} cannot be read: {error}")
            self._cache[name] = value
        return self._cache[name]

    def rows(self, name: str) -> list[dict[str, str]] | None:
        """A CSV file's rows as {column: text}; None when it is absent or unreadable."""
        if name not in self._cache:
            value = None
            if self.has(name):
                try:
                    with (self.path / name).open(newline="") as handle:
                        value = list(csv.DictReader(handle))
                except (OSError, csv.Error, UnicodeDecodeError) as error:
                    self.notes.append(f"{name} cannot be read: {error}")
            self._cache[name] = value
        return self._cache[name]


def describe(folder: Folder) -> str:
    """What made this folder: the command (and variant, task) as far as the files tell."""
    node = folder.node
    if not node.is_run:
        return "folder of runs"
    kinds = []
    folds = [c for c in node.child_names if c.startswith("fold_")]
    variants = [c for c in node.child_names if c in VARIANT_FOLDERS]
    if folder.has("demo_summary.json"):
        kinds.append("mritumor demo")
    if folder.has(runfiles.CV_SUMMARY) or folds:
        config = folder.yaml(runfiles.CONFIG)
        k = config.get("cv") if isinstance(config, Mapping) else None
        k = k if isinstance(k, int) and k > 0 else len(folds)
        finished = sum(1 for c in node.children if c.has(runfiles.TEST_METRICS))
        done = "" if folder.has(runfiles.CV_SUMMARY) else f" ({finished} of {k} folds finished)"
        kinds.append(f"train-hierarchical --cv {k}{done}")
    if folder.has(runfiles.COMPARISON_JSON):
        kinds.append("mritumor compare")
    elif folder.has(runfiles.COMPARISON_CSV) or variants:
        kinds.append("train-multitask --variant all")
    if folder.has(runfiles.SSL_CHECKPOINT):
        kinds.append("mritumor pretrain (SimCLR)")
    if folder.has("ssl_eval_metrics.json"):
        kinds.append("mritumor evaluate-ssl")
    if folder.has("attribution_summary.json"):
        kinds.append("mritumor explain")
    metrics = folder.json(runfiles.TEST_METRICS)
    evaluation = folder.json(runfiles.EVALUATION)
    if isinstance(evaluation, Mapping):
        variant = f", variant {evaluation['variant']}" if evaluation.get("variant") else ""
        kinds.append(f"mritumor evaluate ({evaluation.get('task', '?')}{variant})")
    elif isinstance(metrics, Mapping):
        if "variant" in metrics:
            kinds.append(f"train-multitask, variant {metrics['variant']}")
        else:
            kinds.append("train-hierarchical")
    if kinds:
        return " + ".join(kinds)
    config = folder.yaml(runfiles.CONFIG)
    config = config if isinstance(config, Mapping) else {}
    if "variant" in config:
        command = f"train-multitask, variant {config['variant']}"
    elif "pooling" in config:
        command = "train-hierarchical"
    else:
        command = "training run"
    return f"{command}: no test metrics (unfinished, interrupted or still running?)"


def file_size(path: Path) -> str:
    try:
        return fmt_bytes(path.stat().st_size)
    except OSError:
        return "?"


def utc_date(timestamp: float) -> str:
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def written(folder: Folder) -> str | None:
    times = []
    for name in folder.node.files:
        try:
            times.append((folder.path / name).stat().st_mtime)
        except OSError:
            continue
    if not times:
        return None
    first, last = utc_date(min(times)), utc_date(max(times))
    return last if first == last else f"{first} – {last}"
