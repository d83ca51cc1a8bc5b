"""Supervised fine-tuning of a causal LM (`task.kind = "sft"`): pairs, tokens, loss mask, scores.

Where it sits: the generative twin of the classification parts of `trainables.data` and
`trainables.train`. A task is (prompt, response) pairs; a trial trains on prompt + response with
the loss on the response tokens only, and is scored on the validation pairs by (docs/sft.md):
- `nll`: the mean negative log-likelihood of the response tokens (nats per token; lower is better);
- `token_accuracy`: the share of response tokens whose greedy next-token prediction is right, given
  the reference before them (teacher forcing);
- `exact_match`: the share of greedy answers (at most `task.max_new_tokens` tokens) equal to the
  reference after `normalize_answer`.
The first two come from one teacher-forced pass; exact match needs generation, so when it is the
objective, every epoch but the last is scored (for ASHA) by token accuracy, the last by exact match.

Sources (`load_pairs`): `bbc` (the BBC News headline or lead sentence -> its topic as a word, the
corpus of `trainables.data`), `synthetic` (token ids for the tiny models: a marker in the prompt
decides the one answer token), files or a hub dataset with `task.prompt_column` and
`task.response_column`. Pairs are deduplicated (a prompt seen with several responses is dropped)
and split by `data.val_fraction` (stratified by answer when there are few distinct answers).
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from dataclasses import dataclass, field

from trainables import record as R
from trainables.config import Config, DataConfig, TaskConfig
from trainables.data import DataError, dedupe, early_subset, stratified_split

IGNORE = -100  # the label of a position the loss skips (prompt, padding): PyTorch's and transformers' default
PLAIN_FORMAT = "Question: {prompt}\nAnswer:"  # without a chat template; the response follows after a space
BBC_QUESTION = "Which topic is this BBC News text about: business, entertainment, politics, sports or tech?"
# With at most this many distinct answers (and ten pairs per answer on average) the split is
# stratified by answer, as a classification task's is by label.
_STRATIFY_MAX_ANSWERS = 50


@dataclass
class Pairs:
    """Prompts and responses, as texts (to be tokenised) or as token ids (synthetic)."""

    prompts: list
    responses: list

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class PairTask:
    train: Pairs
    val: Pairs
    source: str

    num_labels: int = 0  # no classifier head

    def summary(self) -> dict:
        answers = Counter(map(str, self.val.responses))
        return {"kind": "sft", "n_train": len(self.train), "n_val": len(self.val), "labels": [],
                "imbalance": 1.0, "distinct_answers": len(answers)}


# ---- loading -----------------------------------------------------------------------------------
def _bbc_pairs() -> list[tuple[str, str]]:
    from trainables.data import _bbc_examples

    return [(f"{text}\n{BBC_QUESTION}", topic) for text, topic in _bbc_examples()]


def _synthetic_pairs(cfg: DataConfig, vocab_size: int) -> list[tuple[list[int], list[int]]]:
    """Filler tokens with one of `synthetic_labels` markers planted; the answer is the marker's own
    answer token (ids 0-3 are pad, bos, eos, unk)."""
    rng = random.Random(cfg.split_seed)
    n = cfg.synthetic_labels
    markers, answers = list(range(4, 4 + n)), list(range(4 + n, 4 + 2 * n))
    filler = list(range(4 + 2 * n, vocab_size))
    if len(filler) < 4:
        raise DataError(f"model vocab {vocab_size} is too small for {n} synthetic answers: raise model.tiny_vocab")
    pairs = []
    for i in range(cfg.synthetic_examples):
        length = rng.randint(max(3, cfg.synthetic_length // 2), cfg.synthetic_length)
        seq = [rng.choice(filler) for _ in range(length)]
        seq[rng.randrange(length)] = markers[i % n]
        pairs.append(([2] + seq, [answers[i % n]]))
    return pairs


def _file_pairs(data: DataConfig, task: TaskConfig) -> list[tuple[str, str]]:
    from trainables.data import _read_dataset

    ds = _read_dataset(data)
    missing = [(col, key) for col, key in ((task.prompt_column, "prompt_column"), (task.response_column, "response_column"))
               if col not in ds.column_names]
    if missing:
        col, key = missing[0]
        raise DataError(f"dataset {data.source!r} has no column {col!r}; it has {ds.column_names}: set task.{key}")
    out = []
    for prompt, response in zip(ds[task.prompt_column], ds[task.response_column]):
        if isinstance(prompt, (list, dict)) or isinstance(response, (list, dict)):
            bad = task.prompt_column if isinstance(prompt, (list, dict)) else task.response_column
            raise DataError(f"dataset {data.source!r}: column {bad!r} holds lists or objects (e.g. "
                            f"{str(prompt if bad == task.prompt_column else response)[:60]}); each example needs one "
                            "text: point task.prompt_column and task.response_column at text columns")
        if prompt is not None and response is not None and str(prompt).strip():
            out.append((str(prompt).strip(), str(response).strip()))
    return out


def _dedupe_pairs(pairs: list[tuple]) -> list[tuple]:
    """One copy of each pair; a prompt seen with several responses is dropped (`data.dedupe`)."""
    return dedupe(pairs, lambda x: tuple(x) if isinstance(x, list) else x)


def load_pairs(cfg: Config, vocab_size: int = 128) -> PairTask:
    """Load, deduplicate and split the configured (prompt, response) pairs."""
    data = cfg.data
    if data.source == "synthetic":
        pairs = _synthetic_pairs(data, vocab_size)
    elif data.source == "bbc":
        pairs = _dedupe_pairs(_bbc_pairs())
    else:
        pairs = _dedupe_pairs(_file_pairs(data, cfg.task))
    if len(pairs) < 2:
        raise DataError(f"dataset {data.source!r} has {len(pairs)} usable (prompt, response) pair(s): it needs at "
                        "least one to train and one to validate")
    answers = [str(r) for _, r in pairs]
    distinct = sorted(set(answers))
    few = len(distinct) <= min(_STRATIFY_MAX_ANSWERS, len(pairs) // 10)  # labels as words: keep their shares
    strata = [distinct.index(a) for a in answers] if few else [0] * len(pairs)
    tr, va = stratified_split(strata, data.val_fraction, data.split_seed)
    if not tr or not va:
        raise DataError(f"dataset {data.source!r} leaves an empty train or validation split ({len(pairs)} pairs): "
                        "add data or change data.val_fraction")
    if data.max_train_examples > 0 and len(tr) > data.max_train_examples:
        tr = sorted(random.Random(data.split_seed).sample(tr, data.max_train_examples))

    def pick(idx):
        return Pairs([pairs[i][0] for i in idx], [pairs[i][1] for i in idx])

    return PairTask(pick(tr), pick(va), data.source)


# ---- tokens ------------------------------------------------------------------------------------
@dataclass
class TokenStats:
    """What tokenising changed, reported once per search: prompts cut from the left, responses cut
    at the right, pairs dropped because the response had no token."""

    truncated_prompts: int = 0
    truncated_responses: int = 0
    dropped_empty: int = 0

    def line(self, split: str) -> str | None:
        parts = []
        if self.truncated_prompts:
            parts.append(f"{self.truncated_prompts} prompts longer than model.max_length lost their start")
        if self.truncated_responses:
            parts.append(f"{self.truncated_responses} responses were cut to fit model.max_length")
        if self.dropped_empty:
            parts.append(f"{self.dropped_empty} pairs with an empty response were dropped")
        return f"{split}: " + "; ".join(parts) if parts else None


@dataclass
class SftBatches:
    """Prompt + response token ids; the loss and the scores read the response positions only.

    ids[i] = prompt_ids + response_ids (response ends with the end-of-sequence token);
    prompt_lens[i] = how many of them are the prompt; references[i] = the answer exact match is
    checked against (the response text, or its token ids without end-of-sequence).
    """

    ids: list[list[int]]
    prompt_lens: list[int]
    references: list
    pad_id: int = 0
    eos_id: int = 3
    stats: TokenStats = field(default_factory=TokenStats)

    @property
    def labels(self) -> list[int]:  # one stratum: the early subset is a plain seeded sample
        return [0] * len(self.ids)

    def batch_orders(self, batch_size: int, generator=None) -> list[list[int]]:
        from trainables.train import Batches

        return Batches(self.ids, self.labels, self.pad_id).batch_orders(batch_size, generator)

    def subset(self, idx: list[int]) -> "SftBatches":
        return SftBatches([self.ids[i] for i in idx], [self.prompt_lens[i] for i in idx],
                          [self.references[i] for i in idx], self.pad_id, self.eos_id, self.stats)

    def collate(self, idx: list[int]) -> dict:
        """Right-padded; labels = the ids on response positions, IGNORE on prompt and padding
        (the model shifts them by one to score each position's next token)."""
        import torch

        width = max(len(self.ids[i]) for i in idx)
        input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
        for row, i in enumerate(idx):
            seq, n_prompt = self.ids[i], self.prompt_lens[i]
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            labels[row, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    def prompts(self, idx: list[int]) -> dict:
        """The prompts alone, left-padded (generation appends on the right)."""
        import torch

        width = max(self.prompt_lens[i] for i in idx)
        input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = self.prompt_lens[i]
            input_ids[row, width - n :] = torch.tensor(self.ids[i][:n])
            mask[row, width - n :] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def iterate(self, batch_size: int, generator=None):
        for idx in self.batch_orders(batch_size, generator):
            yield idx, self.collate(idx)


def format_prompt(prompt: str, tokenizer, chat_template: bool) -> tuple[str, bool]:
    """(the prompt as the model sees it, whether it came from the chat template). The chat template
    holds its own special tokens; the plain format gets the tokenizer's (a BOS token, if any)."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return text, True
    return PLAIN_FORMAT.format(prompt=prompt), False


def tokenize_pairs(pairs: Pairs, tokenizer, max_length: int, chat_template: bool = True) -> SftBatches:
    """Token ids of each pair, within `max_length`: a long prompt loses its start (the end, next to
    the answer, is kept), a long response its end; a pair whose response has no token is dropped."""
    stats = TokenStats()
    ids, prompt_lens, refs = [], [], []
    if tokenizer is None:  # token ids already (synthetic, tiny models)
        pad, eos = 0, 3
        encoded = [(list(p), list(r), list(r)) for p, r in zip(pairs.prompts, pairs.responses)]
    else:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise DataError("the tokenizer has no end-of-sequence token, so a response cannot end: use a causal LM "
                            "whose tokenizer defines eos_token")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        encoded = []
        for prompt, response in zip(pairs.prompts, pairs.responses):
            text, templated = format_prompt(prompt, tokenizer, chat_template)
            p_ids = tokenizer(text, add_special_tokens=not templated)["input_ids"]
            r_ids = tokenizer(response if templated else " " + response, add_special_tokens=False)["input_ids"]
            encoded.append((p_ids, r_ids, response))
    for p_ids, r_ids, ref in encoded:
        if not r_ids:
            stats.dropped_empty += 1
            continue
        r_ids = r_ids + [eos]
        if len(r_ids) > max_length - 1:
            stats.truncated_responses += 1
            r_ids = r_ids[: max_length - 1]
        room = max_length - len(r_ids)
        if len(p_ids) > room:
            stats.truncated_prompts += 1
            p_ids = p_ids[len(p_ids) - room :]
        ids.append(p_ids + r_ids)
        prompt_lens.append(len(p_ids))
        refs.append(ref)
    if not ids:
        raise DataError(f"every one of the {len(pairs)} responses is empty after tokenisation: check "
                        "task.response_column")
    return SftBatches(ids, prompt_lens, refs, pad, eos, stats)


# ---- scores ------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_PUNCT = str.maketrans("", "", string.punctuation)


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def normalize_answer(text: str) -> str:
    """The first line, lower case, without punctuation or articles (a, an, the), whitespace collapsed."""
    first = text.strip().split("\n", 1)[0] if text.strip() else ""
    return " ".join(_ARTICLES.sub(" ", first.lower().translate(_PUNCT)).split())


def answers_match(generated: str, reference: str) -> bool:
    """Exact match after `normalize_answer`; a numeric reference matches the last number generated
    (commas and a dollar sign ignored: "1,200" = "$1200" = "1200.0")."""
    number = _as_number(reference)
    if number is not None:
        found = _NUMBER.findall(generated.replace(",", ""))
        return bool(found) and float(found[-1]) == number
    return normalize_answer(generated) == normalize_answer(reference)


@dataclass(frozen=True)
class SftTask:
    """A tokenised SFT task, with what scoring it needs (the `TokenizedTask` of task.kind sft)."""

    train: SftBatches
    val: SftBatches
    metric_name: str
    tokenizer: object = None
    max_new_tokens: int = 8
    early_val: SftBatches | None = None
    num_labels: int = 0

    def scored_on(self, last_epoch: bool) -> SftBatches:
        return self.val if last_epoch or self.early_val is None else self.early_val

    def epoch_metric(self, last_epoch: bool) -> str:
        """What an epoch is scored by: the objective, but token accuracy before the last epoch when
        the objective is exact match (generation is the costly part; docs/sft.md)."""
        return R.TOKEN_ACCURACY if self.metric_name == R.EXACT_MATCH and not last_epoch else self.metric_name

    def evaluate(self, model, last_epoch: bool, batch_size: int, accelerator) -> dict:
        """{nll, token_accuracy}, and exact_match when this epoch is scored by it. accelerator: what
        has `device` and `autocast()` (an `accelerate.Accelerator`)."""
        batches = self.scored_on(last_epoch)
        scores = teacher_forced(model, batches, batch_size, accelerator)
        if self.epoch_metric(last_epoch) == R.EXACT_MATCH:
            scores[R.EXACT_MATCH] = exact_match(model, batches, batch_size, accelerator, self.tokenizer,
                                                self.max_new_tokens)
        return scores


def teacher_forced(model, batches: SftBatches, batch_size: int, accelerator) -> dict:
    """{nll, token_accuracy} over every response token of `batches` (each token weighs the same)."""
    import torch

    model.eval()
    nll_sum, right, count = 0.0, 0, 0
    with torch.no_grad():
        for _, batch in batches.iterate(batch_size):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            with accelerator.autocast():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logits, target = logits[:, :-1].float(), batch["labels"][:, 1:]
            keep = target != IGNORE
            nll = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
            nll_sum += float(nll)
            right += int((logits[keep].argmax(-1) == target[keep]).sum())
            count += int(keep.sum())
    return {R.NLL: nll_sum / max(1, count), R.TOKEN_ACCURACY: right / max(1, count)}


def generate_answers(model, batches: SftBatches, batch_size: int, accelerator, max_new_tokens: int) -> list[list[int]]:
    """Greedy answers (token ids, without the end-of-sequence token and what follows), in order."""
    import torch

    model.eval()
    out: list[list[int]] = [[] for _ in batches.ids]
    with torch.no_grad():
        for idx in batches.batch_orders(batch_size):
            prompts = {k: v.to(accelerator.device) for k, v in batches.prompts(idx).items()}
            with accelerator.autocast():
                generated = model.generate(**prompts, max_new_tokens=max_new_tokens, do_sample=False,
                                           pad_token_id=batches.pad_id, eos_token_id=batches.eos_id)
            for row, i in enumerate(idx):
                new = generated[row, prompts["input_ids"].shape[1]:].tolist()
                out[i] = new[: new.index(batches.eos_id)] if batches.eos_id in new else new
    return out


def exact_match(model, batches: SftBatches, batch_size: int, accelerator, tokenizer, max_new_tokens: int) -> float:
    answers = generate_answers(model, batches, batch_size, accelerator, max_new_tokens)
    if tokenizer is None:  # token ids: the answer must be the reference's ids
        right = sum(a == list(ref) for a, ref in zip(answers, batches.references))
    else:
        texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
        right = sum(answers_match(t, ref) for t, ref in zip(texts, batches.references))
    return right / max(1, len(answers))


def resolve_sft_metric(cfg: Config, val: SftBatches) -> str:
    """`auto`: exact match when 95% of the references fit in task.max_new_tokens tokens (short
    answers), else NLL."""
    if cfg.train.metric != "auto":
        return cfg.train.metric
    lengths = sorted(len(ids) - n - 1 for ids, n in zip(val.ids, val.prompt_lens))
    p95 = lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))]
    return R.EXACT_MATCH if p95 <= cfg.task.max_new_tokens else R.NLL


def tokenized_sft_task(cfg: Config, pairs: PairTask, tokenizer, metric_name: str | None = None) -> SftTask:
    train = tokenize_pairs(pairs.train, tokenizer, cfg.model.max_length, cfg.task.chat_template)
    val = tokenize_pairs(pairs.val, tokenizer, cfg.model.max_length, cfg.task.chat_template)
    early = early_subset(val.labels, cfg.data.early_eval_examples, cfg.data.split_seed)
    metric = metric_name or resolve_sft_metric(cfg, val)
    return SftTask(train, val, metric, tokenizer, cfg.task.max_new_tokens, None if early is None else val.subset(early))
