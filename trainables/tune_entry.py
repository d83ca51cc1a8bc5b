"""The thin Ray Tune entry around `train_placement`: one trial = one placement fine-tuned.

Where it sits: sample -> **train** -> track. The trial's config carries the sampled values and
the already budget-repaired placement (JSON). Each worker process loads the model files,
tokenizer and dataset once (`trainables.worker.cached_task`) and reuses them across the trials
it runs. `trial_entry` picks this function or, when the config names a simulation landscape, the
simulated trial of `trainables.simulated`; both report through `make_reporter`.

Failures. A failure that a retry would only repeat (a non-finite loss, running out of memory) is
not raised: the trial reports one last result with `failure` (the reason, `trainables.record`)
and ends, so Ray does not retry it; the tracker records it FAILED in MLflow and the searcher FAIL
in Optuna, and the search goes on. Any other error propagates, and Ray retries the trial up to
`search.max_failures` times (a worker that died, a node that was lost).

A restarted driver (`--resume`) passes `settled`: trials whose outcome its stores already hold but
that Tune's older snapshot would run again report that outcome at once instead of training.
"""

from __future__ import annotations

import math
import tempfile

from spaces.placement import Placement
from spaces.space import ModelSpace
from trainables import record as R
from trainables.config import Config
from trainables.reporting import make_reporter
from trainables.simulated import run_simulated_trial
from trainables.worker import cached_task, failure_reason


def trial_entry(cfg: Config):
    """The Tune function for this config's trials: `run_trial`, or the simulated trial
    (`trainables.simulated`) when `simulation.landscape` names a landscape."""
    if cfg.simulation.landscape:
        return run_simulated_trial
    return run_trial


def run_trial(trial_config: dict, *, cfg_dict: dict, space_dict: dict, metric_name: str,
              settled: dict | None = None) -> None:
    """Tune function trainable. Reports every epoch; the last report also has `score`.

    settled: trial id -> the result to report instead of training (`trainables.record.SETTLED`):
    trials a restarted driver's stores already hold an outcome for, which Tune's older snapshot
    would run again."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    if settled and trial_id in settled:
        tune.report(dict(settled[trial_id]))
        return
    import torch

    from trainables.model import load_task_model

    trial_config = R.trial_config(trial_config)
    cfg = Config.from_dict(cfg_dict)
    space = ModelSpace.from_dict(space_dict)
    placement = Placement.from_json(trial_config["placement"]).checked(space)
    n_cpus = max(1, int(cfg.search.cpus_per_trial))
    torch.set_num_threads(n_cpus)

    data, tok = cached_task(cfg, metric_name)
    seed = int(trial_config.get("seed", cfg.train.seed))
    model = load_task_model(cfg, data.num_labels, seed=seed, tokenizer=tok)
    # The adapter goes into Tune's checkpoint when it is reported (a copy in the trial's storage);
    # the temporary folder goes with the trial.
    with tempfile.TemporaryDirectory(prefix="adapter-") as save_dir:
        _train(cfg, placement, space, trial_config, seed, model, data, save_dir)


def _train(cfg: Config, placement: Placement, space: ModelSpace, trial_config: dict, seed: int, model, data,
           save_dir: str) -> None:
    import ray
    import torch
    from ray import tune

    from trainables import faults
    from trainables.train import Resources, TrialPlan, train_placement

    n_cpus = max(1, int(cfg.search.cpus_per_trial))
    node_id = ray.get_runtime_context().get_node_id()  # which cluster node ran the trial
    report, last = make_reporter(node_id, save_dir)
    resources = Resources(float(cfg.search.gpus_per_trial) if torch.cuda.is_available() else 0.0, n_cpus)
    plan = TrialPlan(placement, space, float(trial_config["lr"]), seed)
    try:
        train_placement(cfg, plan, model, data, report, resources=resources, save_dir=save_dir,
                        hooks=faults.from_environment())
    except Exception as e:
        reason = failure_reason(e)
        if reason is None:
            raise
        # The result every report must carry (ASHA's key) has no value for an epoch never finished.
        tune.report({R.EPOCH_SCORE: last.get(R.EPOCH_SCORE, math.nan), R.FAILURE: reason, R.NODE_ID: node_id})
