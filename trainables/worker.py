"""What a Ray worker process keeps and knows, shared by trials and learning-rate probes.

Where it sits: train. `cached_task` tokenises a config's task once per worker process (the model
files are read per trial, the data once); `failure_reason` tells a failure a retry would only
repeat (non-finite loss, out of memory) from one a retry may fix (a worker that died).
"""

from __future__ import annotations

import functools
import json

from trainables.config import Config


def task_key(cfg: Config) -> str:
    """What the tokenised task depends on: the model, data and task sections, as canonical JSON."""
    d = cfg.to_dict()
    return json.dumps({"model": d["model"], "data": d["data"], "task": d["task"]}, sort_keys=True)


@functools.lru_cache(maxsize=2)
def _tokenised(key: str, metric_name: str):
    from trainables.data import early_subset, load_task
    from trainables.model import load_tokenizer, vocab_size
    from trainables.sft import load_pairs, tokenized_sft_task
    from trainables.train import TokenizedTask, tokenize

    cfg = Config.from_dict(json.loads(key))
    tok = load_tokenizer(cfg.model)
    if cfg.task.kind == "sft":
        return tokenized_sft_task(cfg, load_pairs(cfg, vocab_size(cfg.model)), tok, metric_name), tok
    task = load_task(cfg.data, vocab_size(cfg.model))
    val = tokenize(task.val, tok, cfg.model.max_length)
    early = early_subset(task.val.labels, cfg.data.early_eval_examples, cfg.data.split_seed)
    early_val = None if early is None else val.subset(early)
    data = TokenizedTask(tokenize(task.train, tok, cfg.model.max_length), val, task.num_labels, metric_name, early_val)
    return data, tok


def cached_task(cfg: Config, metric_name: str):
    """(`TokenizedTask`, or `trainables.sft.SftTask` for task.kind sft; tokenizer) for a config,
    built once per worker process."""
    return _tokenised(task_key(cfg), metric_name)


def failure_reason(error: BaseException) -> str | None:
    """One line saying why a run cannot succeed on retry, or None for other errors."""
    from trainables.train import NonFiniteLoss, is_out_of_memory

    if isinstance(error, NonFiniteLoss):
        return str(error)
    if is_out_of_memory(error):
        first = (str(error).strip().splitlines() or [""])[0][:300]
        return (f"out of memory ({first}): lower train.batch_size or model.max_length, or give trials "
                "more memory (--gpus-per-trial)")
    return None
