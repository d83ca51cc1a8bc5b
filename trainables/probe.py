"""One point of the learning-rate probe: the reference placement trained briefly at one learning rate.

Where it sits: before the baselines (see `search.phases.calibrate`). The driver runs `probe_lr` as a Ray
task on a trial's resources, once per learning rate of the probe's grid; it trains with the same
code as a trial (`train_placement`) for the probe's epochs (the config it is given says how many)
and returns plain numbers. Its score is on the fixed validation subset every trial's early epochs
are scored on (`data.early_eval_examples`), or on the whole validation split without one. A run
whose loss turns non-finite is a result (the learning rate is too high), not an error.
"""

from __future__ import annotations

import dataclasses

from spaces.placement import Placement
from spaces.space import ModelSpace
from trainables.config import Config
from trainables.worker import cached_task, failure_reason


def probe_lr(cfg_dict: dict, space_dict: dict, placement_json: str, lr: float, metric_name: str) -> dict:
    """{lr, score (None when the run diverged), epoch_scores, train_loss, wall_s, compute_hours, failure}."""
    import torch

    from trainables.model import load_task_model
    from trainables.train import Resources, TrialPlan, train_placement

    cfg = Config.from_dict(cfg_dict)
    space = ModelSpace.from_dict(space_dict)
    placement = Placement.from_json(placement_json).checked(space)
    n_cpus = max(1, int(cfg.search.cpus_per_trial))
    torch.set_num_threads(n_cpus)
    data, tok = cached_task(cfg, metric_name)
    if data.early_val is not None:  # a probe is a short run: scored on the early subset, cheaply
        data = dataclasses.replace(data, val=data.early_val, early_val=None)
    model = load_task_model(cfg, data.num_labels, seed=cfg.train.seed, tokenizer=tok)
    epochs: list[dict] = []
    gpus = float(cfg.search.gpus_per_trial) if torch.cuda.is_available() else 0.0
    out = {"lr": lr, "score": None, "epoch_scores": [], "train_loss": None, "wall_s": 0.0, "compute_hours": 0.0,
           "failure": None}
    try:
        last = train_placement(cfg, TrialPlan(placement, space, lr, cfg.train.seed), model, data, epochs.append,
                               resources=Resources(gpus, n_cpus))
        out["score"], out["train_loss"] = last["score"], last["train_loss"]
    except Exception as e:
        out["failure"] = failure_reason(e)
        if out["failure"] is None:
            raise
    out["epoch_scores"] = [e["epoch_score"] for e in epochs]
    if epochs:
        out["wall_s"], out["compute_hours"] = epochs[-1]["wall_s"], epochs[-1]["compute_hours"]
    return out
