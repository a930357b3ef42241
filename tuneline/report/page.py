"""The scorecard as one self-contained HTML page with plotly figures.

The page embeds plotly.js once (no CDN), so it opens offline: a person can mail it or attach it
to a review. Four figures, each in a ``<div class="figure" id="…">``: the gated metric of
every checkpoint with its interval against the baseline, the loss curves of every run, the cost
of every run with its trend, and the regression rate over time with its Wilson interval.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from tuneline.report.scorecard import Scorecard, budget_text, human_duration

#: The ids of the page's figures, in order; tests look for them.
FIGURE_IDS = ("metric-per-version", "loss-curves", "cost-per-run", "regression-rate")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; } .muted { color: #666; }
table { border-collapse: collapse; margin: 0.8rem 0 1.5rem; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 1rem; }
@media (max-width: 1100px) { .grid { grid-template-columns: minmax(0, 1fr); } }
.figure { border: 1px solid #eee; border-radius: 6px; padding: 0.3rem; min-width: 0; }
.REGRESSED { color: #b00020; } .PASSED { color: #1b7f3b; } .INSUFFICIENT_DATA { color: #a66f00; }
"""


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _layout(figure: go.Figure, title: str, x: str, y: str) -> go.Figure:
    figure.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        height=380,
        margin={"l": 60, "r": 20, "t": 50, "b": 60},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


def metric_figure(card: Scorecard) -> go.Figure:
    """The candidate's gated metric per checkpoint, with the baseline and the interval of the
    change drawn around it (baseline + the interval of candidate - baseline)."""
    scored = [c for c in card.checkpoints if c.gated is not None]
    labels = [_short(c.checkpoint) for c in scored]
    candidate = [c.gated.candidate for c in scored if c.gated]
    baseline = [c.gated.baseline for c in scored if c.gated]
    upper = [c.gated.baseline + c.gated.delta_upper - c.gated.candidate for c in scored if c.gated]
    lower = [c.gated.candidate - c.gated.baseline - c.gated.delta_lower for c in scored if c.gated]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=labels,
            y=candidate,
            mode="markers+lines",
            name=f"{card.primary_metric} (interval of the change vs baseline)",
            error_y={"type": "data", "array": upper, "arrayminus": lower, "visible": True},
            text=[c.verdict for c in scored],
            hovertemplate="%{x}<br>%{y:.4f}<br>%{text}<extra></extra>",
        )
    )
    figure.add_trace(
        go.Scatter(x=labels, y=baseline, mode="markers", name="baseline", marker_symbol="x")
    )
    return _layout(figure, f"{card.primary_metric} per version", "checkpoint", card.primary_metric)


def loss_figure(card: Scorecard) -> go.Figure:
    figure = go.Figure()
    for run in card.runs:
        points = [p for p in run.loss_curve if p.train_loss is not None]
        figure.add_trace(
            go.Scatter(
                x=[p.step for p in points],
                y=[p.train_loss for p in points],
                mode="lines",
                name=f"{_short(run.run)} train",
            )
        )
        validated = [p for p in run.loss_curve if p.validation_loss is not None]
        if validated:
            figure.add_trace(
                go.Scatter(
                    x=[p.step for p in validated],
                    y=[p.validation_loss for p in validated],
                    mode="lines+markers",
                    line={"dash": "dot"},
                    name=f"{_short(run.run)} validation",
                )
            )
    return _layout(figure, "Loss curves per run", "step", "loss")


def cost_figure(card: Scorecard) -> go.Figure:
    runs = [_short(r.run) for r in card.runs]
    currency = next((r.currency for r in card.runs if r.currency), "")
    figure = go.Figure()
    figure.add_trace(go.Bar(x=runs, y=[r.amount for r in card.runs], name=f"cost {currency}"))
    estimated = [
        (run, r.estimate.amount) for run, r in zip(runs, card.runs, strict=True) if r.estimate
    ]
    if estimated:
        figure.add_trace(
            go.Scatter(
                x=[run for run, _ in estimated],
                y=[amount for _, amount in estimated],
                mode="markers",
                marker={"symbol": "line-ew-open", "size": 18, "line": {"width": 3}},
                name="estimated before the run",
            )
        )
    trend = card.window.cost_per_run
    if trend is not None and len(runs) > 1:
        start = trend.mean - trend.slope * (len(runs) - 1) / 2
        figure.add_trace(
            go.Scatter(
                x=runs,
                y=[start + trend.slope * i for i in range(len(runs))],
                mode="lines",
                name=f"trend {trend.slope:+.4f} per run",
            )
        )
    return _layout(figure, "Cost per run", "run", f"cost ({currency or 'unpriced'})")


def regression_figure(card: Scorecard) -> go.Figure:
    history = card.regression_history
    times = [p.time for p in history]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=times + times[::-1],
            y=[p.rate.upper for p in history] + [p.rate.lower for p in history][::-1],
            fill="toself",
            mode="lines",
            line={"width": 0},
            fillcolor="rgba(176,0,32,0.15)",
            name="95% Wilson interval",
            hoverinfo="skip",
        )
    )
    figure.add_trace(
        go.Scatter(
            x=times,
            y=[p.rate.estimate for p in history],
            mode="lines+markers",
            line={"color": "#b00020"},
            name="regressed / evaluated",
            text=[f"{p.regressed}/{p.evaluated} after {_short(p.checkpoint)}" for p in history],
            hovertemplate="%{text}<br>%{y:.2f}<extra></extra>",
        )
    )
    figure.update_yaxes(range=[0, 1])
    return _layout(figure, "Regression rate over time", "evaluation completed", "rate")


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary(card: Scorecard) -> str:
    window = card.window
    rate = window.regression_rate
    rate_text = (
        f"{rate.estimate:.2f} ({window.regressed}/{window.evaluated}; "
        f"{rate.level:.0%} CI [{rate.lower:.2f}, {rate.upper:.2f}])"
        if rate
        else "— (nothing evaluated)"
    )
    trend = window.cost_per_run
    currency = next((r.currency for r in card.runs if r.currency), "")
    cost_text = (
        f"mean {trend.mean:.4f} {currency}, {trend.slope:+.4f} per run "
        f"(first {trend.first:.4f}, last {trend.last:.4f})"
        if trend
        else "— (no runs)"
    )
    error = window.mean_absolute_estimate_error
    rows = [
        ("regression rate", rate_text),
        ("rollbacks", str(window.rollbacks)),
        ("mean time to rollback", human_duration(window.mean_time_to_rollback_seconds)),
        ("cost per run", cost_text),
        ("cost estimate error", "—" if error is None else f"mean |error| {error:.0%}"),
        ("budget", budget_text(card.budget)),
    ]
    return _table(("figure", "value"), ((html.escape(a), html.escape(b)) for a, b in rows))


def _owner(card: Scorecard) -> str:
    owner = card.owner
    parts = [
        f"owner {html.escape(owner.team or 'unowned')}",
        *([html.escape(owner.contact)] if owner.contact else []),
    ]
    if owner.runbook_uri.startswith(("https://", "http://")):
        link = html.escape(owner.runbook_uri, quote=True)
        parts.append(f"<a href='{link}'>runbook</a>")
    return "<p class='owner'>" + " · ".join(parts) + "</p>"


def _percent(error: float | None) -> str:
    return "—" if error is None else f"{error:+.0%}"


def _runs(card: Scorecard) -> str:
    rows = []
    for r in card.runs:
        estimate, error = r.estimate, r.estimate_error
        rows.append(
            (
                html.escape(_short(r.run)),
                html.escape(r.state),
                html.escape(r.stop_reason or "—"),
                f"{estimate.tokens:,}" if estimate else "—",
                f"{r.tokens:,}",
                f"{estimate.device_seconds:.1f}" if estimate else "—",
                f"{r.device_seconds:.1f}",
                f"{estimate.amount:.4f}" if estimate else "—",
                f"{r.amount:.4f}",
                _percent(error.cost if error else None)
                + (
                    f" (prorated to {error.prorated_steps[0]}/{error.prorated_steps[1]} steps)"
                    if error and error.prorated_steps and error.cost is not None
                    else ""
                ),
            )
        )
    headers = (
        "run",
        "state",
        "stopped by",
        "tokens est.",
        "tokens",
        "device-s est.",
        "device-s",
        f"cost est. ({next((r.currency for r in card.runs if r.currency), '')})",
        "cost",
        "estimate error",
    )
    return _table(headers, rows)


def _checkpoints(card: Scorecard) -> str:
    rows = []
    for c in card.checkpoints:
        gated = c.gated
        rows.append(
            (
                html.escape(_short(c.checkpoint)),
                html.escape(c.dataset_version),
                f'<span class="{html.escape(c.verdict)}">{html.escape(c.verdict)}</span>',
                f"{gated.candidate:.4f}" if gated else "—",
                f"{gated.baseline:.4f}" if gated else "—",
                f"{gated.delta:+.4f} [{gated.delta_lower:+.4f}, {gated.delta_upper:+.4f}]"
                if gated
                else "—",
                html.escape(", ".join(f"{s.slice}={s.value:.3f}" for s in c.slices) or "—"),
                f"{c.training_cost.device_seconds:.1f}",
                f"{c.training_cost.amount:.4f}",
                html.escape(human_duration(c.data_to_production_seconds)),
                "rolled back" if c.rolled_back_time else ("promoted" if c.promoted_time else ""),
            )
        )
    headers = (
        "checkpoint",
        "dataset version",
        "verdict",
        card.primary_metric,
        "baseline",
        "change [interval]",
        "slices",
        "device-s",
        "cost",
        "data→production",
        "production",
    )
    return _table(headers, rows)


def render(card: Scorecard) -> str:
    """The whole page, plotly.js included."""
    figures = zip(
        FIGURE_IDS,
        (metric_figure(card), loss_figure(card), cost_figure(card), regression_figure(card)),
        strict=True,
    )
    divs = "".join(
        f'<div class="figure" id="{figure_id}">'
        + figure.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"{figure_id}-plot",
            config={"responsive": True, "displaylogo": False},
        )
        + "</div>"
        for figure_id, figure in figures
    )
    gaps = (
        "<p class='muted'>Missing: " + html.escape("; ".join(card.gaps)) + "</p>"
        if card.gaps
        else ""
    )
    title = html.escape(f"Scorecard · {card.model}")
    window = card.window
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>{_STYLE}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<h1>{title}</h1><p class='muted'>window {window.start:%Y-%m-%d %H:%M} to "
        f"{window.end:%Y-%m-%d %H:%M} UTC · gated metric {html.escape(card.primary_metric)}</p>"
        f"{_owner(card)}{gaps}{_summary(card)}<div class='grid'>{divs}</div>"
        f"<h2>Checkpoints</h2>{_checkpoints(card)}"
        f"<h2>Runs: estimate and actual</h2>{_runs(card)}</body></html>"
    )
