"""Charts as inline SVG, drawn on the server: no script, no network, nothing to build.

Each function takes plain numbers and returns escaped SVG markup ready for a template.
The charts are small and few (a dashboard, not a BI tool), so a chart library and a
front-end build would cost more than they give.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 720, 200
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 44, 22, 10
PALETTE = ("#2f6fab", "#d9822b", "#c23030", "#7a7a7a", "#5a9e4b")


def _scale(maximum: float) -> float:
    return (HEIGHT - PAD_BOTTOM - PAD_TOP) / maximum if maximum > 0 else 0.0


def _frame(title: str, body: list[str], maximum: float, labels: Sequence[str], legend: Sequence[str]) -> Markup:
    plot_width = WIDTH - PAD_LEFT
    step = plot_width / max(len(labels), 1)
    every = max(1, len(labels) // 8)
    ticks = [
        f'<text x="{PAD_LEFT + i * step + step / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">{escape(label)}</text>'
        for i, label in enumerate(labels)
        if i % every == 0
    ]
    axis = [
        f'<line x1="{PAD_LEFT}" y1="{HEIGHT - PAD_BOTTOM}" x2="{WIDTH}" y2="{HEIGHT - PAD_BOTTOM}" stroke="#999"/>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 8}" text-anchor="end">{maximum:,.4g}</text>',
        f'<text x="{PAD_LEFT - 4}" y="{HEIGHT - PAD_BOTTOM}" text-anchor="end">0</text>',
    ]
    keys = [
        f'<span class="key" style="color: {PALETTE[i % len(PALETTE)]}">■</span> {escape(name)} '
        for i, name in enumerate(legend)
    ]
    return Markup(
        f'<figure class="chart"><figcaption>{escape(title)} {"".join(keys)}</figcaption>'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" font-size="10">'
        + "".join(axis + body + ticks)
        + "</svg></figure>"
    )


def bar_chart(title: str, labels: Sequence[str], series: dict[str, Sequence[float]]) -> Markup:
    """Stacked bars, one per label, one colour per series."""
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    maximum = max(totals, default=0)
    scale = _scale(maximum)
    step = (WIDTH - PAD_LEFT) / max(len(labels), 1)
    bars = []
    for i in range(len(labels)):
        base = HEIGHT - PAD_BOTTOM
        for n, (name, values) in enumerate(series.items()):
            height = values[i] * scale
            if height <= 0:
                continue
            base -= height
            bars.append(
                f'<rect class="bar" data-series="{escape(name)}" x="{PAD_LEFT + i * step + 1:.1f}" y="{base:.1f}" '
                f'width="{max(step - 2, 1):.1f}" height="{height:.1f}" fill="{PALETTE[n % len(PALETTE)]}">'
                f"<title>{escape(labels[i])}: {values[i]:,.4g} {escape(name)}</title></rect>"
            )
    return _frame(title, bars, maximum, labels, list(series))


def line_chart(title: str, labels: Sequence[str], series: dict[str, Sequence[float]]) -> Markup:
    """One polyline per series over the same labels (a baseline is just another series)."""
    maximum = max((v for values in series.values() for v in values), default=0)
    scale = _scale(maximum)
    step = (WIDTH - PAD_LEFT) / max(len(labels), 1)
    lines = []
    for n, (name, values) in enumerate(series.items()):
        points = " ".join(
            f"{PAD_LEFT + i * step + step / 2:.1f},{HEIGHT - PAD_BOTTOM - v * scale:.1f}" for i, v in enumerate(values)
        )
        dash = ' stroke-dasharray="4 3"' if n else ""
        lines.append(
            f'<polyline class="line" data-series="{escape(name)}" points="{points}" fill="none" '
            f'stroke="{PALETTE[n % len(PALETTE)]}" stroke-width="1.5"{dash}/>'
        )
    return _frame(title, lines, maximum, labels, list(series))


def score_chart(
    title: str,
    labels: Sequence[str],
    times: Sequence[float],
    scores: Sequence[float],
    start: float,
    end: float,
    threshold: float,
) -> Markup:
    """Each message's spam probability at its time, with the hold threshold as a line."""
    scale = HEIGHT - PAD_BOTTOM - PAD_TOP
    span = max(end - start, 1e-9)
    width = WIDTH - PAD_LEFT
    dots = [
        f'<circle class="dot" cx="{PAD_LEFT + (t - start) / span * width:.1f}" '
        f'cy="{HEIGHT - PAD_BOTTOM - s * scale:.1f}" r="2.5" '
        f'fill="{PALETTE[2] if s >= threshold else PALETTE[0]}"><title>{s:.3f}</title></circle>'
        for t, s in zip(times, scores, strict=True)
    ]
    y = HEIGHT - PAD_BOTTOM - threshold * scale
    dots.append(
        f'<line x1="{PAD_LEFT}" y1="{y:.1f}" x2="{WIDTH}" y2="{y:.1f}" stroke="{PALETTE[2]}" stroke-dasharray="3 3"/>'
    )
    return _frame(title, dots, 1.0, labels, ["spam probability", f"hold at {threshold}"])
