"""The thin Ray Tune entry around `train_placement`: one trial = one placement fine-tuned.

Where it sits: sample -> **train** -> track. The trial's config carries the sampled values and
the already budget-repaired placement (JSON). Each worker process loads the model files,
tokenizer and dataset once (`_cached_task`) and reuses them across the trials it runs.
"""

from __future__ import annotations

import functools
import json
import tempfile

from spaces.placement import Placement
from spaces.space import ModelSpace
from trainables.config import Config


@functools.lru_cache(maxsize=2)
def _cached_task(cfg_json: str):
    """Tokenised train/validation data for a config, once per worker process."""
    from trainables.data import load_task
    from trainables.model import load_tokenizer, vocab_size
    from trainables.train import tokenize

    cfg = Config.from_dict(json.loads(cfg_json))
    task = load_task(cfg.data, vocab_size(cfg.model))
    tok = load_tokenizer(cfg.model)
    train = tokenize(task.train, tok, cfg.model.max_length)
    val = tokenize(task.val, tok, cfg.model.max_length)
    return task, tok, train, val


def _task_key(cfg: Config) -> str:
    return json.dumps({"model": cfg.to_dict()["model"], "data": cfg.to_dict()["data"]}, sort_keys=True)


def run_trial(trial_config: dict, *, cfg_dict: dict, space_dict: dict, metric: str) -> None:
    """Tune function trainable. Reports every epoch; the last report also has `final_metric`."""
    import torch
    from ray import tune

    from trainables.model import load_model
    from trainables.train import train_placement

    cfg = Config.from_dict(cfg_dict)
    space = ModelSpace.from_dict(space_dict)
    placement = Placement.from_json(trial_config["placement"]).checked(space)
    n_cpus = max(1, int(cfg.search.cpus_per_trial))
    torch.set_num_threads(n_cpus)

    task, tok, train, val = _cached_task(_task_key(cfg))
    model = load_model(cfg.model, task.num_labels, seed=cfg.train.seed, tokenizer=tok)
    save_dir = tempfile.mkdtemp(prefix="adapter-")

    def report(metrics: dict) -> None:
        if "final_metric" in metrics:
            # The trained adapter travels as the trial's checkpoint; the tracker logs it.
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(save_dir))
        else:
            tune.report(metrics)

    n_gpus = float(cfg.search.gpus_per_trial) if torch.cuda.is_available() else 0.0
    train_placement(
        cfg, placement, space, float(trial_config["lr"]), model, train, val, task.num_labels,
        metric, report, n_gpus=n_gpus, n_cpus=n_cpus, save_dir=save_dir,
    )
