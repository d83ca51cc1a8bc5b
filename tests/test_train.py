"""The Ray-free core of a trial: a placement trains, the metric rises, counts are exact."""

import math

import pytest

from spaces import Placement
from spaces.discovery import discover
from trainables.config import load_config
from trainables.data import load_task
from trainables.model import load_model, vocab_size
from trainables.faults import FaultHooks
from trainables.train import NonFiniteLoss, TokenizedTask, TrialPlan, classification_metrics, tokenize, train_placement


def _setup(**overrides):
    sets = [f"{k}={v}" for k, v in overrides.items()]
    cfg = load_config(["smoke"], sets)
    task = load_task(cfg.data, vocab_size(cfg.model))
    model = load_model(cfg.model, task.num_labels, seed=0)
    space = discover(model)
    data = TokenizedTask(tokenize(task.train, None, 16), tokenize(task.val, None, 16), task.num_labels, "accuracy")
    return cfg, task, model, space, data


def test_metric_rises_on_learnable_synthetic_task(tmp_path):
    cfg, task, model, space, data = _setup(**{"train.epochs": 6, "data.synthetic_examples": 256})
    placement = Placement.full(space, 8)
    reports = []
    final = train_placement(cfg, TrialPlan(placement, space, 1e-2), model, data, reports.append,
                            save_dir=str(tmp_path / "adapter"))
    assert [r["epoch"] for r in reports] == list(range(1, 7))
    assert "score" in reports[-1] and all("score" not in r for r in reports[:-1])
    assert final["accuracy"] >= 0.9 > reports[0]["accuracy"]
    assert reports[-1]["train_loss"] < reports[0]["train_loss"]
    # Exact counts: LoRA parameters + the classifier head (modules_to_save), nothing else.
    head = task.num_labels * (cfg.model.tiny_hidden + 1)  # the classifier's weight and bias
    assert final["adapter_params"] == placement.adapter_params(space)
    assert final["trainable_params"] == placement.adapter_params(space) + head
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert final["compute_hours"] > 0 and math.isclose(final["compute_hours"], final["wall_s"] / 3600)


def test_early_epochs_are_scored_on_the_subset_and_the_last_on_the_whole_split(monkeypatch):
    import dataclasses

    import trainables.train as train_module

    cfg, task, model, space, data = _setup(**{"train.epochs": 3})
    early = data.val.subset(list(range(7)))
    scored, evaluate = [], train_module.evaluate

    def spy(model, batches, batch_size, accelerator):
        scored.append(len(batches.ids))
        return evaluate(model, batches, batch_size, accelerator)

    monkeypatch.setattr(train_module, "evaluate", spy)
    reports = []
    train_placement(cfg, TrialPlan(Placement.full(space, 4), space, 1e-2), model,
                    dataclasses.replace(data, early_val=early), reports.append)
    assert scored == [7, 7, len(data.val.ids)] and len(data.val.ids) > 7
    assert reports[-1]["score"] == reports[-1]["epoch_score"]
    scored.clear()
    train_placement(cfg, TrialPlan(Placement.full(space, 4), space, 1e-2), model, data, lambda r: None)
    assert scored == [len(data.val.ids)] * 3  # no subset: every epoch on the whole split


def test_non_finite_loss_is_an_error(tmp_path):
    cfg, task, model, space, data = _setup()
    with pytest.raises(NonFiniteLoss, match="non-finite training loss .* at step 0"):
        train_placement(cfg, TrialPlan(Placement.full(space, 2), space, 1e-3), model, data, lambda m: None,
                        hooks=FaultHooks("nan", str(tmp_path / "m")))


def test_classification_metrics():
    m = classification_metrics([0, 0, 0, 1], [0, 0, 1, 1], 2)
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == 0.75
    m = classification_metrics([0, 0, 0, 0], [0, 0, 0, 1], 2)
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == 0.5
