"""Heatmaps of the placement priors: layers x module kinds, one panel per score.

Where it sits: score -> sample -> train -> track -> frontier; this draws the *score* step's output
(a `spaces.scores.PriorScores`) for a report, so a reader can see which sites
each prior favours before looking at what the search found. No torch, no pyplot global state:
it draws on a bare `matplotlib.figure.Figure`, which renders through Agg.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from spaces.scores import PriorScores


def _layers_by_kinds(grid: list[list[float | None]]) -> np.ma.MaskedArray:
    """kinds x layers lists (None = no such site) -> layers x kinds masked array."""
    arr = np.array([[np.nan if v is None else float(v) for v in row] for row in grid], dtype=float)
    return np.ma.masked_invalid(arr.T)


def _panels(scores: PriorScores) -> list[tuple[str, np.ma.MaskedArray, list[str], str]]:
    kinds = list(scores.kinds)
    panels = [
        ("PLoP NFN per site\n(low = adapt first)", _layers_by_kinds(scores.nfn.per_site), kinds, "viridis_r"),
        ("activation norm / kind mean\n(high = adapt first)",
         _layers_by_kinds(scores.act.per_site_normalized), kinds, "viridis"),
        ("CKA importance 1 - CKA\n(high = adapt first)",
         np.ma.masked_invalid(np.array(scores.cka.importance, dtype=float)[:, None]), ["block"], "viridis"),
    ]
    if scores.kappa is not None:
        logk = [[None if v is None else float(np.log10(v)) for v in row] for row in scores.kappa.per_site]
        panels.append(("KappaTune log10 condition number\n(low = adapt first)", _layers_by_kinds(logk), kinds,
                       "viridis_r"))
    if scores.grad is not None:
        panels.append(("||grad W|| / ||W|| per site\n(high = adapt first)",
                       _layers_by_kinds(scores.grad.per_site), kinds, "viridis"))
    return panels


def plot_heatmap(scores: PriorScores, path: str | Path) -> Path:
    """Draw every prior in `scores` as a layers x kinds heatmap and save it as a PNG at `path`.

    Colour maps run so that the sites a prior would adapt first are bright in every panel (NFN's
    map is reversed, since PLoP adapts the lowest NFN). Degenerate CKA layers (zero-variance
    input or output; their importance is the neutral median) are marked "deg.".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = _panels(scores)
    n_layers = scores.n_layers
    widths = [max(1.0, 0.5 * data.shape[1]) for _, data, _, _ in panels]
    fig = Figure(figsize=(sum(widths) + 1.3 * len(panels), max(3.5, 0.3 * n_layers + 2.0)),
                 layout="constrained")
    axes = fig.subplots(1, len(panels), gridspec_kw={"width_ratios": widths})
    axes = np.atleast_1d(axes)
    for ax, (title, data, xlabels, cmap) in zip(axes, panels):
        im = ax.imshow(data, aspect="auto", cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(xlabels)), labels=xlabels, rotation=45, fontsize=8)
        ax.set_yticks(range(n_layers))
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, shrink=0.8)
    cka_ax = axes[2]
    for l, degenerate in enumerate(scores.cka.degenerate):
        if degenerate:
            cka_ax.text(0, l, "deg.", ha="center", va="center", fontsize=7, color="red")
    fig.suptitle(
        f"placement priors: {scores.n_examples} examples, {scores.n_tokens} tokens, "
        f"CKA pooling {scores.pooling}",
        fontsize=10,
    )
    fig.savefig(path, dpi=120)
    return path
