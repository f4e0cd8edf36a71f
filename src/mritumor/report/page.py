"""The page being built: options, the images it embeds (within a size budget), notes,
sub-section headings, the table of contents and what made the report."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from mritumor import __version__
from mritumor.report.html import data_uri, esc, figure, fmt_bytes, png_size

MB = 1024 * 1024


@dataclass
class Options:
    max_image_bytes: int = 5 * MB  # one image larger than this is left out, with a note
    max_total_bytes: int = 80 * MB  # images stop being embedded past this, with a note
    max_gallery: int = 24  # 'other figures' per run folder
    preview_rows: int = 8  # rows of predictions.csv shown
    title: str = "mritumor report"


@dataclass
class TocEntry:
    number: str
    title: str
    kind: str
    anchor: str
    depth: int


@dataclass
class Page:
    options: Options
    toc: list[TocEntry] = field(default_factory=list)
    embedded_bytes: int = 0
    n_images: int = 0
    skipped_images: list[str] = field(default_factory=list)

    def image(self, path: Path, caption: str, name: str, wide: bool = False) -> str:
        """The image as a figure with a data URI, or a note saying why it is not there."""
        try:
            size = path.stat().st_size
        except OSError as error:
            return note(f"{name}: cannot be read ({error})")
        if size > self.options.max_image_bytes:
            self.skipped_images.append(str(path))
            return note(
                f"{name} ({fmt_bytes(size)}) is larger than "
                f"{fmt_bytes(self.options.max_image_bytes)}: not embedded; open it beside the run"
            )
        if self.embedded_bytes + size > self.options.max_total_bytes:
            self.skipped_images.append(str(path))
            return note(
                f"{name}: not embedded, the report already holds "
                f"{fmt_bytes(self.embedded_bytes)} of images"
            )
        try:
            data = path.read_bytes()
        except OSError as error:
            return note(f"{name}: cannot be read ({error})")
        self.embedded_bytes += size
        self.n_images += 1
        shape = png_size(data)
        wide = wide or (shape is not None and shape[0] >= 1.8 * max(shape[1], 1))  # panels
        return figure(data_uri(data, path.suffix), caption, name, wide)


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def subsection(level: int, title: str, body: str, css: str = "") -> str:
    if not body:
        return ""
    tag = f"h{min(level, 6)}"
    return f'<div class="part {esc(css)}"><{tag} class="sub">{esc(title)}</{tag}>{body}</div>'


def environment() -> list[tuple[str, str]]:
    """What made the report (runs' own versions and commit live in their checkpoints)."""
    versions = [f"Python {platform.python_version()}"]
    for package in ("torch", "lightning", "numpy"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    items = [
        ("generated", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("by", f"mritumor {__version__}" + (f" (commit {git_commit()})" if git_commit() else "")),
        ("with", ", ".join(versions)),
        ("machine", f"{platform.system()} {platform.machine()}"),
    ]
    return items


_COMMIT: list[str | None] = []


def git_commit() -> str | None:
    if not _COMMIT:
        try:
            result = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=5,
            )
            _COMMIT.append(result.stdout.strip() or None)
        except (OSError, subprocess.SubprocessError):
            _COMMIT.append(None)
    return _COMMIT[0]


def toc_html(entries: list[TocEntry]) -> str:
    items = "".join(
        f'<li class="d{e.depth}"><a href="#{e.anchor}">{esc(e.number)} {esc(e.title)}</a> '
        f'<span class="kind">{esc(e.kind)}</span></li>'
        for e in entries
    )
    return f'<nav class="toc"><h2>Contents</h2><ul>{items}</ul></nav>'
