"""Inline SVG for the status page: spend per cadence per day, and budget bars. No script, no external file.

Every bar is a `<rect class="bar">` carrying `data-day`, `data-cadence` and `data-usd`, with a `<title>` a
browser shows on hover; text is escaped by the caller's `esc`, passed in so the escaping is one function.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")
WIDTH, HEIGHT = 960, 280
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 40
MIN_BAR_PX = 1.0  # a run that cost nothing still shows that it ran


def color(index: int) -> str:
    """The fill of the `index`-th cadence (sorted by name)."""
    return PALETTE[index % len(PALETTE)]


def nice_ceiling(value: float) -> float:
    """A round axis maximum at or above `value` (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** _floor_log10(value)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power + 1e-12:
            return step * power
    return 10 * power


def _floor_log10(value: float) -> int:
    exponent = 0
    while value >= 10:
        value /= 10
        exponent += 1
    while value < 1:
        value *= 10
        exponent -= 1
    return exponent


def spend_chart(days: list[date], cadences: list[str], spend: dict[tuple[date, str], float],
                counts: dict[tuple[date, str], int], esc: Callable[[object], str]) -> str:
    """Grouped bars: one slot per day, in it one bar per cadence that ran that day, height = dollars charged."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = nice_ceiling(max([spend.get(k, 0.0) for k in counts] or [0.0]))
    slot = plot_w / max(len(days), 1)
    bar_w = max(slot * 0.8 / max(len(cadences), 1), 1.0)
    parts = [f'<svg class="chart" id="spend-chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
             f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="spend per cadence per day">']
    for i in range(5):  # horizontal grid lines with dollar labels
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">${value:.4g}</text>')
    for d_index, day in enumerate(days):
        x0 = LEFT + d_index * slot + slot * 0.1
        if d_index % 5 == 0 or d_index == len(days) - 1:
            parts.append(f'<text x="{LEFT + (d_index + 0.5) * slot:.1f}" y="{HEIGHT - BOTTOM + 16}" '
                         f'text-anchor="middle" font-size="11">{day:%m-%d}</text>')
        for c_index, cadence in enumerate(cadences):
            n = counts.get((day, cadence), 0)
            if not n:
                continue
            usd = spend.get((day, cadence), 0.0)
            h = max(plot_h * usd / top, MIN_BAR_PX)
            x = x0 + c_index * bar_w
            y = TOP + plot_h - h
            label = esc(f"{cadence} {day:%Y-%m-%d}: ${usd:.4f} ({n} run{'s' if n != 1 else ''})")
            parts.append(f'<rect class="bar" data-day="{day:%Y-%m-%d}" data-cadence="{esc(cadence)}" '
                         f'data-usd="{usd:.6f}" x="{x:.2f}" y="{y:.2f}" width="{bar_w:.2f}" height="{h:.2f}" '
                         f'fill="{color(c_index)}"><title>{label}</title></rect>')
    parts.append(f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="#666"/>')
    parts.append("</svg>")
    return "".join(parts)


def legend(cadences: list[str], esc: Callable[[object], str]) -> str:
    """The chart's legend: a colour swatch and a name per cadence."""
    items = [f'<li><svg width="12" height="12" aria-hidden="true"><rect width="12" height="12" fill="{color(i)}"/>'
             f'</svg> {esc(name)}</li>' for i, name in enumerate(cadences)]
    return f'<ul class="legend">{"".join(items)}</ul>'


def budget_bar(spent: float, reserved: float, total: float | None, esc: Callable[[object], str],
               label: str) -> str:
    """A bar of `total` (unlimited: an empty frame): spent solid, reserved hatched-light, red past 90 %."""
    width, height = 320, 14
    parts = [f'<svg class="budget-bar" width="{width}" height="{height}" role="img" aria-label="{esc(label)}">',
             f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="#f4f4f4" stroke="#999"/>']
    if total:
        used = min(spent / total, 1.0)
        held = min(reserved / total, 1.0 - used)
        fill = "#d62728" if spent + reserved >= 0.9 * total else "#2ca02c"
        parts.append(f'<rect class="spent" x="1" y="1" width="{(width - 2) * used:.1f}" height="{height - 2}" '
                     f'fill="{fill}"/>')
        if held > 0:
            parts.append(f'<rect class="reserved" x="{1 + (width - 2) * used:.1f}" y="1" '
                         f'width="{(width - 2) * held:.1f}" height="{height - 2}" fill="#ffbb78"/>')
    parts.append(f"<title>{esc(label)}</title></svg>")
    return "".join(parts)
