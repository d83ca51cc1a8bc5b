"""A simulated trial: sleeps instead of training and reports from a synthetic landscape.

Where it sits: a stand-in for **train**, chosen by the config (`simulation.landscape`, see
`trainables.tune_entry.trial_entry`), so that the driver, Ray Tune, ASHA, the Optuna study and the
MLflow tracker run a search of any size without compute (`benchmarks/cluster_scale.py`). It costs
no torch: a worker that runs it imports Ray, numpy and this project's plain-Python packages only.

What a simulated trial does, epoch by epoch, through the same reporting path as a real trial
(`trainables.reporting.make_reporter`, the key names of `trainables.record`):
- sleeps (0.5 + 0.5 x adapter params / the full placement's) x `simulation.epoch_s`;
- reports epoch, accuracy (= balanced_accuracy = epoch_score), train_loss, trainable_params,
  adapter_params, wall_s and compute_hours so far. The metric rises over the epochs to the
  landscape's value for the placement (`trainables.landscape.Landscape.metric`), plus noise drawn
  from the placement, seed and learning rate (the same trial reports the same numbers);
- before the last report, writes an adapter folder of a real adapter's size (its LoRA config and
  adapter params x 4 bytes of zeros) that travels as the trial's checkpoint, and adds `score`.
With `simulation.trace_dir` set, each trial appends one JSON line to `<trace_dir>/<pid>.jsonl`:
its start and end, the seconds it slept, and for each report when it was made and when Tune let
the trial go on (the time a trial waits for the driver).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from spaces.placement import Placement
from spaces.space import ModelSpace
from trainables import record as R
from trainables.config import Config, lora_scaling
from trainables.landscape import METRIC_LO, Landscape, model_space
from trainables.reporting import make_reporter

SIMULATED_LABELS = ("negative", "positive")


def landscape_for(cfg: Config) -> Landscape:
    """The config's landscape (the same in every process: it depends on the config only)."""
    sim = cfg.simulation
    return Landscape(model_space(sim.landscape), sim.seed, sim.prior, cfg.search.r_ref)


def simulated_preparation(cfg: Config):
    """What `trainables.prepare.prepare` returns for a real model, for the landscape: its space,
    a task summary that says it is simulated, the metric and the scores the priors would see."""
    from trainables.prepare import Preparation

    land = landscape_for(cfg)
    task = {"n_train": 0, "n_val": 0, "labels": list(SIMULATED_LABELS), "imbalance": 1.0,
            "simulated": f"{cfg.simulation.landscape} landscape, seed {cfg.simulation.seed}"}
    return Preparation(land.space, task, R.ACCURACY, land.scores, 0.0)


def epoch_seconds(placement: Placement, space: ModelSpace, cfg: Config) -> float:
    """Simulated seconds per epoch: half fixed (the frozen model), half in proportion to the adapters."""
    full = Placement.full(space, cfg.search.r_ref).adapter_params(space)
    return cfg.simulation.epoch_s * (0.5 + 0.5 * placement.adapter_params(space) / full)


def epoch_metrics(final: float, epochs: int, rng: np.random.Generator, noise: float) -> list[float]:
    """The metric after each epoch: rising from chance towards `final` (halving the gap each epoch),
    the last epoch at `final`; each with noise, kept in [0, 1]."""
    out = []
    for e in range(1, epochs + 1):
        share = (1.0 - 0.5 ** e) / (1.0 - 0.5 ** epochs)
        out.append(min(1.0, max(0.0, METRIC_LO + (final - METRIC_LO) * share + rng.normal(0.0, noise))))
    return out


def _rng(placement: Placement, seed: int, lr: float) -> np.random.Generator:
    digest = hashlib.sha256(f"{placement.key}|{seed}|{lr!r}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def head_params(space: ModelSpace) -> int:
    """A classifier head over the model's width for the simulated labels (trained with every placement)."""
    hidden = space.shapes[0][0][0]
    return (hidden + 1) * len(SIMULATED_LABELS)


def simulate_placement(cfg: Config, placement: Placement, space: ModelSpace, lr: float, seed: int,
                       report: Callable[[dict], None], *, save_dir: str | None = None,
                       sleep: Callable[[float], None] = time.sleep) -> dict:
    """The simulated counterpart of `trainables.train.train_placement` (module docstring); the
    same report contract. Returns the last epoch's results."""
    t0 = time.perf_counter()
    land = landscape_for(cfg)
    epochs = cfg.train.epochs
    scores = epoch_metrics(land.metric(placement), epochs, _rng(placement, seed, lr), cfg.simulation.noise)
    adapter_params = placement.adapter_params(space)
    per_epoch = epoch_seconds(placement, space, cfg)
    results: dict = {}
    for epoch, score in enumerate(scores, start=1):
        sleep(per_epoch)
        wall_s = time.perf_counter() - t0
        results = {
            R.EPOCH: epoch,
            R.ACCURACY: score,
            R.BALANCED_ACCURACY: score,
            R.EPOCH_SCORE: score,
            R.TRAIN_LOSS: -math.log(max(score, 1e-6)),
            R.TRAINABLE_PARAMS: adapter_params + head_params(space),
            R.ADAPTER_PARAMS: adapter_params,
            R.WALL_S: wall_s,
            R.COMPUTE_HOURS: wall_s * _cost_units(cfg) / 3600.0,
        }
        if epoch == epochs:
            if save_dir:
                write_adapter(save_dir, placement, space, cfg)
            results[R.SCORE] = score
        report(results)
    return results


def _cost_units(cfg: Config) -> float:
    """The units a trial reserves (as `trainables.train.Resources.cost_units`): GPUs, else cores."""
    s = cfg.search
    return s.gpus_per_trial if s.gpus_per_trial > 0 else float(s.cpus_per_trial)


def write_adapter(save_dir: str, placement: Placement, space: ModelSpace, cfg: Config) -> None:
    """An adapter folder the size of a real one: its LoRA config and fp32 zeros for its params."""
    path = Path(save_dir)
    kwargs = placement.lora_config_kwargs(space, scaling=lora_scaling(cfg), dropout=cfg.train.lora_dropout)
    (path / "adapter_config.json").write_text(json.dumps({**kwargs, "simulated": True}))
    with open(path / "simulated_adapter.bin", "wb") as f:
        f.truncate(4 * placement.adapter_params(space))


class ReportTrace:
    """Report timings of one trial, appended as one JSON line to `<trace_dir>/<pid>.jsonl` at its end
    (also when Tune stops it mid-report: `close` runs in a `finally`)."""

    def __init__(self, trace_dir: str, trial_id: str, per_epoch_s: float):
        self.path = Path(trace_dir) / f"{os.getpid()}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.row = {"trial_id": trial_id, "pid": os.getpid(), "start": time.time(), "epoch_s": per_epoch_s,
                    "reports": []}

    def wrap(self, report: Callable[[dict], None]) -> Callable[[dict], None]:
        def timed(results: dict) -> None:
            made = time.time()
            self.row["reports"].append([made, None])
            report(results)
            self.row["reports"][-1][1] = time.time()  # Tune has let the trial go on

        return timed

    def close(self) -> None:
        self.row["end"] = time.time()
        with open(self.path, "a") as f:
            f.write(json.dumps(self.row) + "\n")


def run_simulated_trial(trial_config: dict, *, cfg_dict: dict, space_dict: dict, metric_name: str,
                        settled: dict | None = None) -> None:
    """Tune function trainable, the simulated counterpart of `trainables.tune_entry.run_trial`
    (`settled` as there)."""
    import ray
    from ray import tune

    if settled and tune.get_context().get_trial_id() in settled:
        tune.report(dict(settled[tune.get_context().get_trial_id()]))
        return

    trial_config = R.trial_config(trial_config)
    cfg = Config.from_dict(cfg_dict)
    space = ModelSpace.from_dict(space_dict)
    placement = Placement.from_json(trial_config["placement"]).checked(space)
    seed = int(trial_config.get(R.SEED, cfg.train.seed))
    save_dir = tempfile.mkdtemp(prefix="adapter-")
    report, _ = make_reporter(ray.get_runtime_context().get_node_id(), save_dir)
    trace = None
    if cfg.simulation.trace_dir:
        trace = ReportTrace(cfg.simulation.trace_dir, tune.get_context().get_trial_id(),
                            epoch_seconds(placement, space, cfg))
        report = trace.wrap(report)
    try:
        simulate_placement(cfg, placement, space, float(trial_config["lr"]), seed, report, save_dir=save_dir)
    finally:
        shutil.rmtree(save_dir, ignore_errors=True)  # Tune has copied the checkpoint to its storage
        if trace is not None:
            trace.close()
