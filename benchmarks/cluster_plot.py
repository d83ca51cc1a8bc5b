"""The plot of `benchmarks/cluster_scale.py`: one figure from one or more results files.

Panels: (a) seconds per proposal against the trials the study had finished (every ask of the
largest run of each label and backend); (b) the share of trial time lost waiting for the driver,
and (c) wall time over the ideal, against the number of trials; (d) driver CPU seconds per trial
and peak memory against the number of trials. Dashed lines are the issue's targets.
"""

from __future__ import annotations

from pathlib import Path

STYLE = {("after", "sqlite"): ("tab:blue", "o"), ("after", "server"): ("tab:green", "s"),
         ("before", "sqlite"): ("tab:red", "x"), ("before", "server"): ("tab:orange", "+"),
         ("alone", "sqlite"): ("tab:purple", "D"), ("one-read", "sqlite"): ("tab:brown", "^")}


def _style(r: dict):
    return STYLE.get((r.get("label") or "after", r["backend"]), ("tab:grey", "."))


def _name(r: dict) -> str:
    return f"{r.get('label') or 'after'}, MLflow {r['backend']}"


def plot(files: list[dict], img: Path) -> Path:
    from matplotlib.figure import Figure

    results = [r for f in files for r in f["results"]]
    fig = Figure(figsize=(12, 8.5), layout="constrained")
    (a, b), (c, d) = fig.subplots(2, 2)
    d2 = d.twinx()  # peak memory on the right of panel (d)
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r.get("label") or "after", r["backend"]), []).append(r)
    for key, rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["trials"])
        color, marker = _style(rs[0])
        big = rs[-1]
        finished, seconds = zip(*big["ask_points"])
        a.scatter(finished, seconds, s=6, color=color, marker=marker, alpha=0.5, label=f"{_name(big)} ({big['trials']} trials)")
        trials = [r["trials"] for r in rs]
        b.plot(trials, [100 * r["wait_share"] for r in rs], marker=marker, color=color, label=_name(big))
        c.plot(trials, [r["wall_over_ideal"] for r in rs], marker=marker, color=color, label=_name(big))
        d.plot(trials, [r["driver_cpu_s"]["per_trial"] for r in rs], marker=marker, color=color, label=f"{_name(big)}: CPU")
        d2.plot(trials, [r["driver_rss_mb"]["peak"] for r in rs], marker=marker, color=color, ls=":",
                label=f"{_name(big)}: peak RSS")
    a.axhline(1.0, color="k", ls="--", lw=1)
    a.set(xlabel="trials finished when the proposal was asked", ylabel="seconds per proposal (ask)",
          title="(a) sampler time per proposal", yscale="log")
    b.axhline(2.0, color="k", ls="--", lw=1)
    b.set(xlabel="trials in the search", ylabel="% of trial time waiting for the driver",
          title="(b) trial time lost after reports", xscale="log", yscale="log")
    c.axhline(1.10, color="k", ls="--", lw=1)
    c.set(xlabel="trials in the search", ylabel="wall time / (simulated trial time / concurrency)",
          title="(c) wall time over the ideal", xscale="log")
    d.set(xlabel="trials in the search", ylabel="driver CPU seconds per trial (solid)",
          title="(d) driver cost", xscale="log")
    d2.set_ylabel("driver peak memory, MB (dotted)")
    d2.legend(fontsize=7, loc="lower right")
    for ax in (a, b, c, d):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    concurrent = sorted({r["concurrent"] for r in results})
    epoch_s = sorted({r["epoch_s"] for r in results})
    fig.suptitle(f"Simulated sweeps on a loopback Ray cluster: {'/'.join(map(str, concurrent))} trials at once, "
                 f"{'/'.join(f'{e:g}' for e in epoch_s)} s epochs (benchmarks/cluster_scale.py)", fontsize=10)
    img.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(img, dpi=100)
    return img
