"""HTML building blocks of the report, standard library only: number formatting, tables, inline
SVG line charts and data-URI images."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from html import escape

DASH = "–"
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
}
NUMERIC = re.compile(r"–|[-+]?\d[\d.,e+\-]*( \(.*\))?( ± .*)?")
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def esc(value) -> str:
    return escape(str(value), quote=True)


# ------------------------------------------------------------------------------- numbers


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt(value) -> str:
    """3 decimals for floats (scientific below 0.001), integers as they are, '–' for nothing."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return DASH
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.3f}"
    return str(value)


def is_interval(value) -> bool:
    return (
        isinstance(value, Mapping)
        and "value" in value
        and set(value)
        <= {
            "value",
            "low",
            "high",
            "n_boot_valid",
        }
    )


def fmt_interval(entry) -> str:
    """``value (low–high)``; the value alone when the interval is missing."""
    if not isinstance(entry, Mapping):
        return fmt(entry)
    value, low, high = entry.get("value"), entry.get("low"), entry.get("high")
    if value is None:
        return DASH
    if low is None or high is None:
        return fmt(value)
    return f"{fmt(value)} ({fmt(low)}{DASH}{fmt(high)})"


def fmt_mean_sd(entry: Mapping) -> str:
    sd = entry.get("sd")
    text = fmt(entry.get("mean"))
    return text if sd is None else f"{text} ± {fmt(sd)}"


def parse_float(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fmt_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


# ------------------------------------------------------------------------------- tables


def table(
    header: Sequence[str] | None,
    rows: Iterable[Sequence],
    css: str = "",
    raw: bool = False,
    caption: str | None = None,
) -> str:
    """Cells are escaped unless ``raw`` (then they are HTML already); numbers right-aligned."""
    parts = [f'<table class="{esc(css)}">' if css else "<table>"]
    if caption:
        parts.append(f"<caption>{esc(caption)}</caption>")
    if header:
        parts.append(
            "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>"
        )
    parts.append("<tbody>")
    for row in rows:
        cells = []
        for index, cell in enumerate(row):
            text = str(cell) if raw else esc(cell)
            tag = "th" if index == 0 and header is None else "td"
            numeric = not raw and bool(NUMERIC.fullmatch(str(cell)))
            cells.append(
                f'<{tag} class="num">{text}</{tag}>' if numeric else f"<{tag}>{text}</{tag}>"
            )
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def key_value_table(items: Iterable[tuple[str, object]], css: str = "kv") -> str:
    rows = [(key, fmt(value) if not isinstance(value, str) else value) for key, value in items]
    return table(None, rows, css=css) if rows else ""


def kv(items) -> str:
    """A key-value table; nested values as compact JSON."""

    def shown(value) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, (Mapping, list)):
            return json.dumps(value, default=str)
        return fmt(value)

    return key_value_table((key, shown(value)) for key, value in items)


def json_block(value, depth: int = 0, max_rows: int = 30) -> str:
    """Any JSON value as nested tables (for files whose layout the report does not know)."""
    if isinstance(value, Mapping):
        if not value:
            return "<em>empty</em>"
        if depth >= 3:
            return f"<code>{esc(_short_json(value))}</code>"
        rows = [
            (f"<th>{esc(k)}</th>", f"<td>{json_block(v, depth + 1, max_rows)}</td>")
            for k, v in list(value.items())[:max_rows]
        ]
        more = len(value) - max_rows
        html = '<table class="kv json">' + "".join(f"<tr>{k}{v}</tr>" for k, v in rows)
        if more > 0:
            html += f'<tr><td colspan="2"><em>{more} more entries not shown</em></td></tr>'
        return html + "</table>"
    if isinstance(value, list):
        if not value:
            return "<em>none</em>"
        if all(isinstance(v, Mapping) for v in value) and depth < 3:
            columns: list[str] = []
            for v in value[:max_rows]:
                columns += [k for k in v if k not in columns]
            columns = columns[:14]
            rows = [
                [_cell(v.get(c)) for c in columns]
                for v in value[:max_rows]
                if isinstance(v, Mapping)
            ]
            html = table(columns, rows, css="json")
            if len(value) > max_rows:
                html += f"<p class='note'>{len(value) - max_rows} more rows not shown</p>"
            return html
        shown = ", ".join(_cell(v) for v in value[:20])
        return esc(shown + (f", … ({len(value)} in all)" if len(value) > 20 else ""))
    return esc(fmt(value))


def _cell(value) -> str:
    if is_interval(value):
        return fmt_interval(value)
    if isinstance(value, (Mapping, list)):
        return _short_json(value)
    return fmt(value)


def _short_json(value, limit: int = 160) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------- images


def data_uri(data: bytes, suffix: str) -> str:
    mime = IMAGE_TYPES.get(suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, None for anything else."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def figure(uri: str, caption: str, name: str, wide: bool = False) -> str:
    css = "fig wide" if wide else "fig"
    file = "" if caption.endswith(name) else f" <span class='file'>{esc(name)}</span>"
    return (
        f'<figure class="{css}"><img src="{uri}" alt="{esc(caption)}" loading="eager">'
        f"<figcaption>{esc(caption)}{file}</figcaption></figure>"
    )


# ------------------------------------------------------------------------------- SVG charts


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(low / step - 1e-9) * step
    ticks, value = [], start
    while value <= high + 1e-9 * step:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _tick_label(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    xlabel: str = "epoch",
    width: int = 560,
    height: int = 280,
) -> str:
    """An inline SVG line chart (one polyline per series, points marked, legend on the right)."""
    series = {
        name: [(x, y) for x, y in points if math.isfinite(y)] for name, points in series.items()
    }
    series = {name: points for name, points in series.items() if points}
    if not series:
        return ""
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    if x_high == x_low:
        x_low, x_high = x_low - 0.5, x_high + 0.5
    if y_high == y_low:
        pad = abs(y_low) * 0.1 or 0.5
        y_low, y_high = y_low - pad, y_high + pad
    pad = (y_high - y_low) * 0.05
    y_low, y_high = y_low - pad, y_high + pad
    left, right, top, bottom = 56, 150, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y_low) / (y_high - y_low)) * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{esc(title)}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{left}" y="18" class="title">{esc(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>',
    ]
    for tick in _ticks(y_low, y_high):
        y = py(tick)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick_label(tick)}</text>'
        )
    integer_x = all(float(x).is_integer() for x in xs)  # epochs: no tick between two epochs
    x_ticks = [t for t in _ticks(x_low, x_high, 6) if not integer_x or float(t).is_integer()]
    for tick in x_ticks:
        x = px(tick)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" '
            f'stroke="#888"/><text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
            f"{_tick_label(tick)}</text>"
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">{esc(xlabel)}</text>'
    )
    for index, (name, points) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(points))
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.8"/>'
        )
        for x, y in points:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.2" fill="{colour}"/>')
        legend_y = top + 12 + 16 * index
        parts.append(
            f'<line x1="{left + plot_w + 10}" x2="{left + plot_w + 28}" y1="{legend_y - 4}" '
            f'y2="{legend_y - 4}" stroke="{colour}" stroke-width="2.5"/>'
            f'<text x="{left + plot_w + 32}" y="{legend_y}">{esc(name[:20])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
