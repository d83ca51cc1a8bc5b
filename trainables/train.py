"""Train one placement: the Ray-free core of a trial.

Where it sits: sample -> **train** -> track. `train_placement` wraps the base model with PEFT
LoRA adapters on exactly the placement's sites (plus the classifier head in `modules_to_save`),
fine-tunes for a fixed schedule with `accelerate` handling device and precision, evaluates after
every epoch and hands each epoch's metrics to a `report` callback. The Tune entry
(`trainables.tune_entry`) is a thin wrapper that turns those callbacks into `tune.report` calls.

Every trial uses the same seed, data order, step count and learning-rate schedule, so placements
are compared fairly (METHODS.md, "Comparing placements fairly").
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable

import torch

from spaces.placement import Placement
from spaces.space import ModelSpace
from trainables.config import Config
from trainables.data import Split, TaskData


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


def out_of_memory_error(message: str) -> RuntimeError:
    """torch's OutOfMemoryError (torch >= 2.5), else the RuntimeError older versions raise."""
    cls = getattr(torch, "OutOfMemoryError", None)
    return cls(message) if cls is not None else RuntimeError(message)


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator failing to allocate."""
    cls = getattr(torch, "OutOfMemoryError", None)
    if cls is not None and isinstance(error, cls):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def claim_fault(cfg: Config, fault: str) -> bool:
    """Test hook: True for the one trial that injects `fault` (see `TrainConfig.fault`).

    The first trial to create `train.fault_marker` (O_CREAT | O_EXCL: atomic, also across
    processes) gets the fault; every later trial, and the retry of the faulted one, does not.
    """
    if cfg.train.fault != fault:
        return False
    try:
        fd = os.open(cfg.train.fault_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.write(fd, f"{fault} injected in pid {os.getpid()}\n".encode())
    os.close(fd)
    return True


@dataclass
class Batches:
    """Pre-tokenised examples, padded per batch (pad id 0 unless the tokenizer says otherwise)."""

    ids: list[list[int]]
    labels: list[int]
    pad_id: int = 0

    def batch_orders(self, batch_size: int, generator: torch.Generator | None = None) -> list[list[int]]:
        """Index lists, one per batch, of examples of similar length (little padding).

        Without a generator: every example sorted by length (evaluation). With one: a seeded
        shuffle, then sorting within windows of 16 batches, then a seeded shuffle of the batches,
        so training order stays random while padding stays low.
        """
        n = len(self.ids)
        if generator is None:
            order = sorted(range(n), key=lambda i: len(self.ids[i]))
            return [order[s : s + batch_size] for s in range(0, n, batch_size)]
        order = torch.randperm(n, generator=generator).tolist()
        window = 16 * batch_size
        batches = []
        for w in range(0, n, window):
            chunk = sorted(order[w : w + window], key=lambda i: len(self.ids[i]))
            batches.extend(chunk[s : s + batch_size] for s in range(0, len(chunk), batch_size))
        perm = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in perm]

    def collate(self, idx: list[int]) -> dict:
        width = max(len(self.ids[i]) for i in idx)
        input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = self.ids[i]
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        return {"input_ids": input_ids, "attention_mask": mask,
                "labels": torch.tensor([self.labels[i] for i in idx])}

    def iterate(self, batch_size: int, generator: torch.Generator | None = None):
        """Yield (index list, batch) pairs; see `batch_orders`."""
        for idx in self.batch_orders(batch_size, generator):
            yield idx, self.collate(idx)


def tokenize(split: Split, tokenizer, max_length: int) -> Batches:
    if split.token_ids is not None:
        return Batches([s[:max_length] for s in split.token_ids], split.labels)
    enc = tokenizer(split.texts, truncation=True, max_length=max_length)
    return Batches(enc["input_ids"], split.labels, tokenizer.pad_token_id or 0)


def classification_metrics(preds: list[int], labels: list[int], num_labels: int) -> dict:
    correct = sum(p == y for p, y in zip(preds, labels))
    recalls = []
    for c in range(num_labels):
        n = sum(1 for y in labels if y == c)
        if n:
            recalls.append(sum(1 for p, y in zip(preds, labels) if y == c and p == c) / n)
    return {"accuracy": correct / max(1, len(labels)),
            "balanced_accuracy": sum(recalls) / max(1, len(recalls))}


def resolve_metric(cfg: Config, task: TaskData) -> str:
    if cfg.train.metric != "auto":
        return cfg.train.metric
    return "balanced_accuracy" if task.imbalance() > 1.5 else "accuracy"


def _precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def wrap_with_lora(model, placement: Placement, space: ModelSpace, cfg: Config):
    from peft import LoraConfig, TaskType, get_peft_model

    kwargs = placement.lora_config_kwargs(
        space, alpha_over_rank=cfg.train.lora_alpha_over_rank, dropout=cfg.train.lora_dropout
    )
    return get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, **kwargs))


def evaluate(model, batches: Batches, batch_size: int, accelerator) -> list[int]:
    model.eval()
    preds = [0] * len(batches.ids)
    with torch.no_grad():
        for idx, batch in batches.iterate(batch_size):
            batch = {k: v.to(accelerator.device) for k, v in batch.items() if k != "labels"}
            with accelerator.autocast():
                logits = model(**batch).logits
            for i, p in zip(idx, logits.argmax(-1).tolist()):
                preds[i] = p
    return preds


def train_placement(
    cfg: Config,
    placement: Placement,
    space: ModelSpace,
    lr: float,
    model,
    train: Batches,
    val: Batches,
    num_labels: int,
    metric: str,
    report: Callable[[dict], None],
    n_gpus: float = 0.0,
    n_cpus: int = 1,
    save_dir: str | None = None,
) -> dict:
    """Fine-tune `placement` for `cfg.train.epochs` epochs; returns the last epoch's metrics.

    report(metrics) is called after every epoch with: epoch, accuracy, balanced_accuracy,
    epoch_score (the task metric, for ASHA), train_loss, trainable_params, adapter_params,
    wall_s and gpu_hours so far. The last call also carries `final_metric` (the objective), and
    the adapter is saved to `save_dir` before it (PEFT `save_pretrained`).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    t0 = time.perf_counter()
    set_seed(cfg.train.seed)
    accelerator = Accelerator(mixed_precision=_precision(cfg.train.precision), cpu=n_gpus == 0)
    peft_model = wrap_with_lora(model, placement, space, cfg)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    adapter_params = placement.adapter_params(space)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.train.weight_decay)
    steps_per_epoch = math.ceil(len(train.ids) / cfg.train.batch_size)
    total = steps_per_epoch * cfg.train.epochs
    warmup = int(cfg.train.warmup_ratio * total)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    peft_model, optimizer = accelerator.prepare(peft_model, optimizer)
    # One reserved GPU-second is a GPU-second whether used or not; on CPU count core-seconds.
    cost_units = n_gpus if n_gpus > 0 else n_cpus
    gen = torch.Generator().manual_seed(cfg.train.seed)
    step, metrics = 0, {}
    for epoch in range(1, cfg.train.epochs + 1):
        peft_model.train()
        loss_sum, n_batches = 0.0, 0
        for _, batch in train.iterate(cfg.train.batch_size, gen):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                loss = peft_model(**batch).loss
            if step == 0 and claim_fault(cfg, "nan"):
                loss = loss * float("nan")
            if step == 0 and claim_fault(cfg, "oom"):
                raise out_of_memory_error("CUDA out of memory. Tried to allocate 20.00 GiB (injected by train.fault=oom)")
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"non-finite training loss ({loss.item()}) at step {step} (epoch {epoch}): "
                                    "lower search.lr_max, or use train.precision=no")
            accelerator.backward(loss)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item()
            n_batches += 1
            step += 1
        preds = evaluate(peft_model, val, cfg.train.eval_batch_size, accelerator)
        scores = classification_metrics(preds, val.labels, num_labels)
        wall_s = time.perf_counter() - t0
        metrics = {
            "epoch": epoch,
            **scores,
            "epoch_score": scores[metric],
            "train_loss": loss_sum / max(1, n_batches),
            "trainable_params": int(trainable),
            "adapter_params": int(adapter_params),
            "wall_s": wall_s,
            "gpu_hours": wall_s * cost_units / 3600.0,
        }
        if epoch == cfg.train.epochs:
            if save_dir:
                accelerator.unwrap_model(peft_model).save_pretrained(save_dir)
            metrics["final_metric"] = scores[metric]
        report(metrics)
        if epoch == 1 and claim_fault(cfg, "kill"):
            os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-trial, after epoch 1's report
    return metrics
