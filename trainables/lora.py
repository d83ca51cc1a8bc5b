"""How a placement becomes a PEFT `LoraConfig` under a search's config: the one definition.

Where it sits: sample -> **train**. A trial wraps its model with it (`trainables.train.wrap_with_lora`);
the Python API (`search.api`) and `search/deploy.py --lora-config-only` hand the same config to a
user's own trainer. The sites and ranks come from `Placement.lora_config_kwargs` (exact module
names, anchored `rank_pattern` / `alpha_pattern` for mixed ranks, `fan_in_fan_out` for GPT-2's
Conv1D); the config adds the scaling (`train.lora_scale`, `train.rslora`, `search.r_ref`), the
dropout and the task type: a classifier's new head trains in full (SEQ_CLS puts it in
`modules_to_save`), a causal LM's head and embeddings stay frozen (CAUSAL_LM).

peft (and with it torch) is imported only by `lora_config`: the kwargs are plain data.
"""

from __future__ import annotations

from spaces.placement import Placement
from spaces.space import ModelSpace
from trainables.config import Config, lora_scaling


def task_type(cfg: Config) -> str:
    """PEFT's task type (a `peft.TaskType` name) for the search's task."""
    return "CAUSAL_LM" if cfg.task.kind == "sft" else "SEQ_CLS"


def lora_config_kwargs(placement: Placement, space: ModelSpace, cfg: Config) -> dict:
    """Keyword arguments of the `peft.LoraConfig` a trial of this config trains `placement` with."""
    sites = placement.lora_config_kwargs(space, scaling=lora_scaling(cfg), dropout=cfg.train.lora_dropout)
    return {"task_type": task_type(cfg), **sites}


def lora_config(placement: Placement, space: ModelSpace, cfg: Config):
    """The `peft.LoraConfig` a trial of this config trains `placement` with: apply it with
    `peft.get_peft_model` to the model class the search loaded (AutoModelForSequenceClassification,
    or AutoModelForCausalLM for task.kind = "sft"), whose module names the sites are."""
    from peft import LoraConfig, TaskType

    kwargs = lora_config_kwargs(placement, space, cfg)
    return LoraConfig(**{**kwargs, "task_type": TaskType(kwargs["task_type"])})
