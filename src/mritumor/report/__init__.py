"""``mritumor report``: one self-contained HTML page summarising run folders.

Every RUN_DIR is scanned for the run folders the commands write (:mod:`mritumor.report.scan`);
each gets a section, nested like the folders: metrics with their 95 % intervals, cross-validation
means, comparison tables, curves, confusion matrices, calibration, segmentation overlays,
training curves from the CSV logs, predictions, split, configuration, files, and any other
figure. The page needs nothing from the network: images are base64 data URIs, the CSS is
inline, there is no script. Only JSON, YAML, CSV and image files are read (the Markdown the
commands write for people is not: its tables come from the JSON and CSV files beside it);
checkpoints are never opened (so neither torch nor the run's code version is needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mritumor.errors import MritumorError
from mritumor.report.html import esc, key_value_table
from mritumor.report.page import Options, Page, environment, toc_html
from mritumor.report.render import render_folder
from mritumor.report.scan import MARKERS, RunFolder, find_runs

__all__ = ["MARKERS", "Options", "RunFolder", "build_report", "find_runs", "write_report"]

CSS = """
:root { --fg: #1d2430; --muted: #5b6472; --line: #d5dbe3; --accent: #2458a6; --soft: #f4f6f9; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--fg); background: #fff; max-width: 1200px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.3em; }
h2, h3, h4, h5, h6 { line-height: 1.25; }
section.run > h2 { border-bottom: 3px solid var(--accent); padding-bottom: 4px; margin-top: 2.2em; }
section.run > h3 { border-bottom: 1px solid var(--accent); padding-bottom: 3px; margin-top: 1.8em; }
section.run section.run { margin-left: 10px; padding-left: 14px; border-left: 3px solid var(--soft); }
.sub { color: var(--accent); margin: 1.1em 0 0.4em; font-size: 1.02em; }
.meta { color: var(--muted); font-size: 13px; margin: 0.2em 0 0.6em; }
.meta span { font-weight: 600; color: var(--fg); }
.note { background: #fff7e6; border-left: 3px solid #e0a400; padding: 4px 10px; margin: 6px 0;
  font-size: 13.5px; }
code { font: 12.5px/1.3 ui-monospace, "DejaVu Sans Mono", monospace; background: var(--soft);
  padding: 0 3px; border-radius: 3px; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 0.4em 0 0.9em; font-size: 13.5px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
thead th { background: var(--soft); }
table.kv th { background: var(--soft); font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.metrics td:first-child { font-family: ui-monospace, "DejaVu Sans Mono", monospace;
  font-size: 12.5px; }
table.small { font-size: 12px; }
table.confusion caption, table caption { caption-side: top; text-align: left; color: var(--muted);
  font-size: 12.5px; padding-bottom: 2px; }
.scroll { overflow-x: auto; max-width: 100%; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(430px, 1fr)); gap: 14px;
  margin: 0.5em 0 1em; }
figure { margin: 0; border: 1px solid var(--line); padding: 6px; background: #fff; }
figure.wide { grid-column: 1 / -1; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: 12.5px; color: var(--muted); margin-top: 4px; }
figcaption .file { font-family: ui-monospace, monospace; font-size: 11.5px; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
svg.chart { max-width: 100%; height: auto; border: 1px solid var(--line); }
svg.chart text { font: 11px system-ui, "DejaVu Sans", sans-serif; fill: #333; }
svg.chart text.title { font-weight: 600; font-size: 12.5px; }
dl.config { columns: 3 250px; column-gap: 24px; font-size: 12.5px; margin: 0.4em 0; }
dl.config div { break-inside: avoid; display: flex; gap: 8px; border-bottom: 1px dotted var(--line);
  padding: 1px 0; }
dl.config dt { font-family: ui-monospace, monospace; color: var(--muted); }
dl.config dd { margin: 0 0 0 auto; text-align: right; overflow-wrap: anywhere; }
details summary { cursor: pointer; color: var(--accent); font-size: 13.5px; margin: 4px 0; }
nav.toc { background: var(--soft); border: 1px solid var(--line); padding: 10px 18px;
  margin: 1em 0 1.5em; }
nav.toc h2 { margin: 0.1em 0 0.4em; font-size: 1.15em; }
nav.toc ul { list-style: none; padding: 0; margin: 0; columns: 2 420px; }
nav.toc li { margin: 1px 0; break-inside: avoid; }
nav.toc li.d1 { padding-left: 1.4em; } nav.toc li.d2 { padding-left: 2.8em; }
nav.toc li.d3, nav.toc li.d4, nav.toc li.d5 { padding-left: 4.2em; }
nav.toc .kind { color: var(--muted); font-size: 12.5px; }
a { color: var(--accent); }
header.top { border-bottom: 1px solid var(--line); padding-bottom: 8px; }
footer { margin-top: 3em; color: var(--muted); font-size: 12.5px; }
@media print {
  body { max-width: none; padding: 0; font-size: 10.5pt; }
  nav.toc { break-after: page; }
  section.run.depth-0 { break-before: page; }
  figure, table, svg, dl.config div, .part > h3, .part > h4 { break-inside: avoid; }
  .sub { break-after: avoid; }
  .figs { grid-template-columns: 1fr 1fr; }
  a { color: inherit; text-decoration: none; }
  section.run section.run { border-left: none; margin-left: 0; padding-left: 0; }
}
@page { margin: 14mm; }
"""


def build_report(paths: Sequence[str | Path], options: Options | None = None) -> str:
    """The HTML page for ``paths`` (each a run folder or a folder holding runs)."""
    options = options or Options()
    if not paths:
        raise MritumorError("give at least one RUN_DIR")
    trees: list[tuple[str, RunFolder]] = [(str(p), find_runs(p)) for p in paths]
    page = Page(options)
    sections = [
        render_folder(page, tree, str(index), 0, title)
        for index, (title, tree) in enumerate(trees, start=1)
    ]
    n_runs = sum(1 for _, tree in trees for node in tree.walk() if node.is_run)
    header = [
        '<header class="top">',
        f"<h1>{esc(options.title)}</h1>",
        f'<p class="meta">{n_runs} run folder(s) under '
        + ", ".join(f"<code>{esc(p)}</code>" for p in paths)
        + f"; {page.n_images} image(s) embedded.</p>",
        key_value_table(environment()),
        '<p class="meta">The versions and commit above are those of the report; each run\'s '
        "own (date, versions, commit, machine) are stored in its checkpoint's metadata, which "
        "the report does not open. Intervals are 95 % bootstrap intervals over test patients "
        "unless said otherwise.</p>",
    ]
    if page.skipped_images:
        header.append(
            f'<p class="note">{len(page.skipped_images)} image(s) not embedded (too large): '
            + ", ".join(esc(p) for p in page.skipped_images[:10])
            + ("…" if len(page.skipped_images) > 10 else "")
            + "</p>"
        )
    header.append("</header>")
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{esc(options.title)}</title>",
            '<link rel="icon" href="data:,">',  # no favicon request
            f"<style>{CSS}</style></head><body>",
            *header,
            toc_html(page.toc),
            "<main>",
            *sections,
            "</main>",
            "<footer>Made by <code>mritumor report</code>: a single file, nothing loaded from "
            "the network.</footer>",
            "</body></html>\n",
        ]
    )


def write_report(
    paths: Sequence[str | Path], output: str | Path, options: Options | None = None
) -> Path:
    html = build_report(paths, options)
    output = Path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(html, encoding="utf-8")
    except OSError as error:
        raise MritumorError(f"cannot write the report to {output}: {error}") from error
    return output
