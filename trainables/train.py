"""Train one placement: the Ray-free core of a trial.

Where it sits: sample -> **train** -> track. `train_placement` wraps the base model with PEFT
LoRA adapters on exactly the placement's sites (plus the classifier head in `modules_to_save`),
fine-tunes for a fixed schedule with `accelerate` handling device and precision, evaluates after
every epoch and hands each epoch's results to a `report` callback, under the key names of
`trainables.record`. The Tune entry (`trainables.tune_entry`) is a thin wrapper that turns those
callbacks into `tune.report` calls.

Every trial uses the same data order, step count and learning-rate schedule for a given seed, so
placements are compared fairly (docs/methods.md, "Comparing placements fairly").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from spaces.placement import Placement
from spaces.space import ModelSpace
from trainables import record as R
from trainables.choices import METRIC_IMBALANCE
from trainables.config import Config
from trainables.data import Split, TaskData
from trainables.lora import lora_config


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator failing to allocate."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclass(frozen=True)
class TrialPlan:
    """What one training run trains: a placement of a space, at a learning rate, from a seed."""

    placement: Placement
    space: ModelSpace
    lr: float
    seed: int = 0


@dataclass(frozen=True)
class Resources:
    """What the run reserved: GPUs (fractional allowed) and CPU cores. Cost is counted in the
    reserved units (GPU-hours, or CPU-core-hours without a GPU), used or not."""

    n_gpus: float = 0.0
    n_cpus: int = 1

    @property
    def cost_units(self) -> float:
        return self.n_gpus if self.n_gpus > 0 else float(self.n_cpus)


class TrainHooks(Protocol):
    """Optional observers of the training loop (the test-only fault injection is one)."""

    def on_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor: ...

    def after_report(self, epoch: int) -> None: ...


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

    def subset(self, idx: list[int]) -> "Batches":
        return Batches([self.ids[i] for i in idx], [self.labels[i] for i in idx], self.pad_id)

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
    return {R.ACCURACY: correct / max(1, len(labels)),
            R.BALANCED_ACCURACY: sum(recalls) / max(1, len(recalls))}


@dataclass(frozen=True)
class TokenizedTask:
    """A task ready to train on: tokenised splits, the number of labels, the metric's name.

    early_val: a fixed subset of the validation split that every epoch but the last is scored on
    (ASHA compares trials there, cheaply); None scores every epoch on the whole split.
    """

    train: Batches
    val: Batches
    num_labels: int
    metric_name: str
    early_val: Batches | None = None

    def scored_on(self, last_epoch: bool) -> Batches:
        return self.val if last_epoch or self.early_val is None else self.early_val

    def epoch_metric(self, last_epoch: bool) -> str:
        return self.metric_name

    def evaluate(self, model, last_epoch: bool, batch_size: int, accelerator) -> dict:
        """{accuracy, balanced_accuracy} on the split this epoch is scored on."""
        scored_on = self.scored_on(last_epoch)
        return classification_metrics(evaluate(model, scored_on, batch_size, accelerator), scored_on.labels,
                                      self.num_labels)


def resolve_metric(cfg: Config, task: TaskData) -> str:
    if cfg.train.metric != "auto":
        return cfg.train.metric
    return R.BALANCED_ACCURACY if task.imbalance() > METRIC_IMBALANCE else R.ACCURACY


def _precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def wrap_with_lora(model, placement: Placement, space: ModelSpace, cfg: Config):
    """The PEFT model: LoRA on the placement's sites; a classifier's new head trains in full
    (SEQ_CLS puts it in `modules_to_save`), a causal LM's head and embeddings stay frozen."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(placement, space, cfg))


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
    plan: TrialPlan,
    model,
    data: TokenizedTask,
    report: Callable[[dict], None],
    *,
    resources: Resources = Resources(),
    save_dir: str | None = None,
    hooks: TrainHooks | None = None,
) -> dict:
    """Fine-tune `plan.placement` for `cfg.train.epochs` epochs; returns the last epoch's results.

    report(results) is called after every epoch with (names from `trainables.record`): epoch,
    accuracy, balanced_accuracy, epoch_score (the task metric, for ASHA), train_loss,
    trainable_params, adapter_params, wall_s and compute_hours so far. The last call also carries
    `score` (the objective), and the adapter is saved to `save_dir` before it (PEFT
    `save_pretrained`). Every epoch but the last is scored on `data.early_val` when the task has
    one, the last always on the whole validation split.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    t0 = time.perf_counter()
    set_seed(plan.seed)
    accelerator = Accelerator(mixed_precision=_precision(cfg.train.precision), cpu=resources.n_gpus == 0)
    peft_model = wrap_with_lora(model, plan.placement, plan.space, cfg)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    adapter_params = plan.placement.adapter_params(plan.space)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=plan.lr, weight_decay=cfg.train.weight_decay)
    train = data.train
    steps_per_epoch = math.ceil(len(train.ids) / cfg.train.batch_size)
    total = steps_per_epoch * cfg.train.epochs
    warmup = int(cfg.train.warmup_ratio * total)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    peft_model, optimizer = accelerator.prepare(peft_model, optimizer)
    gen = torch.Generator().manual_seed(plan.seed)
    step, results = 0, {}
    for epoch in range(1, cfg.train.epochs + 1):
        peft_model.train()
        loss_sum, n_batches = 0.0, 0
        for _, batch in train.iterate(cfg.train.batch_size, gen):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                loss = peft_model(**batch).loss
            if hooks is not None:
                loss = hooks.on_loss(step, loss)
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
        last_epoch = epoch == cfg.train.epochs
        scores = data.evaluate(peft_model, last_epoch, cfg.train.eval_batch_size, accelerator)
        wall_s = time.perf_counter() - t0
        results = {
            R.EPOCH: epoch,
            **scores,
            R.EPOCH_SCORE: scores[data.epoch_metric(last_epoch)],
            R.TRAIN_LOSS: loss_sum / max(1, n_batches),
            R.TRAINABLE_PARAMS: int(trainable),
            R.ADAPTER_PARAMS: int(adapter_params),
            R.WALL_S: wall_s,
            R.COMPUTE_HOURS: wall_s * resources.cost_units / 3600.0,
        }
        if epoch == cfg.train.epochs:
            if save_dir:
                accelerator.unwrap_model(peft_model).save_pretrained(save_dir)
            results[R.SCORE] = scores[data.metric_name]
        report(results)
        if hooks is not None:
            hooks.after_report(epoch)
    return results
