"""The SFT speed benchmark (`benchmarks.sft_speed`) compares like with like: its bare PEFT loop
trains the very adapters a trial trains, and a trial's wall time splits into training and the two
parts of its evaluation."""

import math

import pytest

from benchmarks import sft_speed


def lora_shapes(model) -> dict:
    return {n: tuple(p.shape) for n, p in model.named_parameters() if "lora_" in n}


@pytest.fixture(scope="module")
def task():
    from benchmarks.retrain import resolve_placements
    from trainables.config import load_config
    from trainables.prepare import prepare
    from trainables.worker import cached_task

    cfg = load_config(["sft_smoke"], ["train.epochs=1", "data.max_train_examples=32", "train.metric=exact_match"])
    prep = prepare(cfg.to_dict())
    data, tok = cached_task(cfg, prep.metric_name)
    return cfg, prep, data, tok, resolve_placements(["all"], prep, cfg)["all"]


def test_the_bare_loop_trains_the_trials_adapters_and_the_trial_time_adds_up(task):
    import trainables.sft as sft
    from trainables.model import load_task_model

    cfg, prep, data, tok, placement = task
    bare_model = load_task_model(cfg, 0, seed=0, tokenizer=tok)
    bare_s = sft_speed.bare_loop(cfg, bare_model, data, placement, prep.space, 1e-3, 0)
    trial_model = load_task_model(cfg, 0, seed=0, tokenizer=tok)
    t = sft_speed.product_trial(cfg, trial_model, data, placement, prep.space, 1e-3, 0)

    assert lora_shapes(bare_model) and lora_shapes(bare_model) == lora_shapes(trial_model)  # PEFT injects in place
    assert bare_s > 0 and t["train_s"] > 0
    assert t["teacher_forced_s"] > 0 and t["generation_s"] > 0  # exact match generates at the last epoch
    assert math.isclose(t["wall_s"], t["train_s"] + t["teacher_forced_s"] + t["generation_s"], rel_tol=1e-9)
    assert sft.exact_match.__name__ == "exact_match" and sft.teacher_forced.__name__ == "teacher_forced"  # restored


def test_asking_for_a_gpu_where_torch_sees_none_is_one_line(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["sft_speed", "--config", "sft_smoke", "--device", "cuda"])
    with pytest.raises(SystemExit, match="--device cuda: torch sees no GPU here"):
        sft_speed.main()
