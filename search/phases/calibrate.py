"""Calibrate the task's learning rate for LoRA on this model, once, before the baselines.

Where it sits: after the priors, before sampling. For LoRA the learning rate moves the result more
than the placement does, and two placements trained at different learning rates say nothing about
placement (docs/methods.md, "Learning rate"). So the search first probes one reference placement
(the `all` baseline: every site, fitted to the budget) for `search.calibration_epochs` epochs at
`search.calibration_points` learning rates log-spaced over [`calibration_lr_min`,
`calibration_lr_max`], each a Ray task on a trial's resources (`trainables.probe`), on
`search.calibration_train_per_label` training examples per label (0: the trials' split). The
probe's peak is where its score is best (in the metric's direction: where `nll` is lowest): the
best grid point, refined by the vertex of a parabola through it and its two neighbours (in log
lr), never outside them. The chosen (calibrated) rate is the peak divided by
`search.lr_peak_divisor`: a trial takes more optimizer steps than a probe run and trains best
below the probe's peak (docs/methods.md, "Learning rate"). Every baseline then trains at it, and
the sampler draws learning rates within a factor `search.lr_band` of it. A peak on the first or
last grid point is flagged: the best rate may lie outside the grid.

The probe is logged on the search's MLflow run (param `lr_calibrated`, `lr_calibration.json`, a
plot) and kept in the search's state file, so `--resume` never probes again.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from analysis.direction import gain
from spaces.baselines import make_baselines
from trainables import record as R
from trainables.config import Config

LOW, HIGH = "low", "high"


@dataclass(frozen=True)
class LrCalibration:
    placement_key: str
    epochs: int
    lrs: tuple[float, ...]
    scores: tuple[float | None, ...]  # None: the run diverged (non-finite loss)
    chosen: float  # the rate the baselines train at: peak / divisor
    edge: str | None  # LOW or HIGH when the peak is on the grid's first or last point
    compute_hours: float = 0.0
    divisor: float = 1.0  # search.lr_peak_divisor when the probe ran
    train_per_label: int = 0  # training examples per label the probe ran on (0: the trials' split)

    @property
    def peak(self) -> float:
        """Where the probe's score peaked (the chosen rate times the divisor)."""
        return self.chosen * self.divisor

    def band(self, factor: float) -> tuple[float, float]:
        """The learning-rate range the sampler draws from: the chosen rate / factor to x factor."""
        return (self.chosen / factor, self.chosen * factor)

    def warning(self) -> str | None:
        if self.edge == HIGH:
            return (f"the probe's score peaked at the top of its grid ({self.lrs[-1]:.2g}): the best learning "
                    "rate may be higher; raise search.calibration_lr_max")
        if self.edge == LOW:
            return (f"the probe's score peaked at the bottom of its grid ({self.lrs[0]:.2g}): the best learning "
                    "rate may be lower; lower search.calibration_lr_min")
        return None

    def to_dict(self) -> dict:
        return {"placement_key": self.placement_key, "epochs": self.epochs, "lrs": list(self.lrs),
                "scores": list(self.scores), "chosen": self.chosen, "edge": self.edge,
                "compute_hours": self.compute_hours, "divisor": self.divisor, "train_per_label": self.train_per_label}

    @classmethod
    def from_dict(cls, d: dict) -> "LrCalibration":
        return cls(d["placement_key"], int(d["epochs"]), tuple(d["lrs"]), tuple(d["scores"]), float(d["chosen"]),
                   d.get("edge"), float(d.get("compute_hours", 0.0)), float(d.get("divisor", 1.0)),
                   int(d.get("train_per_label", 0)))


def lr_grid(lo: float, hi: float, n: int) -> list[float]:
    """n learning rates log-spaced from lo to hi, both included."""
    if n < 2 or not 0 < lo < hi:
        raise ValueError(f"need n >= 2 and 0 < lo < hi, got {n}, {lo}, {hi}")
    step = (math.log(hi) - math.log(lo)) / (n - 1)
    return [float(f"{math.exp(math.log(lo) + i * step):.4g}") for i in range(n)]


def choose_lr(lrs: list[float], scores: list[float | None], sense: str = "max") -> tuple[float, str | None]:
    """The learning rate where the scores peak, and whether the peak is on an edge of the grid.

    `sense`: the metric's direction ("min" for a lower-is-better metric such as `nll`: the peak is
    then the lowest score; the scores are negated first). A diverged point (None) counts as the
    worst score seen. The best grid point (ties: the lower rate) is refined by the vertex of the
    parabola through it and its two neighbours, in log lr, when that parabola opens downwards
    (clipped to the neighbours: a peak between two grid points is found, never one outside the
    probed range).
    """
    if len(lrs) != len(scores) or len(lrs) < 2:
        raise ValueError("choose_lr needs one score per learning rate, at least two")
    seen = [gain(s, sense) for s in scores if s is not None]  # higher = better from here on
    if not seen:
        raise ValueError("every probe run diverged: lower search.calibration_lr_min and calibration_lr_max")
    floor = min(seen)
    y = [floor if s is None else gain(s, sense) for s in scores]
    x = [math.log(lr) for lr in lrs]
    n = len(y)
    best = max(range(n), key=lambda i: (y[i], -i))
    if best == 0 or best == n - 1:
        return lrs[best], LOW if best == 0 else HIGH
    (x0, x1, x2), (y0, y1, y2) = x[best - 1: best + 2], y[best - 1: best + 2]
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    if a >= 0:
        return lrs[best], None
    vertex = min(max(-b / (2 * a), x0), x2)
    return float(f"{math.exp(vertex):.4g}"), None


def calibrate(search, reference) -> LrCalibration:
    """Run the probe on Ray (one task per learning rate, a trial's resources each) and choose."""
    import ray  # here, not at the top: Ray is first imported by `search.phases.prepare.init_ray`

    from trainables.probe import probe_lr

    cfg = search.cfg
    s = cfg.search
    probe_cfg = probe_config(cfg)
    lrs = lr_grid(s.calibration_lr_min, s.calibration_lr_max, s.calibration_points)
    resources = {"num_cpus": s.cpus_per_trial}
    if s.gpus_per_trial > 0:
        resources["num_gpus"] = s.gpus_per_trial
    task = ray.remote(**resources)(probe_lr)
    per_label = probe_cfg.data.max_train_per_label if s.calibration_train_per_label else 0
    on = f" on {per_label} training examples per label" if per_label else ""
    print(f"calibrating the learning rate: {reference.key} for {s.calibration_epochs} epoch(s){on} at "
          f"{len(lrs)} rates from {lrs[0]:g} to {lrs[-1]:g} ...", flush=True)
    pending = {task.remote(probe_cfg.to_dict(), search.space.to_dict(), reference.to_json(), lr, search.metric_name): lr
               for lr in lrs}
    results: dict[float, dict] = {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            out = ray.get(done[0])
            results[pending.pop(done[0])] = out
            what = f"{out['score']:.4f}" if out["score"] is not None else f"diverged ({out['failure'][:60]})"
            print(f"  lr {out['lr']:.3g}: {search.metric_name} {what}  ({len(results)}/{len(lrs)})", flush=True)
    except KeyboardInterrupt:  # the search was stopped (search.runtime.interrupts): so are its probe runs
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return settle(reference.key, lrs, [results[lr]["score"] for lr in lrs], s, R.sense(search.metric_name),
                  sum(r["compute_hours"] for r in results.values()), per_label)


def settle(placement_key: str, lrs: list[float], scores: list[float | None], s, sense: str = "max",
           compute_hours: float = 0.0, train_per_label: int = 0) -> LrCalibration:
    """The calibration from the probe's scores under the search section `s`: the peak
    (`choose_lr`) divided by `s.lr_peak_divisor`. `train_per_label`: what the probe trained on
    per label (0: the trials' split)."""
    peak, edge = choose_lr(lrs, scores, sense)
    return LrCalibration(placement_key, s.calibration_epochs, tuple(lrs), tuple(scores),
                         peak / s.lr_peak_divisor, edge, compute_hours, s.lr_peak_divisor, train_per_label)


def probe_config(cfg: Config) -> Config:
    """The config a probe run trains with: `search.calibration_epochs` epochs, and with
    `search.calibration_train_per_label` > 0 that many training examples per label, never more than
    the trials' `data.max_train_per_label` (a user who lowers the trials' data lowers the probe's)."""
    d = cfg.to_dict()
    d["train"] = {**d["train"], "epochs": cfg.search.calibration_epochs}
    per_label, cap = cfg.search.calibration_train_per_label, cfg.data.max_train_per_label
    if per_label > 0:
        d["data"] = {**d["data"], "max_train_per_label": min(per_label, cap) if cap > 0 else per_label}
    return Config.from_dict(d)


def plot_calibration(cal: LrCalibration, path: str | Path, metric_name: str, band: tuple[float, float]) -> Path:
    """The probe's score against the learning rate (log scale), the chosen rate and the sampler's band."""
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.subplots()
    ok = [(lr, s) for lr, s in zip(cal.lrs, cal.scores) if s is not None]
    ax.plot([lr for lr, _ in ok], [s for _, s in ok], "o-", color="tab:blue", label="probe")
    for lr, s in zip(cal.lrs, cal.scores):
        if s is None:
            ax.axvline(lr, color="grey", ls=":", lw=1)
            ax.text(lr, ax.get_ylim()[0], " diverged", rotation=90, va="bottom", fontsize=7, color="grey")
    if cal.divisor != 1.0:
        ax.axvline(cal.peak, color="grey", ls="--", lw=1, label=f"peak {cal.peak:.3g}")
    what = f"chosen {cal.chosen:.3g}" + (f" (peak / {cal.divisor:g})" if cal.divisor != 1.0 else "")
    ax.axvline(cal.chosen, color="crimson", lw=1.5, label=what)
    ax.axvspan(*band, color="crimson", alpha=0.08, label=f"sampler's band {band[0]:.2g} to {band[1]:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(f"{metric_name} after {cal.epochs} epoch(s)")
    ax.set_title(f"learning-rate probe: {cal.placement_key}", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, alpha=0.3)
    fig.savefig(path, dpi=110)
    return path


def calibrate_search(session):
    """The calibration phase of a running search (`search.phases.session.Session`): the probe on
    the `all` baseline, logged on the search's run and kept in its state file. Returns the search
    with its calibration."""
    search = session.search
    reference = make_baselines(search.space, search.budget, list(search.cfg.search.ranks), search.scores)[0].placement
    cal = calibrate(search, reference)
    pid, client = session.parent_run_id, session.client
    client.log_param(pid, "lr_calibrated", cal.chosen)
    client.log_dict(pid, cal.to_dict(), "lr_calibration.json")
    client.log_metric(pid, "calibration_compute_hours", cal.compute_hours)
    plot = plot_calibration(cal, search.output_dir / f"{search.name}-lr.png", search.metric_name,
                            cal.band(search.cfg.search.lr_band))
    client.log_artifact(pid, str(plot), "")
    search = dataclasses.replace(search, calibration=cal)
    search.save_state()
    return search
