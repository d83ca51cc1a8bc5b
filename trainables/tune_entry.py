"""The thin Ray Tune entry around `train_placement`: one trial = one placement fine-tuned.

Where it sits: sample -> **train** -> track. The trial's config carries the sampled values and
the already budget-repaired placement (JSON). Each worker process loads the model files,
tokenizer and dataset once (`_cached_task`) and reuses them across the trials it runs.

Failures. Ray retries an errored trial up to `search.max_failures` times whatever the error, which
is right for a worker that died (killed, node lost) and wrong for a failure a retry would only
repeat: a non-finite loss or running out of memory. Those are raised as `TrialFailed` (message
`not retried: <reason>`). Ray has no per-exception retry policy, so the tracker's
`on_trial_recover` (on the driver) sets the trial's `max_failures` to 0 and puts the reason in
its config under `NOT_RETRIED_KEY`; the requeued attempt then fails at once, before any training,
and is the last. The trial ends as errored: FAILED in MLflow with the reason, FAIL in Optuna, and
the search goes on.
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


NOT_RETRIED = "not retried: "
NOT_RETRIED_KEY = "not_retried"  # set in a requeued trial's config by the tracker


class TrialFailed(RuntimeError):
    """A trial failure that a retry would repeat (non-finite loss, out of memory). Its message is
    `NOT_RETRIED + reason` (no custom __init__: exceptions must unpickle from their args)."""


def failure_reason(error: BaseException) -> str | None:
    """One line saying why a trial cannot succeed on retry, or None for other errors."""
    from trainables.train import NonFiniteLoss, is_out_of_memory

    if isinstance(error, NonFiniteLoss):
        return str(error)
    if is_out_of_memory(error):
        first = (str(error).strip().splitlines() or [""])[0][:300]
        return (f"out of memory ({first}): lower train.batch_size or model.max_length, or give trials "
                "more memory (--gpus-per-trial)")
    return None


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

    if NOT_RETRIED_KEY in trial_config:  # an earlier attempt failed in a way that repeats
        raise TrialFailed(NOT_RETRIED + trial_config[NOT_RETRIED_KEY])

    task, tok, train, val = _cached_task(_task_key(cfg))
    model = load_model(cfg.model, task.num_labels, seed=cfg.train.seed, tokenizer=tok)
    save_dir = tempfile.mkdtemp(prefix="adapter-")

    import ray

    node_id = ray.get_runtime_context().get_node_id()  # which cluster node ran the trial

    def report(metrics: dict) -> None:
        metrics = {**metrics, "node_id": node_id}
        if "final_metric" in metrics:
            # The trained adapter travels as the trial's checkpoint; the tracker logs it.
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(save_dir))
        else:
            tune.report(metrics)

    n_gpus = float(cfg.search.gpus_per_trial) if torch.cuda.is_available() else 0.0
    try:
        train_placement(
            cfg, placement, space, float(trial_config["lr"]), model, train, val, task.num_labels,
            metric, report, n_gpus=n_gpus, n_cpus=n_cpus, save_dir=save_dir,
        )
    except Exception as e:
        reason = failure_reason(e)
        if reason is None:
            raise
        raise TrialFailed(NOT_RETRIED + reason) from e
