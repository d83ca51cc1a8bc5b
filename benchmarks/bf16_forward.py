"""Does a decoder's loss stay finite under bf16, untrained, and does a trial train it? (GPU only.)

    python -m benchmarks.bf16_forward no      # the trial in fp32
    python -m benchmarks.bf16_forward bf16    # a bare bf16 loop at lr 1e-4 and at 0, then the trial

Where it sits: beside `benchmarks.sft_speed`, for the GPU path (`train.precision`). The decoder is
SmolLM2-135M's shape built from a config (random weights; the synthetic SFT task). With `bf16`, a
bare loop (PEFT + AdamW under `torch.autocast`) prints its loss for the first 8 batches at learning
rate 1e-4 and at 0 (a NaN at rate 0 comes from the forward pass, not from training); then the
trial's own `train_placement` runs one epoch at 1e-4, in the precision given (Accelerate's state is
per process: one precision per run). Results of 2026-12-04: docs/benchmarks.md, "On a GPU".
"""

from __future__ import annotations

import sys

SHAPE = ["model.tiny_hidden=576", "model.tiny_layers=30", "model.tiny_heads=8", "model.tiny_vocab=49152",
         "model.max_length=128", "data.synthetic_length=96", "data.synthetic_examples=512", "train.batch_size=16",
         "train.epochs=1"]


def main() -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from benchmarks.retrain import resolve_placements
    from trainables.config import load_config
    from trainables.lora import lora_config_kwargs
    from trainables.model import load_task_model
    from trainables.prepare import prepare
    from trainables.train import Resources, TrialPlan, train_placement
    from trainables.worker import cached_task

    precision = sys.argv[1] if len(sys.argv) > 1 else "bf16"
    if precision not in ("bf16", "no") or not torch.cuda.is_available():
        raise SystemExit("usage: python -m benchmarks.bf16_forward {bf16,no}, on a machine whose torch sees a GPU")
    cfg = load_config(["sft_smoke"], [*SHAPE, f"train.precision={precision}"])
    prep = prepare(cfg.to_dict())
    data, tok = cached_task(cfg, prep.metric_name)
    placement = resolve_placements(["all"], prep, cfg)["all"]
    if precision == "bf16":
        for lr in (1e-4, 0.0):
            torch.manual_seed(0)
            model = load_task_model(cfg, 0, seed=0, tokenizer=tok)
            peft_model = get_peft_model(model, LoraConfig(**lora_config_kwargs(placement, prep.space, cfg))).cuda()
            optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
            for i, (_, batch) in enumerate(data.train.iterate(16, torch.Generator().manual_seed(0))):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = peft_model(**{k: v.cuda() for k, v in batch.items()}).loss
                print("bare bf16 lr", lr, "step", i, "loss", round(loss.item(), 3), flush=True)
                if not torch.isfinite(loss) or i >= 7:
                    break
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
    model = load_task_model(cfg, 0, seed=0, tokenizer=tok)
    try:
        train_placement(cfg, TrialPlan(placement, prep.space, 1e-4, 0), model, data,
                        lambda r: print("trial", precision, "epoch", r.get("epoch"), "loss", r.get("train_loss"),
                                        "score", r.get("epoch_score"), "wall", round(r.get("wall_s", 0), 1), flush=True),
                        resources=Resources(1.0, 4))
    except Exception as e:  # the trial's own failure line is the result
        print("trial", precision, "FAILED", str(e)[:200], flush=True)


if __name__ == "__main__":
    main()
