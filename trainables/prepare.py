"""Prepare a search: load the model and task once, discover the sites, compute the priors.

Where it sits: the step before sampling (**score**). The driver runs `prepare` as a Ray task (on
a GPU worker when trials use GPUs) and gets back a `Preparation` of plain values (the
`ModelSpace`, the task summary, the resolved metric, the `PriorScores`), so the driver itself
never imports torch. `search/score.py` calls the same function in-process.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass

from spaces.scores import PriorScores
from spaces.space import ModelSpace
from trainables.config import Config


@dataclass(frozen=True)
class Preparation:
    """What a search knows before its first trial. task: n_train, n_val, labels, imbalance."""

    space: ModelSpace
    task: dict
    metric_name: str
    scores: PriorScores | None = None
    priors_s: float | None = None

    def to_dict(self) -> dict:
        return {"space": self.space.to_dict(), "task": self.task, "metric_name": self.metric_name,
                "scores": None if self.scores is None else self.scores.to_dict(), "priors_s": self.priors_s}

    @classmethod
    def from_dict(cls, d: dict) -> "Preparation":
        return cls(ModelSpace.from_dict(d["space"]), dict(d["task"]), d["metric_name"],
                   None if d.get("scores") is None else PriorScores.from_dict(d["scores"]), d.get("priors_s"))


def calibration_batches(cfg: Config, train, device=None) -> list[dict]:
    """`priors.calibration_examples` training examples (fixed seed), batched with padding."""
    n = min(cfg.priors.calibration_examples, len(train.ids))
    idx = sorted(random.Random(cfg.priors.seed).sample(range(len(train.ids)), n))
    batches = []
    for start in range(0, n, cfg.priors.batch_size):
        batch = train.collate(idx[start : start + cfg.priors.batch_size])
        batches.append({k: v.to(device) if device else v for k, v in batch.items()})
    return batches


def prepare(cfg_dict: dict, with_priors: bool = True) -> Preparation:
    import torch

    from spaces.discovery import discover
    from spaces.kappa import kappa_scores
    from spaces.priors import compute_priors
    from trainables.data import load_task
    from trainables.model import check_positions, load_task_model, load_tokenizer, vocab_size
    from trainables.sft import load_pairs, tokenized_sft_task
    from trainables.train import resolve_metric, tokenize

    cfg = Config.from_dict(cfg_dict)
    tok = load_tokenizer(cfg.model)
    if cfg.task.kind == "sft":  # priors on the pairs' prompts and responses, as trials see them
        task = load_pairs(cfg, vocab_size(cfg.model))
        sft = tokenized_sft_task(cfg, task, tok)
        train, metric_name = sft.train, sft.metric_name
        summary = {**task.summary(), "early_metric": sft.epoch_metric(False),
                   "token_notes": [line for line in (sft.train.stats.line("train"), sft.val.stats.line("validation"))
                                   if line]}
    else:
        task = load_task(cfg.data, vocab_size(cfg.model))
        train, metric_name, summary = tokenize(task.train, tok, cfg.model.max_length), resolve_metric(cfg, task), None
    model = load_task_model(cfg, task.num_labels, seed=cfg.train.seed, tokenizer=tok)
    check_positions(cfg.model, model)
    space = discover(model)
    scores, priors_s = None, None
    if with_priors:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        batches = calibration_batches(cfg, train, device)
        t0 = time.perf_counter()
        scores = compute_priors(model, space, batches, pooling=cfg.priors.pooling, gradients=cfg.priors.gradients)
        scores = dataclasses.replace(scores, kappa=kappa_scores(model, space))
        priors_s = time.perf_counter() - t0
    return Preparation(space, summary or task.summary(), metric_name, scores, priors_s)
