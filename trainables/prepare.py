"""Prepare a search: load the model and task once, discover the sites, compute the priors.

Where it sits: the step before sampling (**score**). The driver runs `prepare` as a Ray task (on
a GPU worker when trials use GPUs) and gets back plain data: the `ModelSpace` as a dict, the task
summary, the resolved metric and the prior scores, so the driver itself never imports torch.
`search/score.py` calls the same function in-process.
"""

from __future__ import annotations

import random
import time

from trainables.config import Config


def calibration_batches(cfg: Config, train, device=None) -> list[dict]:
    """`priors.calibration_examples` training examples (fixed seed), batched with padding."""
    n = min(cfg.priors.calibration_examples, len(train.ids))
    idx = sorted(random.Random(cfg.priors.seed).sample(range(len(train.ids)), n))
    batches = []
    for start in range(0, n, cfg.priors.batch_size):
        batch = train.collate(idx[start : start + cfg.priors.batch_size])
        batches.append({k: v.to(device) if device else v for k, v in batch.items()})
    return batches


def prepare(cfg_dict: dict, with_priors: bool = True) -> dict:
    import torch

    from spaces.discovery import discover
    from spaces.priors import compute_priors
    from trainables.data import load_task
    from trainables.model import load_model, load_tokenizer, vocab_size
    from trainables.train import resolve_metric, tokenize

    t0 = time.perf_counter()
    cfg = Config.from_dict(cfg_dict)
    task = load_task(cfg.data, vocab_size(cfg.model))
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, task.num_labels, seed=cfg.train.seed, tokenizer=tok)
    space = discover(model)
    out = {
        "space": space.to_dict(),
        "task": task.summary(),
        "metric": resolve_metric(cfg, task),
        "n_model_params": sum(p.numel() for p in model.parameters()),
    }
    if with_priors:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        batches = calibration_batches(cfg, tokenize(task.train, tok, cfg.model.max_length), device)
        t1 = time.perf_counter()
        out["scores"] = compute_priors(model, space, batches, pooling=cfg.priors.pooling,
                                       gradients=cfg.priors.gradients)
        out["priors_s"] = time.perf_counter() - t1
    out["prepare_s"] = time.perf_counter() - t0
    return out
