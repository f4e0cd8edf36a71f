"""Finding the run folders under the paths given to ``mritumor report``.

A folder is a *run* when it holds one of :data:`MARKERS` (the files the commands write). Runs
nest: a cross-validation run holds its ``fold_k/`` runs, a ``--variant all`` run its ``A/`` …
``G/`` runs, a demo folder every run it made. Only JSON/YAML/CSV/PNG files are read later;
checkpoints (``*.pt``) are only noticed, never loaded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mritumor import runfiles
from mritumor.errors import MritumorError

MARKERS = (
    runfiles.TEST_METRICS,  # train-hierarchical, train-multitask (one variant), evaluate
    runfiles.CV_SUMMARY,  # train-hierarchical --cv K
    runfiles.COMPARISON_JSON,  # compare
    runfiles.COMPARISON_CSV,  # train-multitask --variant all (and compare, beside its JSON)
    runfiles.SSL_CHECKPOINT,  # pretrain
    "ssl_eval_metrics.json",  # evaluate-ssl
    "attribution_summary.json",  # explain
    "demo_summary.json",  # demo
    runfiles.EVALUATION,  # evaluate
    runfiles.BEST_CHECKPOINT,  # a training run that has not written its test metrics (yet)
    runfiles.CONFIG,  # every training command writes it first
)
# folders never scanned for runs (Lightning's own output, caches, version control)
SKIP_DIRS = {"checkpoints", "logs", "lightning_logs", "__pycache__", "node_modules"}
MAX_DEPTH = 8
MAX_FOLDERS = 20_000  # a report of a whole disk is not what anybody wants


@dataclass
class RunFolder:
    """One folder of the report: a recognised run, or (``is_run`` False) a plain container."""

    path: Path
    files: list[str]
    children: list[RunFolder] = field(default_factory=list)
    is_run: bool = True

    def has(self, name: str) -> bool:
        return name in self.files

    @property
    def child_names(self) -> list[str]:
        return [child.path.name for child in self.children]

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


def natural_key(name: str) -> list:
    """``fold_2`` before ``fold_10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class _Budget:
    def __init__(self) -> None:
        self.folders = 0


def _scan(path: Path, depth: int, budget: _Budget) -> list[RunFolder]:
    budget.folders += 1
    if budget.folders > MAX_FOLDERS:
        return []
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    files, folders = [], []
    for entry in entries:
        try:
            if entry.is_file():
                files.append(entry.name)
            elif (
                entry.is_dir(follow_symlinks=False)
                and not entry.name.startswith(".")
                and entry.name not in SKIP_DIRS
            ):
                folders.append(entry.name)
        except OSError:
            continue
    files.sort(key=natural_key)
    children: list[RunFolder] = []
    if depth < MAX_DEPTH:
        for name in sorted(folders, key=natural_key):
            children.extend(_scan(path / name, depth + 1, budget))
    if any(marker in files for marker in MARKERS):
        return [RunFolder(path, files, children)]
    return children


def find_runs(root: str | Path) -> RunFolder:
    """The tree of run folders in ``root`` (``root`` itself, or a container holding them)."""
    root = Path(root)
    if not root.exists():
        raise MritumorError(f"RUN_DIR {root} does not exist")
    if not root.is_dir():
        raise MritumorError(f"RUN_DIR {root} is not a folder (give the run's output folder)")
    found = _scan(root, 0, _Budget())
    if len(found) == 1 and found[0].path == root:
        return found[0]
    if not found:
        raise MritumorError(
            f"RUN_DIR {root} holds no run folder mritumor recognises: none of "
            f"{', '.join(MARKERS)} is in it or its sub-folders"
        )
    files = sorted((p.name for p in root.iterdir() if p.is_file()), key=natural_key)
    return RunFolder(root, files, found, is_run=False)
