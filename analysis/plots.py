"""Frontier plots: the picture at the end of score -> sample -> train -> track -> frontier.

Two views of the same trials, both built on `analysis.pareto.frontier` (completed, within-budget
trials; "pareto" marks the 3-objective front):
- `plot_pareto_png`: a static matplotlib figure (Agg backend, no display needed) for reports.
- `plot_pareto_html`: one self-contained HTML page, no plotly and nothing fetched from the network:
  an inline SVG scatter with a tooltip per point and a table of every trial, sortable by clicking a
  column header.

Both plot either the search's single-run trials or its confirmed placements (rows with seed means
and their 95% intervals, `analysis.confirmed.Confirmed.row`); given the search's single runs as well
(`background`, `searched`), they say which frontier they draw and count the search's trials right.

Axes: x = trainable parameters (log scale), y = the task metric, colour = cost (compute_hours, in
the unit the caller names: GPU-hours, or CPU-core-hours on CPU-only runs). The step line joins the front
points that are also on the 2-objective (metric vs parameters) front, i.e. the best metric reachable
at each parameter count; front points off that line are there because they are cheaper to train.
"Best" follows the metric's direction (`trainables.record.sense(metric_name)`, or `sense` given):
highest for accuracy, lowest for a lower-is-better metric such as `nll`.

Trial fields used besides the objectives: "key" (placement key), "run_id", "baseline" (the name of a
hand-crafted baseline, or None), "status".
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator  # noqa: E402

from analysis.direction import checked, word
from analysis.pareto import Sense, frontier, is_eligible, pareto_mask  # noqa: E402
from trainables import record as R  # noqa: E402

CMAP = "viridis"


def _sense(metric_name: str, sense: str | None) -> Sense:
    """The metric's direction: `sense` when given, else the metric's own (`trainables.record.sense`)."""
    return checked(R.sense(metric_name) if sense is None else sense)


def _split(trials, metric_key, params_key, cost_key, sense: Sense = "max"):
    """Frontier rows plus the points of the 2D (metric vs params) step line, sorted by params."""
    objectives: tuple[tuple[str, Sense], ...] = ((metric_key, sense), (params_key, "min"), (cost_key, "min"))
    rows = frontier(trials, objectives)
    front = [r for r in rows if r["pareto"]]
    on_2d = pareto_mask([(r[metric_key], r[params_key]) for r in front], (sense, "min"))
    step = sorted(((r[params_key], r[metric_key]) for r, on in zip(front, on_2d) if on))
    return rows, step


def _log_ok(values) -> bool:
    return all(v > 0 for v in values)


def plot_pareto_png(
    trials: Sequence[dict],
    path: str | Path,
    metric_name: str = "accuracy",
    cost_unit: str = "GPU-hours",
    *,
    metric_key: str = R.SCORE,
    params_key: str = R.TRAINABLE_PARAMS,
    cost_key: str = R.COMPUTE_HOURS,
    title: str | None = None,
    background: Sequence[dict] | None = None,
    sense: Sense | None = None,
) -> Path:
    """Write a PNG scatter of metric vs trainable parameters, coloured by cost; return its path.

    Rows with `score_low` / `score_high` (confirmed placements: seed means) get 95% error bars.
    `background`: single-run trials drawn small and grey behind them (the search's own trials).
    `sense`: the metric's direction, by default `trainables.record.sense(metric_name)`.
    """
    path = Path(path)
    sense = _sense(metric_name, sense)
    rows, step = _split(trials, metric_key, params_key, cost_key, sense)
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    shown = [b for b in background or [] if is_eligible(b)]
    if shown:
        ax.scatter([b[params_key] for b in shown], [b[metric_key] for b in shown], s=14, color="0.75", zorder=1,
                   label=f"single runs of the search ({len(shown)})")
    if not rows:
        ax.text(0.5, 0.5, f"no completed within-budget trials (of {len(trials)})", ha="center",
                transform=ax.transAxes)
    else:
        xs = [r[params_key] for r in rows]
        ys = [r[metric_key] for r in rows]
        cs = [r[cost_key] for r in rows]
        sc = ax.scatter(xs, ys, c=cs, cmap=CMAP, s=36, alpha=0.85, zorder=2)
        fig.colorbar(sc, ax=ax).set_label(f"cost ({cost_unit})")
        bars = [r for r in rows if r.get("score_low") is not None]
        if bars:
            ax.errorbar([r[params_key] for r in bars], [r[metric_key] for r in bars],
                        yerr=[[r[metric_key] - r["score_low"] for r in bars], [r["score_high"] - r[metric_key] for r in bars]],
                        fmt="none", ecolor="0.3", elinewidth=1, capsize=3, zorder=1.5,
                        label="95% interval of the seed mean")
        front = [r for r in rows if r["pareto"]]
        which = "over seed means" if background is not None else "3 objectives"
        ax.scatter([r[params_key] for r in front], [r[metric_key] for r in front], s=110,
                   facecolors="none", edgecolors="crimson", linewidths=1.5, zorder=3,
                   label=f"Pareto front, {which} ({len(front)})")
        ax.step([p for p, _ in step], [m for _, m in step], where="post", color="crimson", lw=1.2,
                zorder=1, label=f"best {metric_name} for its parameters")
        for r in rows:
            if r.get("baseline"):
                ax.annotate(str(r["baseline"]), (r[params_key], r[metric_key]), fontsize=8,
                            xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log" if _log_ok(xs) else "symlog")
        ax.legend(loc=word(sense, "lower right", "upper right"), fontsize=8)  # away from the best corner
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(metric_name)
    ax.set_title(title or f"{metric_name} vs trainable parameters ({len(rows)} of {len(trials)} trials)")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --- HTML -----------------------------------------------------------------------------------------

_W, _H = 760, 460  # SVG size in px
_L, _R, _T, _B = 70, 20, 20, 50  # plot margins in px

_JS = """
document.querySelectorAll("table.trials th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const asc = th.dataset.dir !== "asc";
  th.closest("tr").querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = asc ? "asc" : "desc";
  const val = tr => { const td = tr.cells[col]; const v = td.dataset.v ?? td.textContent;
                      const n = parseFloat(v); return isNaN(n) ? v : n; };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = val(a), y = val(b);
    const c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
    return asc ? c : -c; });
  rows.forEach(r => body.appendChild(r));
}));
"""

_CSS = """
body { font-family: sans-serif; margin: 1.5em; }
table.trials { border-collapse: collapse; font-size: 13px; }
table.trials th, table.trials td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
table.trials th { cursor: pointer; background: #f3f3f3; }
table.trials th[data-dir=asc]::after { content: " \\25B2"; }
table.trials th[data-dir=desc]::after { content: " \\25BC"; }
tr.pareto td { font-weight: bold; }
svg text { font-size: 11px; font-family: sans-serif; }
"""


def _e(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _count(v: float) -> str:
    """Parameter counts as 200k, 1.5M, 2G."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        ticks = [t for t in LogLocator(base=10).tick_values(lo, hi) if lo <= t <= hi]
        if len(ticks) < 2:
            ticks = [t for t in LogLocator(base=10, subs=(1, 2, 5)).tick_values(lo, hi) if lo <= t <= hi]
        return ticks
    return [t for t in MaxNLocator(6).tick_values(lo, hi) if lo <= t <= hi]


def _svg(rows, step, metric_key, params_key, cost_key, metric_name, cost_unit, sense: Sense = "max") -> str:
    if not rows:
        return "<p>No completed within-budget trials to plot.</p>"
    xs = [float(r[params_key]) for r in rows]
    ys = [float(r[metric_key]) for r in rows]
    cs = [float(r[cost_key]) for r in rows]
    log = _log_ok(xs)
    fx = (lambda v: math.log10(v)) if log else (lambda v: v)
    x0, x1 = min(map(fx, xs)), max(map(fx, xs))
    y0, y1 = min(ys), max(ys)
    pad_x, pad_y = (x1 - x0) * 0.05 or 0.5, (y1 - y0) * 0.05 or 0.05
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y
    px = lambda v: _L + (fx(v) - x0) / (x1 - x0) * (_W - _L - _R)  # noqa: E731
    py = lambda v: _H - _B - (v - y0) / (y1 - y0) * (_H - _T - _B)  # noqa: E731
    norm = mcolors.Normalize(min(cs), max(cs) if max(cs) > min(cs) else min(cs) + 1)
    cmap = matplotlib.colormaps[CMAP]

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img">',
           f'<rect x="{_L}" y="{_T}" width="{_W - _L - _R}" height="{_H - _T - _B}" fill="none" stroke="#999"/>']
    raw_lo, raw_hi = (10**x0, 10**x1) if log else (x0, x1)
    for t in _ticks(raw_lo, raw_hi, log):
        out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{_T}" y2="{_H - _B}" stroke="#eee"/>'
                   f'<text x="{px(t):.1f}" y="{_H - _B + 15}" text-anchor="middle">{_count(t)}</text>')
    for t in _ticks(y0, y1, False):
        out.append(f'<line x1="{_L}" x2="{_W - _R}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>'
                   f'<text x="{_L - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{t:.3g}</text>')
    out.append(f'<text x="{(_W + _L) / 2}" y="{_H - 10}" text-anchor="middle">trainable parameters'
               f'{" (log scale)" if log else ""}</text>'
               f'<text transform="translate(16,{(_H - _B + _T) / 2}) rotate(-90)" text-anchor="middle">'
               f'{_e(metric_name)}</text>')
    if step:  # post-style step: horizontal to the next x, then vertical
        pts = []
        for i, (p, m) in enumerate(step):
            pts.append(f"{px(p):.1f},{py(m):.1f}")
            if i + 1 < len(step):
                pts.append(f"{px(step[i + 1][0]):.1f},{py(m):.1f}")
        out.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="crimson" stroke-width="1.2"/>')
    for r, x, y, c in sorted(zip(rows, xs, ys, cs), key=lambda z: z[0]["pareto"]):  # front on top
        tip = (f"{r.get('key', '')}\n{metric_name}: {_fmt(r[metric_key])}\nparams: {_fmt(r[params_key])}"
               f"\n{cost_unit}: {_fmt(r[cost_key])}\nrun: {r.get('run_id', '')}")
        if r.get("baseline"):
            tip = f"baseline {r['baseline']}\n" + tip
        stroke = ' stroke="crimson" stroke-width="2.5"' if r["pareto"] else ' stroke="#333" stroke-width="0.5"'
        out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="{7 if r["pareto"] else 5}" '
                   f'fill="{mcolors.to_hex(cmap(norm(c)))}"{stroke}><title>{_e(tip)}</title></circle>')
        if r.get("baseline"):
            out.append(f'<text x="{px(x) + 8:.1f}" y="{py(y) - 6:.1f}">{_e(r["baseline"])}</text>')
    out.append("</svg>")
    legend = (f'<p>Colour: cost in {_e(cost_unit)}, from {_fmt(min(cs))} (dark) to {_fmt(max(cs))} '
              f'(yellow). Red ring: on the Pareto front ({_e(metric_name)} {sense}, parameters min, cost min). '
              f'Red line: best {_e(metric_name)} for its parameter count. Hover a point for details.</p>')
    return "\n".join(out) + legend


def _table(trials, front_by_id, metric_key, params_key, cost_key, metric_name, cost_unit) -> str:
    seeds = any(t.get("n_seeds") is not None for t in trials)  # confirmed placements: seed means
    score_cols = [f"{metric_name} (mean over seeds)", "95% CI low", "95% CI high", "seeds"] if seeds else [metric_name]
    cols = ["pareto", "baseline", "placement", *score_cols, "trainable params", cost_unit, "status", "run id"]
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = []
    for t in trials:
        on = front_by_id.get(id(t))
        scores = ([t.get(metric_key), t.get("score_low"), t.get("score_high"), t.get("n_seeds")] if seeds
                  else [t.get(metric_key)])
        cells = [("yes" if on else ("no" if on is not None else "")), t.get("baseline"), t.get("key"),
                 *scores, t.get(params_key), t.get(cost_key), t.get("status"), t.get("run_id")]
        tds = "".join(
            f'<td data-v="{_e(v)}">{_e(_fmt(v))}</td>' if isinstance(v, (int, float)) else f"<td>{_e(v)}</td>"
            for v in cells)
        body.append(f"<tr{' class=pareto' if on else ''}>{tds}</tr>")
    return f'<table class="trials"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def plot_pareto_html(
    trials: Sequence[dict],
    path: str | Path,
    metric_name: str = "accuracy",
    cost_unit: str = "GPU-hours",
    *,
    metric_key: str = R.SCORE,
    params_key: str = R.TRAINABLE_PARAMS,
    cost_key: str = R.COMPUTE_HOURS,
    title: str | None = None,
    sense: Sense | None = None,
    searched: Sequence[dict] | None = None,
) -> Path:
    """Write a self-contained interactive HTML page (SVG scatter + sortable table); return its path.

    The table lists every trial passed in, including failed, pruned and over-budget ones (blank in
    the "pareto" column); the scatter shows only the completed, within-budget trials. `sense`: the
    metric's direction, by default `trainables.record.sense(metric_name)`. `searched`: the search's
    single-run trials when `trials` are its confirmed placements (seed means): the page then counts
    placements and trials apart and says the frontier is over seed means.
    """
    path = Path(path)
    sense = _sense(metric_name, sense)
    rows, step = _split(trials, metric_key, params_key, cost_key, sense)
    eligible = [t for t in trials if is_eligible(t)]  # same order as `rows`
    front_by_id = {id(t): r["pareto"] for t, r in zip(eligible, rows)}
    title = title or f"{metric_name} vs trainable parameters"
    n_front = sum(r["pareto"] for r in rows)
    if searched is None:
        counts = f"{len(trials)} trials, {len(rows)} completed within budget, {n_front} on the Pareto front."
    else:
        done = sum(is_eligible(t) for t in searched)
        counts = (f"{len(trials)} placements confirmed over seeds (each point a mean over seeds), {n_front} on the "
                  f"Pareto front over seed means; chosen from the search's {len(searched)} trials "
                  f"({done} completed within budget, each trained once).")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p>{_e(counts)}</p>
{_svg(rows, step, metric_key, params_key, cost_key, metric_name, cost_unit, sense)}
<h2>Trials</h2>
<p>Click a column header to sort.</p>
{_table(trials, front_by_id, metric_key, params_key, cost_key, metric_name, cost_unit)}
<script>{_JS}</script>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path
