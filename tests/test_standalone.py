"""Training a placement outside a search (`trainables.standalone`): a `TrialRecord` with what a
record does not hold, rows that read back, and every committed table and retrain file still read."""

import json
from pathlib import Path

import pytest

from spaces import Placement
from spaces.discovery import discover
from trainables import record as R
from trainables.config import load_config
from trainables.data import load_task
from trainables.model import load_model, vocab_size
from trainables.standalone import TrainedPlacement, train_outside_search
from trainables.train import NonFiniteLoss, Resources, TokenizedTask, TrialPlan, tokenize

DATA = Path(__file__).resolve().parent.parent / "docs" / "data"
COMMITTED = sorted(DATA.glob("table-*.jsonl")) + sorted((DATA / "retrain").glob("*.jsonl"))


@pytest.fixture(scope="module")
def smoke():
    cfg = load_config(["smoke"], ["train.epochs=2"])
    task = load_task(cfg.data, vocab_size(cfg.model))
    space = discover(load_model(cfg.model, task.num_labels, seed=0))
    data = TokenizedTask(tokenize(task.train, None, 16), tokenize(task.val, None, 16), task.num_labels, "accuracy")
    return cfg, space, data


def test_a_training_outside_a_search_is_a_completed_record_with_its_epochs(smoke):
    cfg, space, data = smoke
    placement = Placement.full(space, 4)
    run = train_outside_search(cfg, TrialPlan(placement, space, 1e-2, seed=3), data,
                               resources=Resources(n_cpus=2), baseline="all")
    r = run.record
    assert (r.status, r.key, r.rank, r.lr, r.seed, r.baseline) == ("completed", placement.key, 4, 1e-2, 3, "all")
    assert r.epochs == 2
    assert len(run.epoch_scores) == 2 and r.score == r.last_score == run.epoch_scores[-1]
    assert r.adapter_params == placement.adapter_params(space) < r.trainable_params  # + the classifier head
    assert r.compute_hours == pytest.approx(run.wall_s * 2 / 3600) and run.train_loss > 0
    assert TrainedPlacement.from_row(json.loads(json.dumps(run.to_row()))) == run  # a row reads back as written


def test_a_failure_a_retry_would_repeat_is_a_failed_record_and_any_other_error_is_raised(smoke, monkeypatch):
    import trainables.train as train_module

    cfg, space, data = smoke
    plan = TrialPlan(Placement.full(space, 2), space, 1e-3)

    def diverge(cfg, plan, model, data, report, **kw):
        report({R.EPOCH: 1, R.EPOCH_SCORE: 0.5, R.TRAINABLE_PARAMS: 10, R.TRAIN_LOSS: 1.0})
        raise NonFiniteLoss("non-finite training loss (nan) at step 9 (epoch 2)")

    monkeypatch.setattr(train_module, "train_placement", diverge)
    run = train_outside_search(cfg, plan, data)
    assert run.record.status == "failed" and run.record.score is None and "non-finite" in run.record.error
    assert run.epoch_scores == (0.5,) and run.to_row()["failure"] == run.record.error
    monkeypatch.setattr(train_module, "train_placement", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train_outside_search(cfg, plan, data)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_every_committed_row_reads_back_and_writes_the_same_values(path):
    """The on-disk names are the committed files' own: a row read and written again (with the
    caller's fields, the retrain files' label and scaling) keeps every field it had, unchanged."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    written = set(TrainedPlacement.from_row(rows[0]).to_row())
    callers = {"label", "rslora", "metric_name", "config", "overrides"}  # what `benchmarks.retrain` adds
    for row in rows:
        assert set(row) - written <= callers, set(row) - written - callers
        run = TrainedPlacement.from_row(row)
        again = run.to_row(**{k: v for k, v in row.items() if k not in written})
        assert {k: again[k] for k in row} == row
        assert run.record.status == ("completed" if row["score"] is not None else "failed")
        assert run.record.last_score == (row["epoch_scores"] or [None])[-1]
